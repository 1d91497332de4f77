"""Images larger than memory: lazy reading of OME-Zarr, Zarr, big TIFF and NPY, OME-Zarr writing.

Nothing here reads a whole image. :func:`open_image` gives a :class:`LazyImage` whose regions are
read on demand (zarr chunks, TIFF strips or tiles through tifffile's zarr store, NPY through a
memory map); :class:`SampleView` maps the stored axes to the model's ``(C, *spatial)`` layout the
way :func:`~ebai.core.imageio.to_sample` does for images read whole, so both paths see the same
sample. :class:`OutputZarr` writes predictions as an OME-Zarr image (NGFF 0.4, Zarr format 2, one
resolution level) block by block, keeping a completion marker per block so an interrupted run can
resume.

zarr, tifffile's zarr store and numcodecs are imported inside the functions: this module belongs to
the ``ebai-core[large]`` extra (``pip install 'ebai-core[large]'``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.errors import InputError, MissingDependencyError, OutputExistsError
from ebai.core.install_hints import install_line
from ebai.core.specs import InputSpec

__all__ = [
    "LARGE_INSTALL",
    "LazyImage",
    "OutputZarr",
    "SampleView",
    "is_zarr",
    "large_available",
    "needs_blocks",
    "open_image",
    "read_crop",
    "require_large",
    "write_block",
]

#: The install line of everything this module and the Dask path need.
LARGE_INSTALL = install_line("large")
_ZARR_MARKERS = (".zarray", ".zgroup", ".zattrs", "zarr.json")
#: Bytes the in-memory path holds per voxel of an image (read, sample, float64 blend, output).
_IN_MEMORY_BYTES_PER_VOXEL = 32
_SPACE = {"z", "y", "x"}


def require_large() -> None:
    """Raise :class:`MissingDependencyError` with the install line when the extra is missing."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(LARGE_INSTALL) from exc


def large_available() -> bool:
    """Whether the ``ebai-core[large]`` extra is installed."""
    try:
        require_large()
    except MissingDependencyError:
        return False
    return True


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr array or group folder (format 2 or 3, OME-Zarr included)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in _ZARR_MARKERS)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _voxels(path: Path) -> int:
    """Voxels of a TIFF or NPY file, from its header; 0 when unreadable (the in-memory path says why)."""
    from ebai.core.errors import EbaiError
    from ebai.core.imageio import probe_image

    try:
        shape, _ = probe_image(path)
    except EbaiError:
        return 0
    return math.prod(shape)


def needs_blocks(path: Path) -> bool:
    """Whether ``path`` must go block by block: a Zarr folder, or a file too large for memory."""
    if is_zarr(path):
        return True
    if path.suffix.lower() not in (".tif", ".tiff", ".npy"):
        return False
    return _voxels(path) * _IN_MEMORY_BYTES_PER_VOXEL > _physical_memory() // 2


