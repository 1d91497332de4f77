"""Entry point of the ``tensorrt`` backend: a small spec that imports only ebai.core and the stdlib.

``ebai info`` and :func:`ebai.core.get_backend` call :meth:`PluginSpec.is_available`, which checks
that ``tensorrt`` can be found (without importing it) and then runs :func:`probe`: an NVIDIA GPU and
a driver recent enough for the CUDA major TensorRT was built for, read from ``nvidia-smi`` and from
package metadata only, so the check costs milliseconds and never initialises CUDA.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

from ebai.core.hardware import GpuRecord, query_gpus
from ebai.core.install_hints import install_line
from ebai.core.plugins import PluginSpec

__all__ = ["INSTALL", "GpuRecord", "backend", "details", "installed_cuda_major", "probe", "query_gpus"]

#: The install line every "TensorRT is missing" message ends with.
INSTALL = f"{install_line('tensorrt')}  # or {install_line('tensorrt-cu13')} with an NVIDIA driver >= 580"

#: Oldest Linux driver that runs each CUDA major through minor-version compatibility
#: (CUDA 12.x: 525.60.13, CUDA 13.x: 580.65.06; NVIDIA's CUDA compatibility tables).
MIN_DRIVER = {12: (525, 60, 13), 13: (580, 65, 6)}

#: Distributions whose presence tells which CUDA major the installed TensorRT was built for.
_TRT_DISTS = {
    13: ("tensorrt-cu13", "tensorrt-cu13-libs", "tensorrt-cu13-bindings"),
    12: ("tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-cu12-bindings"),
}


def installed_cuda_major() -> int | None:
    """CUDA major of the installed TensorRT wheels (12 or 13), from package metadata only."""
    for major, names in _TRT_DISTS.items():
        for name in names:
            try:
                importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            return major
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _tensorrt_version() -> str | None:
    loaded = sys.modules.get("tensorrt")
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for name in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def probe() -> str | None:
    """Return ``None`` when TensorRT can run here, else one sentence saying why and what to do.

    Runs after the spec found ``tensorrt``; checks the CUDA bindings, a GPU and the driver.
    """
    try:
        has_bindings = (
            importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None
        )
    except (ImportError, ValueError):
        has_bindings = False
    if not has_bindings:
        return f"TensorRT is installed but the CUDA bindings (cuda-python) are not: {INSTALL}"
    gpus = query_gpus()
    if not gpus:
        return (
            "no NVIDIA GPU found (nvidia-smi is missing or lists no GPU): TensorRT needs an NVIDIA GPU "
            "with its driver; on this machine use the openvino backend"
        )
    major = installed_cuda_major()
    if major in MIN_DRIVER and sys.platform.startswith("linux"):
        driver = _version_tuple(gpus[0].driver)
        need = MIN_DRIVER[major]
        if driver and driver < need:
            need_text = ".".join(str(n) for n in need)
            hint = "install 'ebai-tensorrt[cu12]' instead" if major == 13 else "no TensorRT build supports it"
            return (
                f"NVIDIA driver {gpus[0].driver} is too old for TensorRT built for CUDA {major} "
                f"(needs >= {need_text}): update the driver, or {hint}"
            )
    return None


def details() -> str:
    """One line for ``ebai info``: TensorRT version, CUDA major, GPUs and driver (never raises)."""
    parts = []
    version = _tensorrt_version()
    parts.append(f"TensorRT {version}" if version else "TensorRT not installed")
    major = installed_cuda_major()
    if major:
        parts.append(f"built for CUDA {major}")
    try:
        gpus = query_gpus()
    except Exception:  # details must never break ebai info
        gpus = None
    if gpus:
        parts.append("GPU " + "; ".join(g.describe() for g in gpus))
    else:
        parts.append("no NVIDIA GPU found")
    return ", ".join(parts)


backend = PluginSpec(
    name="tensorrt",
    package="ebai-tensorrt",
    target="ebai.tensorrt._backend:TensorRTBackend",
    requires=("tensorrt",),
    install=INSTALL,
    probe=probe,
    details=details,
)
