"""The measured run choice and its cache, keyed like the TensorRT engine cache.

Which layout, whether ``torch.compile`` pays and whether CUDA graphs help depend on the network,
the batch size, the GPU and the torch/CUDA versions, so the torch target measures a few
configurations on the user's machine at first use and keeps the fastest. The choice is cached as
a small JSON file in the artifact's ``cache/torch/`` folder (not hashed by the artifact) or, when
that is not writable, in the user cache (``$EBAI_CACHE_DIR/torch``, see
:func:`ebai.core.files.user_cache_dir`). Its name carries a hash of everything the choice depends
on: device name, compute capability, torch version, CUDA version, the program's sha256, the
precision, cast mode, batch size and which settings the caller fixed. A file whose fields differ
from what this machine needs is ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ebai.core.files import atomic_file, user_cache_dir
from ebai.torch._config import RunConfig

__all__ = [
    "CHOICE_FORMAT",
    "ChoiceStore",
    "DeviceIdentity",
    "choice_key",
    "default_choice_dirs",
    "device_identity",
    "search",
]

logger = logging.getLogger("ebai")

#: Bumped when the file layout, the key fields or the search change; older choices are then remeasured.
CHOICE_FORMAT = 1
#: Largest batch for which CUDA graphs are tried (graphs pay where kernel launches dominate).
GRAPH_MAX_BATCH = 8


@dataclass(frozen=True)
class DeviceIdentity:
    """What a measured choice is valid for."""

    device_name: str
    compute_capability: str
    torch_version: str
    cuda_version: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready fields."""
        return asdict(self)

    def slug(self) -> str:
        """File-name-safe summary, e.g. ``NVIDIA-H200_sm90_torch2.13.0_cuda13.0``."""
        name = re.sub(r"[^A-Za-z0-9]+", "-", self.device_name).strip("-")[:40] or "device"
        sm = f"_sm{self.compute_capability.replace('.', '')}" if self.compute_capability else ""
        torch_v = re.sub(r"[^A-Za-z0-9.]+", "-", self.torch_version)
        return f"{name}{sm}_torch{torch_v}_cuda{self.cuda_version or 'none'}"


def device_identity(device: Any) -> DeviceIdentity:
    """Identify ``device`` (a ``torch.device``): GPU name and compute capability, or the CPU model."""
    import torch

    cuda = str(torch.version.cuda or "")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return DeviceIdentity(torch.cuda.get_device_name(device), f"{major}.{minor}", torch.__version__, cuda)
    from ebai.core.hardware import cpu_info

    return DeviceIdentity(cpu_info().model or "cpu", "", torch.__version__, cuda)


def choice_key(identity: DeviceIdentity, program_sha256: str, settings: Mapping[str, Any]) -> str:
    """Hex key of everything a choice depends on; any change gives another key."""
    payload = {"format": CHOICE_FORMAT, "device": identity.as_dict(), "program": program_sha256, **dict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_choice_dirs(target_dir: Path, override: Path | str | None = None) -> list[Path]:
    """List where choices live: the artifact's ``cache/torch`` (the target folder's parent), then the user cache."""
    if override is not None:
        return [Path(override)]
    return [target_dir.parent / "cache" / "torch", user_cache_dir() / "torch"]


class ChoiceStore:
    """Reads and writes measured choices (JSON) in a list of folders, first valid / first writable."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = [Path(d) for d in directories]

    @staticmethod
    def file_name(stem: str, identity: DeviceIdentity, key: str) -> str:
        """``<target>__<device>_torch<v>_cuda<v>__<key>.json``: readable, and unique per key."""
        return f"{stem}__{identity.slug()}__{key[:16]}.json"

    def find(self, name: str, expected: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any], Path] | None:
        """Return the first stored choice called ``name`` whose fields equal ``expected``."""
        for directory in self.directories:
            path = directory / name
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                logger.warning("torch run choice %s is not used (%s); measuring again", path, exc)
                continue
            if not isinstance(data, dict):
                logger.warning("torch run choice %s is not used (not a JSON object); measuring again", path)
                continue
            differs = [k for k, v in expected.items() if data.get(k) != v]
            if differs:
                logger.warning("torch run choice %s is not used (%s differ); measuring again", path, ", ".join(differs))
                continue
            try:
                config = RunConfig.from_dict(data["choice"])
            except (KeyError, TypeError) as exc:
                logger.warning("torch run choice %s is not used (damaged choice: %s); measuring again", path, exc)
                continue
            return config, data, path
        return None

    def write(self, name: str, record: Mapping[str, Any]) -> Path | None:
        """Write ``record`` to the first writable folder; ``None`` (and a warning) if none is."""
        text = json.dumps(dict(record), indent=2, sort_keys=True)
        for directory in self.directories:
            path = directory / name
            try:
                with atomic_file(path, overwrite=True) as tmp:
                    tmp.write_text(text, encoding="utf-8")
            except OSError as exc:
                logger.info("cannot write the torch run choice in %s (%s); trying the next place", directory, exc)
                continue
            return path
        logger.warning(
            "no writable place for the torch run choice (%s): it will be measured again next time",
            ", ".join(str(d) for d in self.directories),
        )
        return None


def search(
    base: RunConfig,
    fixed: Mapping[str, bool],
    *,
    device_type: str,
    batch: int,
    can_compile: bool,
    time_config: Callable[[RunConfig], float | None],
) -> tuple[RunConfig, list[dict[str, Any]]]:
    """Pick the fastest configuration by a greedy search, one setting at a time.

    Order: memory layout (contiguous vs channels-last), then CUDA graphs (CUDA, ``batch`` <=
    :data:`GRAPH_MAX_BATCH`), then ``torch.compile`` (CUDA with Triton only: on CPUs its compile
    time outweighs the gain for one run of a folder). A setting in ``fixed`` is not searched.
    ``time_config`` returns seconds per call, or ``None`` when a configuration fails here (it is
    then skipped). Returns the choice and every measurement, for the cache file and reports.
    """
    trials: list[dict[str, Any]] = []

    def timed(config: RunConfig) -> float | None:
        seconds = time_config(config)
        trials.append({**config.as_dict(), "seconds": seconds})
        return seconds

    best = replace(base, **{k: v for k, v in fixed.items() if k in ("channels_last", "compile", "cuda_graph")})
    best_s = timed(best)
    axes: list[tuple[str, bool]] = [("channels_last", True)]
    if device_type == "cuda" and batch <= GRAPH_MAX_BATCH:
        axes.append(("cuda_graph", True))
    if device_type == "cuda" and can_compile:
        axes.append(("compile", True))
    for field, value in axes:
        if field in fixed or getattr(best, field) == value:
            continue
        candidate = replace(best, **{field: value})
        seconds = timed(candidate)
        if seconds is not None and (best_s is None or seconds < best_s):
            best, best_s = candidate, seconds
    return best, trials
