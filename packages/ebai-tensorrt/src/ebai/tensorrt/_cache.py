"""The engine cache: serialized TensorRT engines kept next to the artifact, keyed by what makes them valid.

A TensorRT engine only runs on the GPU model and TensorRT version it was built with, so the artifact
stores the ONNX and the engine is built on first load on the target machine. The built engine is
kept in the artifact's ``cache/tensorrt/`` folder (which the artifact does not hash) or, when that is
not writable, in the user's cache folder (``$EBAI_CACHE_DIR``, else ``$XDG_CACHE_HOME/ebai``, else
``~/.cache/ebai``).

Every cache file starts with a header naming the GPU, compute capability, TensorRT version, the
sha256 of the ONNX it was built from, the build settings and the sha256 of the engine bytes. The file
name carries a hash of the same fields, and the header is compared field by field before TensorRT
ever sees the bytes: an engine from another GPU or TensorRT version is never deserialized, and a
damaged one is rebuilt rather than handed to TensorRT.

A header can be forged along with its engine (deserializing an engine runs its plugins' code), so
an engine is also only used when this user's machine built it: every engine written is recorded by
its sha256 in the user cache (``tensorrt/built/``), and a cache file whose engine is not recorded
there (one shipped inside a received artifact's ``cache/``) is rebuilt, never deserialized.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ebai.core.files import atomic_file, user_cache_dir

__all__ = ["CACHE_FORMAT", "DeviceIdentity", "EngineStore", "cache_key", "default_cache_dirs", "user_cache_dir"]

logger = logging.getLogger("ebai")

MAGIC = b"EBAI-TRT-ENGINE\n"
#: Bumped when the file layout or the key fields change; older files are then rebuilt.
CACHE_FORMAT = 1
_LEN = struct.Struct("<Q")


@dataclass(frozen=True)
class DeviceIdentity:
    """What an engine is valid for: GPU model, compute capability and TensorRT version."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready fields."""
        return asdict(self)

    def slug(self) -> str:
        """File-name-safe summary, e.g. ``NVIDIA-H100-80GB-HBM3_sm90_trt10.13.0.35``."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-") or "gpu"
        sm = self.compute_capability.replace(".", "")
        trt = re.sub(r"[^A-Za-z0-9.]+", "-", self.tensorrt_version)
        return f"{gpu}_sm{sm}_trt{trt}"


def cache_key(identity: DeviceIdentity, onnx_sha256: str, build: Mapping[str, Any]) -> str:
    """Hex key of everything an engine depends on; any change gives another key."""
    payload = {"format": CACHE_FORMAT, "device": identity.as_dict(), "onnx_sha256": onnx_sha256, "build": dict(build)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_cache_dirs(target_dir: Path, override: Path | str | None = None) -> list[Path]:
    """Where engines for the target in ``target_dir`` are looked for and written, in order.

    ``override`` (the ``cache_dir`` load option) replaces both defaults. Otherwise: the artifact's
    ``cache/tensorrt`` (the artifact root is the target folder's parent), then the user cache.
    """
    if override is not None:
        return [Path(override)]
    return [target_dir.parent / "cache" / "tensorrt", user_cache_dir() / "tensorrt"]


def _header_fields(identity: DeviceIdentity, onnx_sha256: str, build: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, **identity.as_dict(), "onnx_sha256": onnx_sha256, "build": dict(build)}


class EngineStore:
    """Reads and writes cached engines (and the TensorRT timing cache) in a list of folders.

    Parameters
    ----------
    directories
        Folders tried in order: the first holding a valid engine is used; new engines go to the
        first writable one.
    """

    def __init__(self, directories: Sequence[Path], ledger: Path | None = None) -> None:
        self.directories = [Path(d) for d in directories]
        #: Folder holding one empty file per engine sha256 this user built (see the module docstring).
        self.ledger = Path(ledger) if ledger is not None else user_cache_dir() / "tensorrt" / "built"

    def built_here(self, engine_sha256: str) -> bool:
        """Whether an engine with this sha256 was written by :meth:`write` for this user."""
        return bool(re.fullmatch(r"[0-9a-f]{64}", engine_sha256)) and (self.ledger / engine_sha256).is_file()

    def _record(self, engine_sha256: str) -> None:
        try:
            self.ledger.mkdir(parents=True, exist_ok=True)
            (self.ledger / engine_sha256).touch()
        except OSError as exc:
            logger.warning(
                "cannot record the built TensorRT engine in %s (%s): it will be rebuilt next time", self.ledger, exc
            )

    @staticmethod
    def file_name(stem: str, identity: DeviceIdentity, key: str) -> str:
        """``<target>__<gpu>_sm<cc>_trt<version>__<key>.engine``: readable, and unique per key."""
        return f"{stem}__{identity.slug()}__{key[:16]}.engine"

    # -- engines ---------------------------------------------------------------------------

    @staticmethod
    def read(path: Path, expected: Mapping[str, Any]) -> tuple[bytes | None, dict[str, Any], str]:
        """Read one cache file; return ``(engine_bytes, header, "")`` or ``(None, {}, reason)``.

        ``expected`` holds the header fields the current GPU, TensorRT and ONNX give; any field
        that differs refuses the file before its engine bytes are looked at.
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, {}, "absent"
        except OSError as exc:
            return None, {}, f"unreadable ({exc})"
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size:
            return None, {}, "not an ebai engine cache file"
        (hlen,) = _LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        if hlen > len(data) - start:
            return None, {}, "truncated header"
        try:
            header = json.loads(data[start : start + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None, {}, "damaged header"
        if not isinstance(header, dict):
            return None, {}, "damaged header"
        for field, want in expected.items():
            if header.get(field) != want:
                return None, header, f"built for {field}={header.get(field)!r}, this machine needs {want!r}"
        engine = data[start + hlen :]
        if len(engine) != header.get("engine_bytes") or hashlib.sha256(engine).hexdigest() != header.get(
            "engine_sha256"
        ):
            return None, header, "engine bytes are damaged (size or sha256 differ from the header)"
        return engine, header, ""

    def find(self, name: str, expected: Mapping[str, Any]) -> tuple[bytes, dict[str, Any], Path] | None:
        """Return the first valid cached engine called ``name``; invalid ones are logged and skipped."""
        for directory in self.directories:
            path = directory / name
            engine, header, reason = self.read(path, expected)
            if engine is not None and not self.built_here(str(header.get("engine_sha256", ""))):
                engine, reason = (
                    None,
                    "it was not built on this machine (an engine from elsewhere is never deserialized)",
                )
            if engine is not None:
                return engine, header, path
            if reason != "absent":
                logger.warning("TensorRT engine cache %s is not used: %s; the engine will be rebuilt", path, reason)
        return None

    def write(self, name: str, header: Mapping[str, Any], engine: bytes) -> Path | None:
        """Write an engine with its header to the first writable folder; ``None`` if none is."""
        full = dict(header)
        full["engine_bytes"] = len(engine)
        full["engine_sha256"] = hashlib.sha256(engine).hexdigest()
        head = json.dumps(full, sort_keys=True).encode("utf-8")
        for directory in self.directories:
            path = directory / name
            try:
                with atomic_file(path, overwrite=True) as tmp:
                    with open(tmp, "wb") as fh:
                        fh.write(MAGIC)
                        fh.write(_LEN.pack(len(head)))
                        fh.write(head)
                        fh.write(engine)
            except OSError as exc:
                logger.info("cannot write the TensorRT engine cache in %s (%s); trying the next place", directory, exc)
                continue
            self._record(full["engine_sha256"])
            return path
        logger.warning(
            "no writable place for the TensorRT engine cache (%s): the engine will be rebuilt next time",
            ", ".join(str(d) for d in self.directories),
        )
        return None

    @staticmethod
    def expected_header(identity: DeviceIdentity, onnx_sha256: str, build: Mapping[str, Any]) -> dict[str, Any]:
        """Return the header fields a cached engine must carry to be valid here."""
        return _header_fields(identity, onnx_sha256, build)

    # -- timing cache ----------------------------------------------------------------------

    @staticmethod
    def timing_name(identity: DeviceIdentity) -> str:
        """Name the timing cache file (timings hold for one GPU and TensorRT version)."""
        return f"timing__{identity.slug()}.cache"

    def read_timing(self, identity: DeviceIdentity) -> bytes:
        """Return the stored TensorRT timing cache for this GPU and TensorRT, or ``b""``."""
        for directory in self.directories:
            try:
                return (directory / self.timing_name(identity)).read_bytes()
            except OSError:
                continue
        return b""

    def write_timing(self, identity: DeviceIdentity, blob: bytes) -> None:
        """Store the timing cache (best effort: a failure only costs build time later)."""
        for directory in self.directories:
            try:
                with atomic_file(directory / self.timing_name(identity), overwrite=True) as tmp:
                    tmp.write_bytes(blob)
            except OSError:
                continue
            return
