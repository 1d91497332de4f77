"""Atomic writes: a file or folder on disk is either complete or absent.

Everything ebai writes for the user (artifacts, predictions, reports) goes through these helpers,
so an interrupted run (Ctrl-C, crash, full disk) never leaves a half-written file behind and never
destroys what the user already had.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ebai.core.errors import OutputExistsError

__all__ = ["atomic_dir", "atomic_file", "check_output", "user_cache_dir"]


def check_output(path: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse an existing ``path`` unless ``overwrite``; call before any expensive work."""
    if path.exists() and not overwrite:
        msg = f"output {str(path)!r} already exists: pass {flag} to replace it, or choose another path"
        raise OutputExistsError(msg)


def user_cache_dir() -> Path:
    """Per-user cache folder for ebai (``$EBAI_CACHE_DIR`` > ``$XDG_CACHE_HOME/ebai`` > ``~/.cache/ebai``).

    Backends keep what they build or measure on the user's machine there (TensorRT engines, the
    torch target's measured run choice) when the artifact's own ``cache/`` folder is not writable.
    """
    env = os.environ.get("EBAI_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ebai"


def _umask() -> int:
    """Return the process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publishable(tmp: Path, mode: int) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would have.

    ``mkstemp``/``mkdtemp`` create private (0600/0700) entries; without this an output shared on a
    lab server would be unreadable by colleagues.
    """
    os.chmod(tmp, mode & ~_umask())


@contextlib.contextmanager
def atomic_file(path: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        check_output(path, overwrite)
        _publishable(tmp, 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is only removed after the new folder is complete and in place (it is
    first moved aside, so even a crash between the two renames keeps one complete copy).
    """
    path = Path(path)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part"))
    old: Path | None = None
    try:
        yield tmp
        check_output(path, overwrite)
        _publishable(tmp, 0o777)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
