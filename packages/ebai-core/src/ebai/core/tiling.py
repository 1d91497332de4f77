"""Sliding-window inference over images larger (or smaller) than the model's tile.

Networks are exported for one tile shape; microscopy images come in every size. The tiler cuts a
``(C, *spatial)`` image (any number of spatial axes) into overlapping tiles of exactly that shape,
runs them through any callable in batches, and blends the outputs back with weights that fall
off towards the tile edges, so seams between tiles do not show.

Three properties the rest of ebai relies on:

- the callable always receives ``(N, C, *tile)`` with the tile rounded up to the model's divisor:
  engines compiled for a static spatial shape work; images smaller than the tile are padded;
- an image of exactly the tile shape gives bit-for-bit the direct call's output, and an identity
  callable gives back the input to float32 rounding (relative error at most
  :data:`BLEND_RTOL`; blending accumulates in float32, in place);
- every pixel gets a positive total weight: a tile edge that lies on the image border keeps full
  weight up to the border (only edges shared with a neighbouring tile are faded), so there is no
  division by zero and no loss of confidence at the border.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import product

import numpy as np

from ebai.core.errors import InputError
from ebai.core.progress import progress

__all__ = ["BLENDINGS", "BLEND_RTOL", "PAD_MODES", "blend_bytes", "fit_tile", "predict_tiled", "tile_starts"]

logger = logging.getLogger("ebai")

#: Blending profiles :func:`predict_tiled` accepts.
BLENDINGS = ("gaussian", "linear", "constant")
#: ``numpy.pad`` modes used to pad an image smaller than the tile.
PAD_MODES = ("reflect", "symmetric", "edge", "constant")

#: Largest relative error blending adds to a tile's value (an identity model's output vs its
#: input): a few float32 roundings per overlapping tile, well below any model's own error.
BLEND_RTOL = 1e-5

#: Gaussian sigma as a fraction of the tile size (as nnU-Net and MONAI use).
_SIGMA_SCALE = 1.0 / 8.0

Infer = Callable[[np.ndarray], np.ndarray]


def fit_tile(
    sample: np.ndarray, tile: Sequence[int], rng: np.random.Generator | None = None, *, center: bool = False
) -> np.ndarray:
    """Crop ``sample`` ``(C, *spatial)`` to ``tile``, padding by reflection where it is smaller.

    Used for calibration and guard tiles and for the test tensors of exported packages.

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


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles covering one axis of length ``size`` (``size >= tile``).

    Neighbouring tiles share at least ``overlap * tile`` pixels; the tiles are spread evenly so the
    first starts at 0 and the last ends exactly at ``size``.

    Parameters
    ----------
    size
        Length of the (padded) image along the axis.
    tile
        Tile length along the axis.
    overlap
        Fraction of the tile shared by neighbours, in ``[0, 1)``.

    Returns
    -------
    list of int
        Sorted start offsets.
    """
    if size < tile:
        msg = f"axis of length {size} is shorter than the tile {tile}: pad the image to the tile first"
        raise InputError(msg)
    if size == tile:
        return [0]
    step = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((size - tile) / step) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _profile(tile: int, ramp: int, blending: str) -> np.ndarray:
    """Weight along one axis of a tile, before the image-border flattening; positive everywhere."""
    if blending == "constant" or tile == 1:
        return np.ones(tile)
    if blending == "gaussian":
        x = np.arange(tile, dtype=np.float64) - (tile - 1) / 2.0
        sigma = tile * _SIGMA_SCALE
        w = np.exp(-(x**2) / (2.0 * sigma**2))
        return w / w.max()
    # linear: ramp up over the overlap band, flat in between
    if ramp <= 0:
        return np.ones(tile)
    i = np.arange(tile, dtype=np.float64)
    return np.minimum(1.0, np.minimum((i + 0.5) / ramp, (tile - i - 0.5) / ramp))


def _border_flat(base: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
    """Weights of one axis: ``base``, raised to its peak from the peak to each border-side edge."""
    w = base.copy()
    peak = int(np.argmax(base))
    top = base[peak]
    if at_start:
        w[: peak + 1] = top
    if at_end:
        # the profiles are symmetric: the last index holding the peak value
        last_peak = len(base) - 1 - int(np.argmax(base[::-1]))
        w[last_peak:] = top
    return w


def _check(
    image: np.ndarray, tile: Sequence[int], overlap: float, blending: str, batch_size: int, divisor: int, pad_mode: str
) -> tuple[int, ...]:
    if image.ndim < 2:
        msg = f"image has shape {tuple(image.shape)}: give channels first and at least one spatial axis (C, *spatial)"
        raise InputError(msg)
    spatial = image.ndim - 1
    tile = tuple(int(t) for t in tile)
    if len(tile) != spatial:
        msg = f"tile {tile} has {len(tile)} sizes but the image {tuple(image.shape)} has {spatial} spatial axes: give one size per spatial axis"
        raise InputError(msg)
    if any(t < 1 for t in tile):
        msg = f"tile sizes must be positive, got {tile}"
        raise InputError(msg)
    if any(s < 1 for s in image.shape[1:]):
        msg = f"image has an empty spatial axis (shape {tuple(image.shape)}): give a non-empty image"
        raise InputError(msg)
    if not 0.0 <= overlap < 1.0:
        msg = f"tile overlap must be in [0, 1), got {overlap}"
        raise InputError(msg)
    if blending not in BLENDINGS:
        msg = f"unknown blending {blending!r}: use one of {', '.join(BLENDINGS)}"
        raise InputError(msg)
    if pad_mode not in PAD_MODES:
        msg = f"unknown pad mode {pad_mode!r}: use one of {', '.join(PAD_MODES)}"
        raise InputError(msg)
    if batch_size < 1:
        msg = f"batch size must be at least 1, got {batch_size}"
        raise InputError(msg)
    if divisor < 1:
        msg = f"divisor must be at least 1, got {divisor}"
        raise InputError(msg)
    rounded = tuple(-(-t // divisor) * divisor for t in tile)
    if rounded != tile:
        logger.debug("tile %s rounded up to %s, a multiple of the divisor %d", tile, rounded, divisor)
    return rounded


def _batches(
    padded: np.ndarray,
    corners: list[tuple[int, ...]],
    tile: tuple[int, ...],
    batch_size: int,
    wait: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Stack the tiles at ``corners`` into batches; ``wait(stop)`` first, when the array is still being filled.

    ``wait`` is called with the end, along the first spatial axis, of the rows the batch reads
    (the block path fills its sample slab by slab while the first tiles run).
    """
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        if wait is not None:
            wait(max(c[0] for c in chunk) + tile[0])
        yield np.stack(
            [padded[(slice(None), *(slice(c, c + t) for c, t in zip(corner, tile, strict=True)))] for corner in chunk]
        )


