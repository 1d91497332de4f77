"""What this machine offers for inference: CPU instruction sets and NVIDIA GPUs.

OpenVINO's int8 and bf16 speed depends on AVX-512 VNNI, AVX-512 BF16 and AMX; users reading a
benchmark need to know which of these their CPU has.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["CpuInfo", "GpuRecord", "cpu_info", "nvidia_gpus", "query_gpus"]

#: /proc/cpuinfo flag -> name shown to users, in the order shown.
_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


@dataclass(frozen=True)
class CpuInfo:
    """CPU model, logical core count and the inference-relevant instruction sets."""

    model: str
    cores: int
    features: tuple[str, ...]


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Read the CPU model and features (Linux ``/proc/cpuinfo``; elsewhere the model only)."""
    import os

    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    features = tuple(name for flag, name in _FEATURES.items() if flag in flags)
    return CpuInfo(model=model, cores=os.cpu_count() or 1, features=features)


@dataclass(frozen=True)
class GpuRecord:
    """One NVIDIA GPU as ``nvidia-smi`` reports it."""

    name: str
    compute_capability: str
    driver: str

    def describe(self) -> str:
        """Short text for messages: ``NVIDIA H100 (compute 9.0, driver 570.86.15)``."""
        return f"{self.name} (compute {self.compute_capability}, driver {self.driver})"


@lru_cache(maxsize=1)
def query_gpus() -> tuple[GpuRecord, ...] | None:
    """NVIDIA GPUs listed by ``nvidia-smi``; ``None`` when nvidia-smi is absent or fails.

    Cached for the process: ``ebai info``, the TensorRT backend's availability check and the
    benchmarks may all ask, and nvidia-smi takes tens of milliseconds.
    """
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0]:
            gpus.append(GpuRecord(*parts))
    return tuple(gpus)


def nvidia_gpus() -> list[str]:
    """Names and driver versions of NVIDIA GPUs (through nvidia-smi), empty when none."""
    return [gpu.describe() for gpu in query_gpus() or ()]
