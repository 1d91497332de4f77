"""Reading and writing the user's images: TIFF, PNG and NPY, channels put first for the model.

TIFF (the microscopy format) is read and written with tifffile; NumPy ``.npy`` files with numpy;
PNG with Pillow when it is installed (it is not a dependency of ebai-core: no light library reads
PNG without it, and most PNG users already have it). Writes are atomic.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.files import atomic_file
from ebai.core.specs import InputSpec

__all__ = [
    "IMAGE_SUFFIXES",
    "expand_inputs",
    "list_images",
    "probe_image",
    "read_image",
    "sample_axes",
    "to_sample",
    "write_tiff",
]

#: File suffixes :func:`list_images` collects and :func:`read_image` reads.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
_GLOB_CHARS = frozenset("*?[")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Expand files, folders and glob patterns into the image files they name.

    Parameters
    ----------
    inputs
        Image files, folders (their images, not sub-folders) and glob patterns
        (``"data/**/*.tif"``; ``**`` searches sub-folders).

    Returns
    -------
    list of pathlib.Path
        Images with a suffix in :data:`IMAGE_SUFFIXES`, each once, in a stable order: inputs in the
        order given, the images of one folder or pattern sorted by name.

    Raises
    ------
    InputError
        When a path does not exist, a file is not an image ebai reads, or nothing is found.
    """
    suffixes = ", ".join(IMAGE_SUFFIXES)
    return expand_inputs(inputs, _is_image, readable=suffixes, sources="image files, folders or glob patterns")