@dataclass
class LazyImage:
    """One image on disk, read region by region.

    Attributes
    ----------
    path
        The file or folder given by the user.
    array
        Anything with ``shape``, ``dtype`` and numpy-style slicing that reads only what is asked
        (``zarr.Array``, ``numpy.memmap``).
    kind
        What was opened, for messages: ``"OME-Zarr 0.4"``, ``"Zarr v3"``, ``"TIFF"``, ``"NPY"``.
    axes
        Lower-case names of the stored axes when the format records them (OME-Zarr, TIFF).
    scale, units
        Physical pixel size and unit of each stored axis when recorded (OME-Zarr).
    attrs
        Source metadata carried over to the output (OME-Zarr attributes other than multiscales).
    array_dir
        Folder of a Zarr array's chunks on a local disk, to name missing or damaged chunks.
    """

    path: Path
    array: Any
    kind: str
    axes: tuple[str, ...] | None = None
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    array_dir: Path | None = None
    _keep: Any = None  # an open TiffFile must outlive its zarr store

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the stored array."""
        return tuple(int(s) for s in self.array.shape)

    def read(self, index: tuple[slice | int, ...]) -> np.ndarray:
        """Read one region; a missing or damaged chunk raises :class:`InputError` naming it."""
        if self.array_dir is not None:
            self._check_chunks(index)
        try:
            return np.asarray(self.array[index])
        except Exception as exc:  # codecs and stores raise all sorts of errors on damaged data
            where = self._damaged_chunk(index) if self.array_dir is not None else None
            what = f"chunk {where!r} of {str(self.path)!r}" if where else f"{str(self.path)!r}"
            msg = f"cannot read {what} ({type(exc).__name__}: {exc}): the {self.kind} data is damaged; copy it again"
            raise InputError(msg) from exc

    def _chunk_keys(self, index: tuple[slice | int, ...]) -> list[str]:
        chunks = self.array.chunks
        ranges = []
        for sl, size, c in zip(index, self.shape, chunks, strict=True):
            if isinstance(sl, int):
                ranges.append(range(sl // c, sl // c + 1))
            else:
                start, stop, _ = sl.indices(size)
                ranges.append(range(start // c, max(start, stop - 1) // c + 1))
        meta = self.array.metadata
        return [meta.encode_chunk_key(coords) for coords in product(*ranges)]

    def _check_chunks(self, index: tuple[slice | int, ...]) -> None:
        assert self.array_dir is not None
        for key in self._chunk_keys(index):
            if not (self.array_dir / key).is_file():
                msg = (
                    f"chunk {key!r} of {str(self.path)!r} is missing (an interrupted copy?): copy the image again; "
                    "ebai does not read absent chunks as empty"
                )
                raise InputError(msg)

    def _damaged_chunk(self, index: tuple[slice | int, ...]) -> str | None:
        chunks = self.array.chunks
        for key in self._chunk_keys(index):
            coords = [int(k) for k in key.replace("c/", "").replace("/", ".").split(".") if k]
            sub = tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks, strict=True))
            try:
                np.asarray(self.array[sub])
            except Exception:  # the chunk that fails is the one to name
                return key
        return None


def _zarr_image(path: Path, level: int) -> LazyImage:
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        msg = f"cannot open {str(path)!r} as Zarr ({type(exc).__name__}: {exc}): give an OME-Zarr image or a Zarr array"
        raise InputError(msg) from exc
    if isinstance(node, zarr.Array):
        if level:
            msg = f"{str(path)!r} is a plain Zarr array with one level: leave out --level (got {level})"
            raise InputError(msg)
        return LazyImage(
            path, node, f"Zarr v{node.metadata.zarr_format}", attrs=dict(node.attrs), array_dir=_array_dir(node)
        )
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        names = sorted(name for name, _ in node.arrays())
        hint = f"give the path of one of its arrays ({', '.join(names[:3])})" if names else "it holds no array"
        msg = f"{str(path)!r} is a Zarr group without OME-Zarr multiscales metadata: {hint}"
        raise InputError(msg)
    ms = multiscales[0]
    version = str(ome.get("version") or ms.get("version") or "0.4")
    datasets = ms.get("datasets") or []
    if not 0 <= level < len(datasets):
        msg = f"{str(path)!r} has {len(datasets)} resolution level(s) (0..{len(datasets) - 1}): --level {level} does not exist"
        raise InputError(msg)
    dataset = datasets[level]
    array = node[dataset["path"]]
    raw_axes = ms.get("axes") or []
    axes = tuple((a["name"] if isinstance(a, dict) else str(a)).lower() for a in raw_axes) or None
    units = tuple(a.get("unit") if isinstance(a, dict) else None for a in raw_axes) or None
    scale = np.ones(array.ndim)
    for transforms in (ms.get("coordinateTransformations") or [], dataset.get("coordinateTransformations") or []):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", ())) == array.ndim:
                scale = scale * np.asarray(t["scale"], dtype=float)
    carried = {
        k: v for k, v in (ome.items() if "ome" in attrs else attrs.items()) if k not in ("multiscales", "version")
    }
    return LazyImage(
        path,
        array,
        f"OME-Zarr {version}",
        axes=axes if axes and len(axes) == array.ndim else None,
        scale=tuple(float(s) for s in scale),
        units=units if units and len(units) == array.ndim else None,
        attrs=carried,
        array_dir=_array_dir(array),
    )


def _array_dir(array: Any) -> Path | None:
    """Folder of a zarr array's chunks when its store is a local directory."""
    root = getattr(array.store, "root", None)
    if root is None:
        return None
    return Path(root) / array.path if array.path else Path(root)


