"""Atomic writes: a file or folder on disk is either complete or absent.

Everything ebai writes for the user (artifacts, predictions, reports) goes through these helpers,
so an interrupted run (Ctrl-C, crash, full disk) never leaves a half-written file behind and never
destroys what the user already had.

Temporary entries are named ``.<name>.ebai-<host>-<pid>-<random>.part`` (``.old`` for a replaced
one on its way out): a run that is killed outright (SIGKILL, a node that dies) cannot clean up, so
the next run writing to the same folder, or ``ebai clean``, removes those whose process on this
host is gone (:func:`remove_stale`). Entries of live processes and of other hosts (a shared
cluster file system) are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ebai.core.errors import InputError, OutputExistsError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_output",
    "check_writable_dir",
    "remove_stale",
    "stale_entries",
    "user_cache_dir",
]

logger = logging.getLogger("ebai")

_TEMP = re.compile(r"^\.(?P<name>.+)\.ebai-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.(?:part|old)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def _temp_prefix(name: str) -> str:
    """Prefix of a temporary entry beside ``name``: hidden, recognisable, owned by this process."""
    return f".{name}.ebai-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def stale_entries(folder: Path | str) -> list[Path]:
    """Temporary files and folders in ``folder`` left by ebai processes of this host that are gone."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    host = _host()
    out = []
    for name in sorted(names):
        m = _TEMP.match(name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            out.append(folder / name)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: Path | str) -> list[Path]:
    """Remove what :func:`stale_entries` finds in ``folder``; return the removed paths."""
    removed = stale_entries(folder)
    for path in removed:
        _remove(path)
        logger.info("removed %s, left by an ebai run that was killed", path)
    return removed


def check_writable_dir(folder: Path | str, what: str = "output folder") -> Path:
    """Prove that files can be written in ``folder`` (or that it can be created); call before any work.

    Nothing is created: an existing folder gets a probe file written and removed, a missing one
    needs its nearest existing parent to be a writable folder.

    Raises
    ------
    InputError
        One line naming the folder and why (a file in the way, no permission, read-only disk).
    """
    folder = Path(folder)
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        blocked = "is a file" if probe_in == folder else f"cannot be created: {str(probe_in)!r} is a file"
        msg = f"{what} {str(folder)!r} {blocked}, not a folder: choose another -o or move the file"
        raise InputError(msg)
    try:
        if probe_in == folder:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=_temp_prefix("write-check"), suffix=".part")
            os.close(fd)
            os.unlink(probe)
        elif not os.access(probe_in, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        msg = f"{what} {str(folder)!r} cannot be written ({reason}): choose a folder you can write to with -o"
        raise InputError(msg) from exc
    return folder


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
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".part")
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
    for stale in stale_entries(path.parent):
        if stale.name.startswith(f".{path.name}.ebai-"):
            _remove(stale)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".part"))
    old: Path | None = None
    try:
        yield tmp
        check_output(path, overwrite)
        _publishable(tmp, 0o777)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".old"))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            _remove(old)  # a regular file replaced by the folder is removed too, not left hidden