def expand_inputs(
    inputs: Sequence[str | Path] | str | Path, is_image: Callable[[Path], bool], *, readable: str, sources: str
) -> list[Path]:
    """Expand files, folders and glob patterns into the images ``is_image`` accepts, as :func:`list_images` does.

    For readers of more formats (bioio): a path ``is_image`` accepts is one image even when it is a
    folder (OME-Zarr), another folder gives the images directly in it. ``readable`` names the
    formats and ``sources`` the kinds of input in the errors.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if is_image(path):
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if is_image(p)))
        elif path.is_file():
            msg = f"{str(path)!r} is not an image ebai reads: give {readable} files"
            raise InputError(msg)
        elif _GLOB_CHARS & set(str(item)):
            found.extend(sorted(Path(p) for p in glob.glob(str(item), recursive=True) if is_image(Path(p))))
        else:
            msg = f"{str(path)!r} does not exist: give {sources}"
            raise InputError(msg)
    unique = list(dict.fromkeys(found))
    if not unique:
        shown = ", ".join(repr(str(i)) for i in inputs) or "no inputs"
        msg = f"no images found in {shown}: ebai reads {readable} files"
        raise InputError(msg)
    return unique


def _read_png(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:
        msg = "pip install pillow"
        raise MissingDependencyError(msg) from exc
    with Image.open(path) as img:
        return np.asarray(img)


def _unreadable(path: Path, exc: BaseException) -> InputError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kind = {".npy": "a NumPy file", ".png": "a PNG image"}.get(path.suffix.lower(), "a TIFF image")
    if path.is_file() and path.stat().st_size == 0:
        detail = "the file is empty"
    msg = f"{str(path)!r} cannot be read as {kind} ({detail}): the file is damaged or truncated, replace or remove it"
    return InputError(msg)


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as a numpy array, axes as stored.

    TIFF through ``tifffile.imread`` (multi-page stacks give a leading axis), PNG through Pillow
    (RGB(A) gives a trailing channel axis), NPY through ``numpy.load`` without pickles.

    Raises
    ------
    InputError
        When the suffix is not one ebai reads, or the file cannot be read (damaged, truncated,
        empty): one line naming the file.
    MissingDependencyError
        When reading a PNG without Pillow installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        msg = f"{str(path)!r} is not an image ebai reads: give {', '.join(IMAGE_SUFFIXES)} files"
        raise InputError(msg)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        return _read_png(path)
    except (MissingDependencyError, MemoryError):
        raise
    except Exception as exc:  # any failure to decode a user's file is the file's, named in one line
        raise _unreadable(path, exc) from exc


def probe_image(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an image file, from its header only (nothing is decoded).

    Lets a run check every input, and the memory the largest needs, before any work.

    Raises
    ------
    InputError
        When the file cannot be read (damaged, truncated, empty), in one line naming it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(int(s) for s in series.shape), np.dtype(series.dtype)
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(int(s) for s in arr.shape), arr.dtype
        if suffix == ".png":
            try:
                from PIL import Image
            except ImportError as exc:
                msg = "pip install pillow"
                raise MissingDependencyError(msg) from exc
            with Image.open(path) as img:
                bands = len(img.getbands())
                shape = (img.height, img.width) + ((bands,) if bands > 1 else ())
                return shape, np.dtype(np.uint16 if img.mode.startswith("I;16") else np.uint8)
    except (MissingDependencyError, MemoryError):
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    msg = f"{str(path)!r} is not an image ebai reads: give {', '.join(IMAGE_SUFFIXES)} files"
    raise InputError(msg)


def sample_axes(shape: Sequence[int], spec: InputSpec, what: str = "image") -> tuple[tuple[int, ...], int | None]:
    """Which stored axes an image of ``shape`` drops and which holds its channels, for ``spec``.

    The rule of :func:`to_sample`, from the shape alone, so that images read region by region
    (:mod:`ebai.core.largeio`) are laid out exactly as images read whole.

    Returns
    -------
    tuple
        The dropped axes (length 1, beyond the model's dimensions) and the channel axis, both as
        positions in ``shape``; the channel axis is ``None`` when the image has none (one channel).

    Raises
    ------
    InputError
        When the dimensions or the channel count do not fit the model.
    """
    shape = tuple(int(s) for s in shape)
    ndim = spec.ndim
    kept = list(range(len(shape)))
    dropped = []
    while len(kept) > ndim + 1 and any(shape[a] == 1 for a in kept):
        axis = next(a for a in kept if shape[a] == 1)
        kept.remove(axis)
        dropped.append(axis)
    if len(kept) == ndim:
        if spec.channels != 1:
            msg = (
                f"{what} has shape {shape} with no channel axis but the model takes "
                f"{spec.channels} channels: give images with a channel axis of {spec.channels}"
            )
            raise InputError(msg)
        return tuple(dropped), None
    if len(kept) == ndim + 1:
        candidates = [0, len(kept) - 1] + ([1] if len(kept) == 4 else [])
        axis = next((a for a in candidates if shape[kept[a]] == spec.channels), None)
        if axis is None:
            msg = (
                f"{what} has shape {shape} but the model takes {ndim}D images with "
                f"{spec.channels} channel(s): no axis (first, last or ZCYX) has {spec.channels} entries"
            )
            raise InputError(msg)
        return tuple(dropped), kept[axis]
    msg = (
        f"{what} has shape {shape} ({len(kept)} dimensions after dropping axes of length 1) "
        f"but the model takes {ndim}D images ({spec.spatial_axes!r}) with {spec.channels} channel(s)"
    )
    raise InputError(msg)


def to_sample(array: np.ndarray, spec: InputSpec, what: str = "image") -> np.ndarray:
    """Bring an image read from disk to the model's ``(C, *spatial)`` float32 layout.

    Axes of length 1 beyond the model's dimensions are dropped; an image without a channel axis
    gets one when the model takes one channel; a channel axis is recognised first, last, or second
    (ImageJ's ``ZCYX``), by its length equal to ``spec.channels`` (see :func:`sample_axes`).

    Parameters
    ----------
    array
        The image as read (e.g. ``YX``, ``YXC``, ``ZYX``, ``CZYX``, ``ZCYX``).
    spec
        The model input the sample is for.
    what
        Name of the image in error messages (e.g. its file name).

    Returns
    -------
    numpy.ndarray
        ``(spec.channels, *spatial)`` float32.

    Raises
    ------
    InputError
        When the dimensions or the channel count do not fit the model.
    """
    x = np.asarray(array)
    dropped, channel = sample_axes(x.shape, spec, what)
    if dropped:
        x = np.squeeze(x, axis=dropped)
    if channel is None:
        x = x[np.newaxis]
    else:
        x = np.moveaxis(x, channel - sum(1 for a in dropped if a < channel), 0)
    sample = np.ascontiguousarray(x, dtype=np.float32)
    spec.check_sample(sample, what)
    return sample


def write_tiff(
    path: str | Path,
    array: np.ndarray,
    *,
    overwrite: bool = False,
    axes: str | None = None,
    compression: str | None = None,
) -> Path:
    """Write ``array`` to a TIFF file atomically (complete or absent, never half-written).

    Parameters
    ----------
    path
        Destination; its folder is created.
    array
        The image; dtype kept. Files over 4 GB are written as BigTIFF.
    overwrite
        Replace an existing file; otherwise an existing ``path`` raises
        :class:`~ebai.core.errors.OutputExistsError` before anything is written.
    axes
        Axis letters stored in the file's metadata (e.g. ``"CZYX"``), for viewers such as napari.
    compression
        tifffile compression name (e.g. ``"zlib"``); ``None`` writes uncompressed.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    import tifffile

    path = Path(path)
    array = np.asarray(array)
    if axes is not None and len(axes) != array.ndim:
        msg = f"axes {axes!r} name {len(axes)} axes but the array has shape {tuple(array.shape)}"
        raise InputError(msg)
    with atomic_file(path, overwrite) as tmp:
        tifffile.imwrite(
            tmp, array, metadata={"axes": axes} if axes else {}, compression=compression, photometric="minisblack"
        )
    return path