def _accumulate(
    outputs: Iterable[np.ndarray],
    corners: Sequence[tuple[int, ...]],
    tile: tuple[int, ...],
    batch_size: int,
    region: tuple[int, ...],
    in_channels: int,
    weight_of: Callable[[int, tuple[int, ...]], np.ndarray],
) -> np.ndarray:
    """Blend the model's tile outputs into a float32 ``(C_out, *region)`` accumulator, in place.

    The one blending loop of :func:`predict_tiled` and of the large-image block path
    (:func:`ebai.core.blocks.predict_block`), so both add the same tiles in the same order with the
    same rounding. ``outputs`` yields one ``(N, C_out, *tile)`` batch per ``batch_size`` corners;
    ``weight_of(j, corner)`` gives the j-th tile's blending weight. Malformed outputs (wrong shape,
    missing batches) raise :class:`InputError` naming what was returned.
    """
    acc: np.ndarray | None = None
    done = 0
    for out in outputs:
        out = np.asarray(out)
        chunk = corners[done : done + batch_size]
        if out.ndim != len(tile) + 2 or out.shape[0] != len(chunk) or tuple(out.shape[2:]) != tuple(tile):
            msg = (
                f"the model returned shape {tuple(out.shape)} for a batch of shape "
                f"{(len(chunk), in_channels, *tile)}: tiling needs (N, C_out, *tile) outputs "
                "with the input's spatial shape"
            )
            raise InputError(msg)
        if acc is None:
            acc = np.zeros((out.shape[1], *region), dtype=np.float32)
        for k, corner in enumerate(chunk):
            view = acc[(slice(None), *(slice(c, c + t) for c, t in zip(corner, tile, strict=True)))]
            view += out[k].astype(np.float32, copy=False) * weight_of(done + k, corner)
        done += len(chunk)
    if acc is None or done != len(corners):
        msg = f"the model returned results for {done} of {len(corners)} tiles: an engine's infer_many must yield one output per batch"
        raise InputError(msg)
    return acc