def _tiff_image(path: Path, level: int) -> LazyImage:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        if not 0 <= level < len(series.levels):
            tif.close()
            msg = f"{str(path)!r} has {len(series.levels)} resolution level(s): --level {level} does not exist"
            raise InputError(msg)
        store = series.aszarr(level=level)
        array = zarr.open_array(store=store, mode="r")
    except InputError:
        raise
    except Exception as exc:
        msg = f"cannot open {str(path)!r} as TIFF ({type(exc).__name__}: {exc}): check the file"
        raise InputError(msg) from exc
    axes = tuple("c" if a in "CS" else a.lower() for a in series.axes)
    return LazyImage(path, array, "TIFF", axes=axes if len(axes) == array.ndim else None, _keep=tif)


def open_image(path: str | Path, level: int = 0) -> LazyImage:
    """Open an image for reading region by region.

    Parameters
    ----------
    path
        An OME-Zarr image (NGFF 0.4 or 0.5), a Zarr array folder (format 2 or 3), a TIFF (plain,
        BigTIFF or OME, read through tifffile's zarr store) or an ``.npy`` file (memory-mapped).
    level
        Resolution level of a multiscale OME-Zarr or pyramidal TIFF; 0 is full resolution.

    Raises
    ------
    InputError
        When the path is not one of these, or the level does not exist.
    MissingDependencyError
        When the ``ebai-core[large]`` extra is not installed (Zarr and TIFF need zarr).
    """
    path = Path(path)
    if is_zarr(path):
        require_large()
        return _zarr_image(path, level)
    suffix = path.suffix.lower()
    if level and suffix == ".npy":
        msg = f"{str(path)!r} is an NPY file with one level: leave out --level (got {level})"
        raise InputError(msg)
    if suffix in (".tif", ".tiff"):
        require_large()
        return _tiff_image(path, level)
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            msg = f"cannot open {str(path)!r} as NPY ({type(exc).__name__}: {exc}): check the file"
            raise InputError(msg) from exc
        return LazyImage(path, array, "NPY")
    if not path.exists():
        msg = f"{str(path)!r} does not exist: give an OME-Zarr, Zarr, TIFF or NPY image"
        raise InputError(msg)
    msg = f"{str(path)!r} cannot be read region by region: give an OME-Zarr, Zarr, TIFF or NPY image"
    raise InputError(msg)


