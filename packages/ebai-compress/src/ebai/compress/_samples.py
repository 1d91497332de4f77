"""The user's images, split for compression: training (fine-tuning, calibration) and held out.

Whole images are held out, not tiles of an image that also feeds calibration, so the accuracy
guard measures the compressed model on data no step of the compression has seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ebai.core.errors import InputError
from ebai.core.interfaces import DataSource, ModelSource
from ebai.core.progress import progress

__all__ = ["SampleSplit", "fit_tile", "load_samples", "split_samples"]


def fit_tile(
    sample: np.ndarray, tile: Sequence[int], rng: np.random.Generator | None = None, *, center: bool = False
) -> np.ndarray:
    """Crop ``sample`` ``(C, *spatial)`` to ``tile``, padding by reflection where it is smaller.

    With ``rng`` the crop is placed at random (the same draws give the same crop); with
    ``center`` (or no ``rng``) it is centred.
    """
    x = np.asarray(sample, dtype=np.float32)
    pads = [(0, 0)]
    for dim, t in zip(x.shape[1:], tile, strict=False):
        short = max(int(t) - int(dim), 0)
        pads.append((short // 2, short - short // 2))
    if any(p != (0, 0) for p in pads):
        mode = "reflect" if min(x.shape[1:]) > 1 else "edge"
        x = np.pad(x, pads, mode=mode)
    index: list[slice] = [slice(None)]
    for dim, t in zip(x.shape[1:], tile, strict=False):
        room = int(dim) - int(t)
        start = room // 2 if center or rng is None else int(rng.integers(0, room + 1))
        index.append(slice(start, start + int(t)))
    return np.ascontiguousarray(x[tuple(index)])


def load_samples(model_source: ModelSource, data_source: DataSource) -> list[np.ndarray]:
    """Read every sample of ``data_source`` and preprocess it for ``model_source``.

    Raises
    ------
    InputError
        When a sample has the wrong number of dimensions or channels, or holds NaN/Inf values
        (naming which one: a NaN spoils every correlation and an Inf every int8 scale).
    """
    spec = model_source.input_spec
    out = []
    total = len(data_source) if hasattr(data_source, "__len__") else None
    paths = getattr(data_source, "paths", None)
    for i, raw in enumerate(progress(iter(data_source), "reading images", total=total, unit="img")):
        raw = np.asarray(raw)
        if np.issubdtype(raw.dtype, np.inexact) and not np.isfinite(raw).all():
            name = repr(str(paths[i])) if paths is not None and i < len(paths) else f"image {i} of the data"
            bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
            msg = (
                f"{name} holds {bad} NaN/Inf value(s): calibration and the accuracy guard need finite images; "
                "fix or leave out that image"
            )
            raise InputError(msg)
        sample = np.asarray(model_source.preprocess(raw), dtype=np.float32)
        spec.check_sample(sample, what=f"image {i} after preprocessing")
        out.append(sample)
    return out


@dataclass(frozen=True)
class SampleSplit:
    """Preprocessed images and tiles, split so the guard's data is never seen before.

    Attributes
    ----------
    train, held_out
        Preprocessed whole images ``(C, *spatial)``: the first feed fine-tuning and calibration,
        the second only the accuracy guard.
    train_indices, held_out_indices
        Positions of those images in the data source.
    calibration
        Tiles ``(C, *tile)`` cropped from the training images for int8 calibration.
    validation
        Tiles from the training images for early stopping and accuracy-aware lowering.
    held_out_tiles
        Tiles from the held-out images the guard measures on.
    """

    train: list[np.ndarray]
    held_out: list[np.ndarray]
    train_indices: tuple[int, ...]
    held_out_indices: tuple[int, ...]
    calibration: list[np.ndarray]
    validation: list[np.ndarray]
    held_out_tiles: list[np.ndarray]

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for the manifest."""
        return {
            "samples": len(self.calibration),
            "images": len(self.train),
            "held_out_images": list(self.held_out_indices),
            "held_out_tiles": len(self.held_out_tiles),
        }


def required_images(held_out: int) -> int:
    """Fewest images compression can work with: the held-out ones plus one to learn from."""
    return held_out + 1


def _tiles(
    images: Sequence[np.ndarray], count: int, tile: Sequence[int], rng: np.random.Generator, first_centered: bool
) -> list[np.ndarray]:
    out = []
    for k in range(count):
        image = images[k % len(images)]
        centered = first_centered and k < len(images)
        out.append(fit_tile(image, tile, None if centered else rng, center=centered))
    return out


def split_samples(
    samples: Sequence[np.ndarray],
    *,
    tile: Sequence[int],
    held_out: int,
    calibration: int,
    tiles: int,
    validation: int = 4,
    seed: int = 0,
) -> SampleSplit:
    """Hold out ``held_out`` whole images (chosen at random with ``seed``) and cut tiles.

    Raises
    ------
    InputError
        When fewer than ``held_out + 1`` images are given.
    """
    n = len(samples)
    need = required_images(held_out)
    if n < need:
        msg = (
            f"{n} image(s) given but compression needs at least {need}: {held_out} held out for the accuracy guard "
            "and at least 1 for calibration and fine-tuning; add images or lower fidelity.held_out"
        )
        raise InputError(msg)
    rng = np.random.default_rng(seed)
    held = tuple(sorted(int(i) for i in rng.permutation(n)[:held_out]))
    train_idx = tuple(i for i in range(n) if i not in held)
    train = [samples[i] for i in train_idx]
    held_imgs = [samples[i] for i in held]
    return SampleSplit(
        train=train,
        held_out=held_imgs,
        train_indices=train_idx,
        held_out_indices=held,
        calibration=_tiles(train, calibration, tile, np.random.default_rng([seed, 1]), first_centered=False),
        validation=_tiles(train, validation, tile, np.random.default_rng([seed, 2]), first_centered=True),
        held_out_tiles=_tiles(held_imgs, tiles, tile, np.random.default_rng([seed, 3]), first_centered=True),
    )