def predict_tiled(
    image: np.ndarray,
    infer: Infer,
    tile: Sequence[int],
    *,
    overlap: float = 0.25,
    blending: str = "gaussian",
    batch_size: int = 4,
    divisor: int = 1,
    pad_mode: str = "reflect",
    progress_desc: str | None = None,
) -> np.ndarray:
    """Run ``infer`` over ``image`` tile by tile and blend the tiles into one output.

    Parameters
    ----------
    image
        ``(C, *spatial)`` array, channels first, any number of spatial axes; cast to float32.
    infer
        Any callable mapping a float32 batch ``(N, C, *tile)`` to ``(N, C_out, *tile)`` (an
        :class:`~ebai.core.interfaces.Engine` works; its ``infer_many`` is used when present, so
        backends can overlap requests).
    tile
        Spatial tile shape, one size per spatial axis; rounded up to a multiple of ``divisor``.
        Every batch has exactly this spatial shape.
    overlap
        Fraction of the tile shared by neighbouring tiles, in ``[0, 1)``.
    blending
        ``"gaussian"`` (weights fall off as a Gaussian with sigma = tile/8, as in nnU-Net/MONAI),
        ``"linear"`` (weights ramp up across the overlap band, flat elsewhere) or ``"constant"``
        (plain average). Tile sides lying on the image border always keep full weight.
    batch_size
        Tiles per call of ``infer``; the last batch may be smaller. The result does not depend on it.
    divisor
        Every spatial size the model is fed must be a multiple of this (e.g. 16 for a U-Net with four
        poolings).
    pad_mode
        ``numpy.pad`` mode used where the image is smaller than the tile: ``"reflect"``,
        ``"symmetric"``, ``"edge"`` or ``"constant"`` (zeros). The image is centred in the tile.
    progress_desc
        Label of a progress bar over batches; ``None`` shows none.

    Returns
    -------
    numpy.ndarray
        ``(C_out, *spatial)`` float32 with the image's spatial shape.

    Notes
    -----
    Blending accumulates in float32, in place, in the array that is returned: memory is 4 bytes
    per output voxel and channel on top of the (padded) input, see :func:`blend_bytes`. The
    weights are products of one profile per axis and the tiles lie on a grid, so their sum is the
    product of per-axis sums and is never held as a full array. An image of exactly the tile shape
    gets weight 1 everywhere, so its output is the direct call's, bit for bit; elsewhere an identity
    model gives back its input within :data:`BLEND_RTOL` (relative).
    """
    image = np.asarray(image, dtype=np.float32)
    tile_shape = _check(image, tile, overlap, blending, batch_size, divisor, pad_mode)
    spatial = image.shape[1:]

    # pad axes shorter than the tile, centring the image
    before = [max(0, t - s) // 2 for s, t in zip(spatial, tile_shape, strict=True)]
    after = [max(0, t - s) - b for s, t, b in zip(spatial, tile_shape, before, strict=True)]
    if any(before) or any(after):
        pad = [(0, 0), *zip(before, after, strict=True)]
        padded = np.pad(image, pad, mode=pad_mode)
    else:
        padded = image
    full = padded.shape[1:]

    starts = [tile_starts(s, t, overlap) for s, t in zip(full, tile_shape, strict=True)]
    ramps = [t - min(np.diff(st)) if len(st) > 1 else 0 for st, t in zip(starts, tile_shape, strict=True)]
    bases = [_profile(t, int(r), blending) for t, r in zip(tile_shape, ramps, strict=True)]
    corners = list(product(*starts))

    # a tile's weights are a product of one profile per axis, which depends only on whether that
    # side lies on the image border (flattened there); so is their sum over the tile grid
    profiles = [
        {c: _border_flat(base, c == 0, c + t == size).astype(np.float32) for c in st}
        for base, st, t, size in zip(bases, starts, tile_shape, full, strict=True)
    ]
    axis_sums = []
    for prof, st, t, size in zip(profiles, starts, tile_shape, full, strict=True):
        total = np.zeros(size, dtype=np.float32)
        for c in st:
            total[c : c + t] += prof[c]
        axis_sums.append(total)
    weights: dict[tuple[tuple[bool, bool], ...], np.ndarray] = {}  # at most 4 per axis combination

    def tile_weight(corner: tuple[int, ...]) -> np.ndarray:
        key = tuple((c == 0, c + t == size) for c, t, size in zip(corner, tile_shape, full, strict=True))
        if key not in weights:
            w = np.ones((), dtype=np.float32)
            for prof, c in zip(profiles, corner, strict=True):
                w = np.multiply.outer(w, prof[c])
            weights[key] = w
        return weights[key]

    batches = _batches(padded, corners, tile_shape, batch_size)
    infer_many = getattr(infer, "infer_many", None)
    outputs = infer_many(batches) if callable(infer_many) else (infer(b) for b in batches)
    n_batches = -(-len(corners) // batch_size)
    if progress_desc is not None:
        outputs = progress(outputs, desc=progress_desc, total=n_batches, unit="batch")

    acc = _accumulate(outputs, corners, tile_shape, batch_size, full, image.shape[0], lambda _, c: tile_weight(c))

    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    result = acc[(slice(None), *crop)]
    if result.shape != acc.shape:
        result = np.ascontiguousarray(result)  # padding cropped off: a small image, a small copy
    del acc
    ndim = len(full)
    for axis, (total, sl) in enumerate(zip(axis_sums, crop, strict=True)):
        shape = [1] * (ndim + 1)
        shape[axis + 1] = -1
        if np.any(total[sl] != 1.0):
            result /= total[sl].reshape(shape)
    return result


def blend_bytes(image_shape: Sequence[int], out_channels: int) -> int:
    """Bytes :func:`predict_tiled` allocates for an image of ``image_shape`` ``(C, *spatial)``.

    The float32 input copy (none when the image is float32 already) and the float32 output,
    without the small per-batch tile buffers; callers add the model's own memory.
    """
    voxels = math.prod(int(s) for s in image_shape[1:])
    return 4 * voxels * (int(image_shape[0]) + int(out_channels))