class SampleView:
    """A lazy image seen as the model's ``(C, *spatial)`` sample, read region by region.

    The stored axes are matched to the model as :func:`~ebai.core.imageio.to_sample` matches an
    image read whole (axes of length 1 dropped, the channel axis found first, last or ZCYX), so a
    region read here equals the same region of ``to_sample(whole image)``.
    """

    def __init__(self, image: LazyImage, spec: InputSpec) -> None:
        from ebai.core.imageio import sample_axes

        self.image = image
        self.spec = spec
        # a time axis (OME-Zarr's "t") is read at its first time point, as bioio reads it by default
        shape = tuple(
            1 if name == "t" else n
            for n, name in zip(image.shape, image.axes or (None,) * len(image.shape), strict=True)
        )
        self.dropped, self.channel = sample_axes(shape, spec, what=f"image {str(image.path)!r}")
        self.spatial_axes = [a for a in range(len(image.shape)) if a not in self.dropped and a != self.channel]
        self.shape = tuple(image.shape[a] for a in self.spatial_axes)

    @property
    def channels(self) -> int:
        """Number of channels of the sample."""
        return 1 if self.channel is None else self.image.shape[self.channel]

    @property
    def chunk_length(self) -> int:
        """Storage chunk length along the first spatial axis (1 for an unchunked array, e.g. NPY)."""
        chunks = getattr(self.image.array, "chunks", None)
        return int(chunks[self.spatial_axes[0]]) if chunks else 1

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read ``region`` (one slice per spatial axis) as ``(C, *region)`` float32."""
        index: list[slice | int] = [0] * len(self.image.shape)
        for axis, sl in zip(self.spatial_axes, region, strict=True):
            index[axis] = sl
        if self.channel is not None:
            index[self.channel] = slice(None)
        data = self.image.read(tuple(index))
        if self.channel is None:
            data = data[np.newaxis]
        else:
            # the channel is the only axis kept besides the spatial ones: its position among them
            data = np.moveaxis(data, sum(1 for a in self.spatial_axes if a < self.channel), 0)
        return np.ascontiguousarray(data, dtype=np.float32)

    def spatial_names(self) -> tuple[str, ...]:
        """Names of the spatial axes: the source's when recorded, else the model's."""
        names = self.image.axes
        own = tuple(self.spec.spatial_axes)
        if names is None:
            return own
        picked = tuple(names[a] for a in self.spatial_axes)
        return picked if len(set(picked)) == len(picked) else own

    def spatial_scale(self) -> tuple[float, ...]:
        """Physical pixel size along the spatial axes (1.0 where the source records none)."""
        scale = self.image.scale
        return tuple(float(scale[a]) for a in self.spatial_axes) if scale else (1.0,) * len(self.spatial_axes)

    def spatial_units(self) -> tuple[str | None, ...]:
        """Units of the spatial axes where the source records them."""
        units = self.image.units
        return tuple(units[a] for a in self.spatial_axes) if units else (None,) * len(self.spatial_axes)


_DONE_DIR = ".ebai-blocks"


class OutputZarr:
    """A prediction written as an OME-Zarr image (NGFF 0.4 on Zarr format 2), one block at a time.

    Each block covers whole chunks of the array and no two blocks share a chunk. zarr's local store
    writes each chunk file to a temporary name and renames it into place (zarr >= 3.1), so a chunk
    on disk is whole or absent; after all chunks of a block are written an empty marker file
    ``.ebai-blocks/<block>`` is created, and a rerun skips exactly the blocks with a marker. When
    every block is done the markers are replaced by ``"complete": true`` in the ``ebai`` attributes.

    Parameters
    ----------
    path
        The ``.ome.zarr`` folder.
    run
        What identifies the run (artifact, target, input, shapes); a rerun resumes only when it
        matches what the folder records, otherwise it needs ``overwrite``.
    """

    def __init__(self, path: Path, run: dict[str, Any]) -> None:
        self.path = Path(path)
        self.run = json.loads(json.dumps(run))  # as it will read back from the attributes
        self.array: Any = None

    @property
    def done_dir(self) -> Path:
        """Folder of the per-block completion markers."""
        return self.path / _DONE_DIR

    def create(
        self,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        axes: tuple[str, ...],
        scale: tuple[float, ...],
        units: tuple[str | None, ...],
        carried: dict[str, Any],
        overwrite: bool,
        dtype: str = "float32",
    ) -> str:
        """Create the image, or reopen it to resume; returns ``"new"``, ``"resume"`` or ``"complete"``.

        ``shape`` is ``(C_out, *spatial)``; ``axes``, ``scale`` and ``units`` describe the spatial
        axes (the channel axis is added as ``c``); ``dtype`` is the result's (``uint16`` labels
        after an adapter's post-processing). Chunks are compressed with Blosc LZ4 and byte
        shuffle: faster to write than zarr's default Zstd and smaller on float32 predictions.
        """
        import numcodecs
        import zarr

        if self.path.exists() and not overwrite:
            state = self._reopen()
            if state is not None:
                return state
            msg = (
                f"{str(self.path)!r} exists but was not written by this run (another model, target, input or "
                "block size): pass --overwrite to replace it, or write to another folder"
            )
            raise OutputExistsError(msg)
        if self.path.exists():
            import shutil

            shutil.rmtree(self.path)
        group = zarr.open_group(store=str(self.path), mode="w", zarr_format=2)
        self.array = group.create_array(
            "0",
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            compressors=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
            config={"write_empty_chunks": True},
        )
        space_types = {"t": "time"}
        ngff_axes: list[dict[str, Any]] = [{"name": "c", "type": "channel"}]
        for name, unit in zip(axes, units, strict=True):
            entry: dict[str, Any] = {"name": name, "type": space_types.get(name, "space")}
            if unit:
                entry["unit"] = unit
            ngff_axes.append(entry)
        group.attrs.update(
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "name": self.path.name.split(".")[0],
                        "axes": ngff_axes,
                        "datasets": [
                            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, *scale]}]}
                        ],
                    }
                ],
                "ebai": {"run": self.run, "complete": False, "source_attrs": carried},
            }
        )
        self.done_dir.mkdir()
        return "new"

    def _reopen(self) -> str | None:
        import zarr

        try:
            group = zarr.open_group(store=str(self.path), mode="r+")
            ebai = dict(group.attrs).get("ebai") or {}
            if ebai.get("run") != self.run:
                return None
            self.array = group["0"]
        except Exception:  # not a zarr group, or not ours
            return None
        if ebai.get("complete"):
            return "complete"
        self.done_dir.mkdir(exist_ok=True)
        # temporary chunk files of a killed run are never read; clear them
        for partial in Path(self.path / "0").glob("*.partial"):
            partial.unlink(missing_ok=True)
        return "resume"

    def done(self) -> set[str]:
        """Names of the blocks already written."""
        return {p.name for p in self.done_dir.iterdir()} if self.done_dir.is_dir() else set()

    def finish(self) -> None:
        """Record the image as complete and remove the per-block markers."""
        import shutil

        import zarr

        group = zarr.open_group(store=str(self.path), mode="r+")
        ebai = dict(group.attrs["ebai"])
        ebai["complete"] = True
        group.attrs["ebai"] = ebai
        shutil.rmtree(self.done_dir, ignore_errors=True)


def write_block(path: Path, name: str, index: tuple[slice, ...], data: np.ndarray) -> None:
    """Write one block's chunks into the image at ``path``, then its completion marker.

    Called in the worker processes; ``index`` covers whole chunks of the array.
    """
    import zarr

    array = zarr.open_array(store=str(path / "0"), mode="r+", zarr_format=2)
    array[index] = data
    marker = path / _DONE_DIR / name
    tmp = marker.with_name(f".{name}.{os.getpid()}")
    tmp.touch()
    tmp.replace(marker)


def read_crop(path: str | Path, spec: InputSpec, *, tiles: int = 4, level: int = 0) -> np.ndarray:
    """Read the centre of a large image, at most ``tiles`` tiles along each axis, as ``(C, *crop)``.

    Compression uses this for images that do not fit in memory: calibration, fine-tuning and the
    accuracy guard cut their tiles from the crop, so only the crop is ever read.
    """
    view = SampleView(open_image(path, level), spec)
    region = []
    for size, t in zip(view.shape, spec.tile, strict=True):
        length = min(size, tiles * int(t))
        start = (size - length) // 2
        region.append(slice(start, start + length))
    return view.read(tuple(region))
