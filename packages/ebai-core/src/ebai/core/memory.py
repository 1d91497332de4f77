"""How much memory an in-memory prediction needs, and how much this machine has free.

``ebai run`` holds a whole image in memory; a 1 GiB image needs a few GiB. Knowing it before the
first image is read lets it refuse with the number and the fix, instead of being killed by the
kernel (or a cluster's memory limit) half-way through a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["available_memory", "format_bytes", "prediction_bytes"]


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes the OS can give this process now without swapping; ``None`` when it cannot tell.

    psutil when installed (any OS), else Linux's ``MemAvailable``. A cgroup limit (SLURM, Docker)
    lower than that is honoured when ``/sys/fs/cgroup/memory.max`` states one.
    """
    free: int | None = None
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in meminfo.read_text(encoding="ascii").splitlines():
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            free = None
    try:
        limit_text = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        used_text = Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii").strip()
        if limit_text != "max":
            room = int(limit_text) - int(used_text)
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


def prediction_bytes(
    spatial: Sequence[int], channels: int, out_channels: int, stored_itemsize: int = 4, *, normalizes: bool = True
) -> int:
    """Peak bytes of predicting one image in memory, as ``ebai run`` does it.

    The stages do not all hold memory at once: the image as stored is converted to a float32
    ``(C, *spatial)`` sample (the stored copy is then dropped), normalised into a new array (the
    percentile needs one scratch copy meanwhile), and tiled into a float32 ``(C_out, *spatial)``
    output (see :func:`ebai.core.tiling.blend_bytes`). The peak is the largest stage.

    Parameters
    ----------
    spatial
        Spatial shape of the image.
    channels, out_channels
        Model input and output channels.
    stored_itemsize
        Bytes per value of the image as stored (1 for uint8, 2 for uint16, 4 for float32).
    normalizes
        Whether preprocessing makes a new array (any normalisation does).
    """
    voxels = math.prod(int(s) for s in spatial)
    sample = 4 * voxels * channels
    stored = stored_itemsize * voxels * channels
    output = 4 * voxels * out_channels
    read = stored + (sample if stored_itemsize != 4 else 0)
    prepare = sample * (2 if normalizes else 1)
    predict = sample + output
    return max(read, prepare, predict)


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style size for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
