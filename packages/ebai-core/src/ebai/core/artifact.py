"""The ``.ebai`` artifact: a folder holding ``manifest.json`` and the files it lists.

Layout::

    denoiser.ebai/
      manifest.json           schema, specs, records, sha256 of every file below
      reference.onnx          fp32 ONNX of the (pruned, fine-tuned) network
      openvino-int8/...       one folder per target, as the backend wrote it
      cache/                  optional, unhashed: backend caches (e.g. TensorRT engines)

An artifact is written in a temporary folder and renamed into place, so it is complete or absent;
opening one checks the schema and every hash and refuses anything else.

An artifact is data, possibly from someone else. Opening one therefore also checks that every
path its manifest names stays inside the artifact folder (no ``..``, no absolute path, no
symbolic link anywhere in it), and that the manifest's own sha256 matches its content. Nothing a
manifest names is imported or run here; a backend cache under ``cache/`` is used only when this
machine wrote it (see the backend's cache).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ebai.core.errors import ArtifactError
from ebai.core.files import atomic_dir, check_output
from ebai.core.interfaces import Engine
from ebai.core.manifest import DIGEST_KEY, Manifest, TargetRecord, manifest_digest

__all__ = ["MANIFEST", "Artifact", "ArtifactWriter", "package_versions", "sha256_file", "write_artifact"]

MANIFEST = "manifest.json"
#: Sub-folder backends may fill at run time (engine caches); not hashed, not required.
CACHE_DIR = "cache"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (those not installed are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _inside(root: Path, relative: str, what: str) -> Path:
    """Return ``root / relative``, refusing a path that leaves the artifact folder.

    ``relative`` comes from a manifest, which anyone can edit: an absolute path, a ``..`` part or a
    symbolic link pointing elsewhere would make ebai load a file that was never hashed.
    """
    rel = str(relative)
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or rel.startswith(("/", "\\")) or ".." in parts or ":" in rel.split("/")[0]:
        msg = f"artifact {str(root)!r} names {what} {rel!r}, which is not a path inside the artifact: it was modified, do not use it"
        raise ArtifactError(msg)
    path = root / rel
    base = root.resolve()
    try:
        path.resolve().relative_to(base)
    except ValueError:
        msg = f"artifact {str(root)!r} names {what} {rel!r}, which leads outside the artifact: it was modified, do not use it"
        raise ArtifactError(msg) from None
    return path


def _check_paths(root: Path, manifest: Manifest) -> None:
    """Refuse a manifest naming any path outside the artifact, and any symbolic link inside it."""
    for rel in manifest.files:
        _inside(root, rel, "file")
    if manifest.reference:
        _inside(root, manifest.reference, "reference model")
    for t in manifest.targets:
        if t.directory:
            _inside(root, t.directory, f"target {t.key} folder")
        for name in (t.entry, *t.files):
            _inside(root, f"{t.directory}/{name}" if t.directory else name, f"target {t.key} file")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                rel = Path(dirpath, name).relative_to(root).as_posix()
                msg = f"artifact {str(root)!r} holds a symbolic link {rel!r}: artifacts hold plain files only, recreate it"
                raise ArtifactError(msg)


def _listed_files(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != CACHE_DIR]
        for f in filenames:
            rel = (rel_dir / f).as_posix()
            if rel != MANIFEST:
                yield rel


class ArtifactWriter:
    """Collects an artifact's files in a temporary folder and publishes them at once.

    Use as a context manager; write files under :attr:`root`, then call :meth:`commit` with the
    manifest. Leaving the block without committing (an error, Ctrl-C) removes everything.

    Examples
    --------
    >>> with ArtifactWriter(Path("denoiser.ebai")) as w:         # doctest: +SKIP
    ...     export_onnx(model, w.root / "reference.onnx")
    ...     artifact = w.commit(manifest)
    """

    def __init__(self, path: Path | str, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        check_output(self.path, overwrite)
        self._ctx: Any = None
        self._root: Path | None = None
        self._manifest: Manifest | None = None

    @property
    def root(self) -> Path:
        """The temporary folder to write into (renamed to :attr:`path` on commit)."""
        if self._root is None:
            msg = "ArtifactWriter.root is only valid inside its with-block"
            raise RuntimeError(msg)
        return self._root

    def __enter__(self) -> ArtifactWriter:
        self._ctx = atomic_dir(self.path, self.overwrite)
        self._root = self._ctx.__enter__()
        return self

    def commit(self, manifest: Manifest) -> Manifest:
        """Hash every file, write the manifest; the folder is published when the block ends."""
        files = {rel: sha256_file(self.root / rel) for rel in sorted(_listed_files(self.root))}
        for t in manifest.targets:
            for f in t.files:
                rel = f"{t.directory}/{f}" if t.directory else f
                if rel not in files:
                    msg = f"target {t.key} lists {rel!r} but no such file was written"
                    raise ArtifactError(msg)
        if manifest.reference and manifest.reference not in files:
            msg = f"reference model {manifest.reference!r} was not written"
            raise ArtifactError(msg)
        created = manifest.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._manifest = replace(manifest, created=created).with_files(files)
        (self.root / MANIFEST).write_text(self._manifest.to_json(), encoding="utf-8")
        return self._manifest

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        ctx, self._ctx, self._root = self._ctx, None, None
        if exc_type is None and self._manifest is None:
            err = ArtifactError("artifact was not committed; nothing was written")
            ctx.__exit__(ArtifactError, err, None)
            raise err
        if exc_type is None:
            ctx.__exit__(None, None, None)
            return False
        return bool(ctx.__exit__(exc_type, exc, tb))


def write_artifact(path: Path | str, manifest: Manifest, files: dict[str, Path], overwrite: bool = False) -> Artifact:
    """Write an artifact from existing files (copied in under their relative names)."""
    import shutil

    with ArtifactWriter(path, overwrite) as w:
        for rel, src in files.items():
            dst = w.root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        w.commit(manifest)
    return Artifact.open(path)


class Artifact:
    """An artifact opened from disk, its schema and every hash verified.

    Use :meth:`open`; then :attr:`manifest` tells what is inside and :meth:`load_engine` runs it.
    """

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path | str, verify: bool = True) -> Artifact:
        """Open the artifact at ``path``; with ``verify`` (default) check every file's sha256."""
        import json

        path = Path(path)
        if not path.is_dir():
            msg = f"{str(path)!r} is not an ebai artifact folder: give the path of a .ebai folder made by ebai compress"
            raise ArtifactError(msg)
        mpath = path / MANIFEST
        if not mpath.is_file():
            msg = f"{str(path)!r} has no {MANIFEST}: the artifact is incomplete, recreate it with ebai compress"
            raise ArtifactError(msg)
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = f"{MANIFEST} in {str(path)!r} is not valid JSON ({exc}): the artifact is damaged, recreate it"
            raise ArtifactError(msg) from exc
        if not isinstance(data, dict):
            msg = f"{MANIFEST} in {str(path)!r} holds a {type(data).__name__}, not a manifest: the artifact is damaged, recreate it"
            raise ArtifactError(msg)
        manifest = Manifest.from_dict(data)
        _check_paths(path, manifest)
        art = cls(path, manifest)
        if verify:
            recorded = data.get(DIGEST_KEY)
            if recorded != manifest_digest(data):
                how = "has no sha256 of its own" if recorded is None else "does not match its own sha256"
                msg = f"{MANIFEST} in {str(path)!r} {how}: it was edited or damaged, recreate the artifact with ebai compress"
                raise ArtifactError(msg)
            art.verify()
        return art

    def verify(self) -> None:
        """Raise :class:`ArtifactError` on a missing, extra or changed file."""
        listed = self.manifest.files
        present = set(_listed_files(self.path))
        missing = sorted(set(listed) - present)
        if missing:
            msg = (
                f"artifact {str(self.path)!r} is incomplete: {missing[0]!r} is missing; recreate it with ebai compress"
            )
            raise ArtifactError(msg)
        extra = sorted(present - set(listed))
        if extra:
            msg = f"artifact {str(self.path)!r} holds a file its manifest does not list ({extra[0]!r}): it was modified, recreate it"
            raise ArtifactError(msg)
        for rel, digest in listed.items():
            if sha256_file(self.path / rel) != digest:
                msg = f"artifact file {rel!r} in {str(self.path)!r} does not match its sha256: it was modified or damaged, recreate the artifact"
                raise ArtifactError(msg)

    def file(self, relative: str) -> Path:
        """Absolute path of a file listed in the manifest."""
        if relative not in self.manifest.files:
            msg = f"artifact {self.manifest.name!r} has no file {relative!r}"
            raise ArtifactError(msg)
        return _inside(self.path, relative, "file")

    @property
    def cache_dir(self) -> Path:
        """Folder for backend caches next to the artifact's files (not hashed)."""
        return self.path / CACHE_DIR

    def target(self, backend: str | None = None, precision: str | None = None) -> TargetRecord:
        """Return the target for ``backend``/``precision`` (see :meth:`Manifest.target`)."""
        return self.manifest.target(backend, precision)

    def load_engine(self, backend: str | None = None, precision: str | None = None, **options: Any) -> Engine:
        """Load an engine for a target through its installed backend plugin."""
        from ebai.core.plugins import get_backend

        target = self.target(backend, precision)
        folder = _inside(self.path, target.directory, f"target {target.key} folder") if target.directory else self.path
        impl = get_backend(target.backend)
        return impl.load(folder, target.lowering(), **options)
