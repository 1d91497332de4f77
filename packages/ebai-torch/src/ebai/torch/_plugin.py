"""Entry point of the ``torch`` backend: a small spec that imports only ebai.core and the stdlib.

``ebai info`` and :func:`ebai.core.get_backend` call :meth:`PluginSpec.is_available`, which checks
that ``torch`` can be found without importing it (importing torch takes seconds). :func:`details`
says what the target can use here from package metadata and ``nvidia-smi`` only: the torch version
and the CUDA it was built for, and per GPU which of TF32, fp16 and bf16 tensor cores,
``torch.compile`` (Triton) and CUDA graphs it has.
"""

from __future__ import annotations

import importlib.metadata

from ebai.core.hardware import GpuRecord, cpu_info, query_gpus
from ebai.core.install_hints import install_line
from ebai.core.plugins import PluginSpec

__all__ = ["INSTALL", "backend", "details", "gpu_features", "torch_build"]

INSTALL = install_line("torch-target")


def torch_build() -> tuple[str | None, str | None]:
    """Installed torch version and the CUDA it was built for (``None``: CPU-only wheel), from metadata.

    The CUDA version comes from the wheel's local version (``2.6.0+cu124`` -> ``12.4``) or, for
    wheels without one (PyPI's default Linux wheels), from the ``nvidia-cuda-runtime`` package
    they depend on.
    """
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    local = version.partition("+")[2]
    if local.startswith("cu") and local[2:].isdigit() and len(local) >= 4:
        digits = local[2:]
        return version, f"{int(digits[:-1])}.{digits[-1]}"
    if local:  # +cpu, +rocm6.2, +xpu
        return version, None
    for dist in ("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12"):
        try:
            runtime = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return version, ".".join(runtime.split(".")[:2])
    return version, None


def gpu_features(gpu: GpuRecord) -> tuple[str, ...]:
    """List what the torch target can use on ``gpu``, from its compute capability.

    fp16 tensor cores and Triton (``torch.compile``'s GPU code generator) need compute 7.0 (Volta);
    TF32 and bf16 need 8.0 (Ampere). CUDA graphs work on every GPU torch supports.
    """
    try:
        major, _, minor = gpu.compute_capability.partition(".")
        cc = (int(major), int(minor or 0))
    except ValueError:
        return ("fp32", "cuda graphs")
    out = ["fp32"]
    if cc >= (8, 0):
        out.append("tf32")
    if cc >= (7, 0):
        out.append("fp16")
    if cc >= (8, 0):
        out.append("bf16")
    if cc >= (7, 0):
        out.append("torch.compile")
    out.append("cuda graphs")
    return tuple(out)


def details() -> str:
    """One line for ``ebai info``: torch and its CUDA build, and what each GPU (or the CPU) offers."""
    version, cuda = torch_build()
    if version is None:
        return "torch not installed"
    parts = [f"torch {version} ({f'built for CUDA {cuda}' if cuda else 'CPU-only build'})"]
    try:
        gpus = query_gpus()
    except Exception:  # details must never break ebai info
        gpus = None
    if gpus and cuda:
        for i, gpu in enumerate(gpus):
            parts.append(f"cuda:{i} {gpu.name} (compute {gpu.compute_capability}): {', '.join(gpu_features(gpu))}")
    elif gpus:
        parts.append(f"{len(gpus)} NVIDIA GPU(s) unused: this torch has no CUDA (install a CUDA build of torch)")
    cpu = cpu_info()
    native_bf16 = any(f in cpu.features for f in ("AVX-512 BF16", "AMX-BF16"))
    parts.append("cpu: fp32, bf16" + (" (native)" if native_bf16 else " (emulated, slow)") + ", fp16")
    return "; ".join(parts)


backend = PluginSpec(
    name="torch",
    package="ebai-torch",
    target="ebai.torch._backend:TorchBackend",
    requires=("torch",),
    install=INSTALL,
    details=details,
)
