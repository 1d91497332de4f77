"""Images ebai-core does not read itself: OME-Zarr, and every format a bioio plugin reads.

``ebai.core.imageio`` reads TIFF, PNG and NPY with no heavy dependency. This module adds what bioio
reads (OME-Zarr through ``bioio-ome-zarr``; CZI, ND2, LIF, ... through their bioio plugins),
importing bioio only when such an image is met. Images come back channels first (``CZYX``, or
``CYX`` for a single plane), ready for :func:`ebai.core.imageio.to_sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ebai.core.data import ImageFiles
from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.imageio import IMAGE_SUFFIXES, expand_inputs, read_image
from ebai.core.install_hints import install_line

__all__ = ["BIOIO_SUFFIXES", "BioImageFiles", "list_bioimages", "read_bioimage"]

#: Suffixes read through bioio (plugins decide which of them actually open).
BIOIO_SUFFIXES = (".zarr", ".ome.zarr", ".czi", ".nd2", ".lif", ".ome.tif", ".ome.tiff")
_INSTALL = install_line("bioio")


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and path.name.lower().endswith(".zarr")


def _is_bioimage(path: Path) -> bool:
    name = path.name.lower()
    if _is_zarr(path):
        return True
    return path.is_file() and (name.endswith(BIOIO_SUFFIXES) or path.suffix.lower() in IMAGE_SUFFIXES)


def read_bioimage(path: str | Path, *, scene: int | str | None = None, timepoint: int = 0) -> np.ndarray:
    """Read one image through bioio as a channels-first array (``CZYX``; ``CYX`` for one plane).

    Parameters
    ----------
    path
        An OME-Zarr folder (``.zarr``/``.ome.zarr``) or any file a bioio plugin installed here reads.
    scene
        Scene index or name for multi-scene files; default the first.
    timepoint
        Time point of time series (ebai models take one time point at a time).
    """
    try:
        from bioio import BioImage
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL) from exc
    path = Path(path)
    if not path.exists():
        msg = f"{str(path)!r} does not exist: give an OME-Zarr folder or an image file"
        raise InputError(msg)
    try:
        img = BioImage(path)
    except Exception as exc:  # bioio raises its own UnsupportedFileFormatError and plugin errors
        msg = (
            f"{str(path)!r} cannot be opened by the bioio plugins installed here ({type(exc).__name__}): "
            "install the bioio plugin for its format (e.g. pip install bioio-ome-zarr, bioio-czi, bioio-nd2)"
        )
        raise InputError(msg) from exc
    if scene is not None:
        img.set_scene(scene)
    n_t = int(img.dims.T)
    if not 0 <= timepoint < n_t:
        msg = f"{str(path)!r} has {n_t} time point(s), so time point {timepoint} does not exist: pick 0 to {n_t - 1}"
        raise InputError(msg)
    data = np.asarray(img.get_image_data("CZYX", T=timepoint))
    return data[:, 0] if data.shape[1] == 1 else data


def list_bioimages(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Like :func:`ebai.core.imageio.list_images`, plus OME-Zarr folders and bioio formats.

    A folder ending in ``.zarr`` is one image; another folder gives the images directly in it.
    """
    return expand_inputs(
        inputs,
        _is_bioimage,
        readable="TIFF, PNG, NPY, OME-Zarr or bioio-readable",
        sources="image files, OME-Zarr folders, folders of them, or glob patterns",
    )


def _read_any(path: Path) -> np.ndarray:
    name = path.name.lower()
    if not _is_zarr(path) and not name.endswith(BIOIO_SUFFIXES) and path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)  # TIFF, PNG, NPY: ebai-core reads them without bioio
    return read_bioimage(path)


class BioImageFiles(ImageFiles):
    """A :class:`ebai.core.DataSource` over OME-Zarr and other bioio-readable images.

    TIFF, PNG and NPY files are read by ``ebai.core`` as :class:`ebai.core.data.ImageFiles` does;
    bioio is imported only for the other formats. Samples are ``(C, *spatial)`` float32, in a
    stable order (inputs as given, a folder's images by name).

    Parameters
    ----------
    inputs
        Files, OME-Zarr folders, folders holding images, glob patterns.
    spec
        The model input the samples are for (their channels and dimensions are checked).
    """

    find = staticmethod(list_bioimages)
    read = staticmethod(_read_any)
