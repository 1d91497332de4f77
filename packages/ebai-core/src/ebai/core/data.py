"""Ready-made :class:`~ebai.core.interfaces.DataSource` implementations: image files and arrays.

Compression calibrates, fine-tunes and checks fidelity on the user's own images; these two sources
cover the common cases (a folder of TIFFs, arrays already in memory) without writing a class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.imageio import read_image, to_sample
from ebai.core.specs import InputSpec

__all__ = ["ArraySource", "ImageFiles"]


class ImageFiles:
    """Images on disk, yielded as ``(C, *spatial)`` float32 samples for one model input.

    Parameters
    ----------
    inputs
        Files, folders and glob patterns (see :func:`~ebai.core.imageio.list_images`); the list is
        made once, here, in a stable sorted order.
    spec
        The model input; each image is brought to it with :func:`~ebai.core.imageio.to_sample`.

    Raises
    ------
    InputError
        When no image is found, or (on iteration) when an image cannot be read or does not fit the
        model; the message names the file.
    """

    def __init__(self, inputs: Sequence[str | Path] | str | Path, spec: InputSpec) -> None:
        self.paths: list[Path] = self.find(inputs)
        self.spec = spec

    # the two steps a source over other formats replaces (ebai-adapters' BioImageFiles does)
    @staticmethod
    def find(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
        """List the images: :func:`~ebai.core.imageio.list_images`, plus Zarr/OME-Zarr folders."""
        from ebai.core.imageio import IMAGE_SUFFIXES, expand_inputs
        from ebai.core.largeio import is_zarr

        def is_image(p: Path) -> bool:
            return is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

        readable = ", ".join(IMAGE_SUFFIXES) + " or Zarr"
        return expand_inputs(inputs, is_image, readable=readable, sources="image files, folders or glob patterns")

    read = staticmethod(read_image)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield self.load(path)

    def load(self, path: Path) -> np.ndarray:
        """Read one file and bring it to the model's layout, naming the file in any error.

        An image too large for memory (any Zarr, or a TIFF/NPY over half the memory) is read lazily
        and only its centre, up to 4 tiles along each axis (:func:`~ebai.core.largeio.read_crop`):
        compression cuts its calibration, fine-tuning and guard tiles from that crop.
        """
        from ebai.core.largeio import large_available, needs_blocks, read_crop

        if needs_blocks(Path(path)) and large_available():
            sample = read_crop(path, self.spec)
            self.spec.check_sample(sample, f"image {str(path)!r}")
            return sample
        try:
            array = self.read(Path(path))
        except (InputError, MissingDependencyError):
            raise
        except Exception as exc:  # corrupt or truncated files raise all sorts of errors
            msg = f"cannot read image {str(path)!r} ({type(exc).__name__}: {exc}): check the file or leave it out"
            raise InputError(msg) from exc
        return to_sample(array, self.spec, what=f"image {str(path)!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.paths)} images, axes={self.spec.axes!r})"


class ArraySource:
    """Arrays in memory as a data source, in the order given.

    Parameters
    ----------
    arrays
        Samples; with ``spec`` they may be in any layout :func:`~ebai.core.imageio.to_sample`
        accepts, without it they must already be ``(C, *spatial)``.
    spec
        Optional model input each array is checked against and brought to.
    """

    def __init__(self, arrays: Iterable[np.ndarray], spec: InputSpec | None = None) -> None:
        self.spec = spec
        self.arrays: list[np.ndarray] = []
        for i, a in enumerate(arrays):
            arr = np.asarray(a)
            if spec is not None:
                arr = to_sample(arr, spec, what=f"array {i}")
            elif arr.ndim < 2:
                msg = f"array {i} has shape {tuple(arr.shape)}: give samples with channels first (C, *spatial)"
                raise InputError(msg)
            self.arrays.append(arr)

    def __len__(self) -> int:
        return len(self.arrays)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.arrays)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.arrays[index]

    def __repr__(self) -> str:
        return f"ArraySource({len(self.arrays)} arrays)"
