"""Cutting an image larger than memory into blocks that reproduce whole-image tiling.

:func:`~ebai.core.tiling.predict_tiled` spreads its tiles evenly over the image it is given, so
calling it on a block with a halo would lay a different tile grid inside each block and the seams
would differ from the whole-image result. Here the grid is laid once over the whole image, with
the same tile starts, blending profiles and border flattening (the functions of
:mod:`ebai.core.tiling`), and each block runs exactly the tiles of that grid that overlap it: its
halo is the part of those tiles outside the block. Cropped to the block, the blend equals the
whole-image result up to float32 rounding, whatever the block size.

Normalisation statistics are likewise taken over the whole image (:func:`image_statistics`) and
applied to every block, as the in-memory path normalises the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from ebai.core.specs import Normalization
from ebai.core.tiling import _accumulate, _batches, _border_flat, _check, _profile, tile_starts

__all__ = [
    "Block",
    "SlabFeed",
    "TileGrid",
    "choose_block",
    "image_statistics",
    "output_chunks",
    "plan_blocks",
    "predict_block",
    "slab_bounds",
    "tile_grid",
]

#: Bytes a block holds per voxel of its region and channel (channels in plus out): the normalised
#: float32 input and the float32 blend (4 bytes each), plus reading and writing's transients. The
#: input is read and normalised slab by slab into the sample (:class:`SlabFeed`), and the core is
#: copied out for writing once the sample is dropped (:func:`ebai.core.distributed.run_block`):
#: measured 8.7 bytes per voxel for one channel in and one out before slab reading, less since.
_BYTES_PER_VOXEL = 5


@dataclass(frozen=True)
class TileGrid:
    """The tile grid :func:`~ebai.core.tiling.predict_tiled` lays over a whole image.

    Attributes
    ----------
    shape
        Spatial shape of the image.
    tile
        Tile shape (rounded up to the divisor).
    before, after
        Padding of the axes shorter than the tile (the image is centred in the tile).
    starts
        Tile start offsets per axis, in padded coordinates.
    bases
        Blending profile of one tile per axis, before border flattening.
    pad_mode
        ``numpy.pad`` mode of the padding.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    before: tuple[int, ...]
    after: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]
    bases: tuple[np.ndarray, ...]
    pad_mode: str

    @property
    def full(self) -> tuple[int, ...]:
        """Padded spatial shape."""
        return tuple(s + b + a for s, b, a in zip(self.shape, self.before, self.after, strict=True))

    def axis_weight(self, axis: int, index: int) -> np.ndarray:
        """Weights of tile ``index`` along ``axis``: flattened where the tile meets the image border."""
        start, t = self.starts[axis][index], self.tile[axis]
        return _border_flat(self.bases[axis], start == 0, start + t == self.full[axis])


def tile_grid(
    shape: Sequence[int],
    tile: Sequence[int],
    *,
    overlap: float,
    blending: str = "gaussian",
    batch_size: int = 4,
    divisor: int = 1,
    pad_mode: str = "reflect",
) -> TileGrid:
    """Lay the tile grid of ``predict_tiled`` over an image of spatial ``shape`` (never read)."""
    shape = tuple(int(s) for s in shape)
    # _check only looks at shapes: a zero-strided view stands in for the image
    stand_in = np.broadcast_to(np.float32(0), (1, *shape))
    tile_shape = _check(stand_in, tile, overlap, blending, batch_size, divisor, pad_mode)
    before = tuple(max(0, t - s) // 2 for s, t in zip(shape, tile_shape, strict=True))
    after = tuple(max(0, t - s) - b for s, t, b in zip(shape, tile_shape, before, strict=True))
    full = tuple(s + b + a for s, b, a in zip(shape, before, after, strict=True))
    starts = tuple(tuple(tile_starts(f, t, overlap)) for f, t in zip(full, tile_shape, strict=True))
    ramps = [t - min(np.diff(st)) if len(st) > 1 else 0 for st, t in zip(starts, tile_shape, strict=True)]
    bases = tuple(_profile(t, int(r), blending) for t, r in zip(tile_shape, ramps, strict=True))
    return TileGrid(shape, tile_shape, before, after, starts, bases, pad_mode)


@dataclass(frozen=True)
class Block:
    """One block: the part of the output it writes and the tiles it runs.

    Attributes
    ----------
    name
        Chunk coordinates joined by dots (``"0.2.1"``), the name of its completion marker.
    core
        Spatial region written, in image coordinates; whole chunks of the output.
    tiles
        First and last tile index per axis (inclusive) of the grid tiles overlapping ``core``.
    """

    name: str
    core: tuple[tuple[int, int], ...]
    tiles: tuple[tuple[int, int], ...]

    @property
    def voxels(self) -> int:
        """Spatial voxels written."""
        return math.prod(b - a for a, b in self.core)


def plan_blocks(grid: TileGrid, block: Sequence[int]) -> list[Block]:
    """Cut the image into blocks of ``block`` voxels (the last ones smaller), in C order."""
    per_axis: list[list[tuple[int, tuple[int, int], tuple[int, int]]]] = []
    for axis, (size, b) in enumerate(zip(grid.shape, block, strict=True)):
        b = max(1, min(int(b), size))
        pad, t, starts = grid.before[axis], grid.tile[axis], grid.starts[axis]
        entries = []
        for k, lo in enumerate(range(0, size, b)):
            hi = min(lo + b, size)
            hit = [i for i, s in enumerate(starts) if s < hi + pad and s + t > lo + pad]
            entries.append((k, (lo, hi), (hit[0], hit[-1])))
        per_axis.append(entries)
    return [
        Block(".".join(str(e[0]) for e in combo), tuple(e[1] for e in combo), tuple(e[2] for e in combo))
        for combo in product(*per_axis)
    ]


def _axis_options(grid: TileGrid, axis: int) -> list[tuple[int, int, int]]:
    """Block lengths worth trying along ``axis``: ``(length, tiles run over all blocks, longest region)``.

    Every length from 1 to the axis is scored (a length whose borders fall where one tile covers
    the image repeats one tile row per border, one falling in an overlap band two, so lengths that
    differ by a few voxels can differ by a whole row); only the Pareto front is kept: each length
    runs fewer tiles than every length with a shorter or equal longest region.
    """
    from bisect import bisect_left, bisect_right

    size, t, pad, starts = grid.shape[axis], grid.tile[axis], grid.before[axis], list(grid.starts[axis])
    scored = []
    for length in range(1, size + 1):
        run = longest = 0
        for lo in range(0, size, length):
            hi = min(lo + length, size)
            first = bisect_right(starts, lo + pad - t)  # tiles ending after lo
            last = bisect_left(starts, hi + pad) - 1  # tiles starting before hi
            run += last - first + 1
            longest = max(longest, starts[last] + t - starts[first])
        scored.append((longest, run, -length))
    front: list[tuple[int, int, int]] = []
    for longest, run, neg in sorted(scored):
        if not front or run < front[-1][1]:
            front.append((-neg, run, longest))
    return front


def choose_block(grid: TileGrid, channels: int, budget_bytes: int) -> tuple[int, ...]:
    """Pick the block shape that runs the fewest tiles while its region fits ``budget_bytes``.

    Tiles straddling a block border run once per block they overlap, so small blocks cost time;
    the region a block holds (block plus halo, ``channels`` in and out) costs memory. The grid is a
    product of per-axis grids, so both are products of per-axis figures and every combination of
    per-axis block lengths on the per-axis Pareto fronts is scored exactly.
    """
    budget_voxels = max(1, budget_bytes // (_BYTES_PER_VOXEL * channels))
    per_axis = [_axis_options(grid, a) for a in range(len(grid.shape))]
    best: tuple[float, int, tuple[int, ...]] | None = None
    for combo in product(*per_axis):
        region = math.prod(o[2] for o in combo)
        if region > budget_voxels:
            continue
        tiles = math.prod(o[1] for o in combo)
        key = (tiles, -region, tuple(o[0] for o in combo))
        if best is None or key[:2] < best[:2]:
            best = key
    if best is None:  # not even one tile per block fits: the smallest blocks
        return tuple(o[0][0] for o in per_axis)
    return best[2]


#: Output chunk lengths :func:`output_chunks` aims at: the last two axes, and the others (4-16 MB
#: of float32 per chunk, what OME-Zarr viewers fetch comfortably).
CHUNK_PLANE = 256
CHUNK_DEPTH = 64


def output_chunks(block: Sequence[int], *, plane: int | None = None, depth: int | None = None) -> tuple[int, ...]:
    """Chunk shape of the output image: a divisor of ``block`` on every axis, near viewer-friendly sizes.

    A block is written as several chunks rather than one, so a viewer (napari, neuroglancer) loads
    a few MB per chunk instead of the whole block, and zarr compresses the block's chunks on its
    thread pool in parallel. Each chunk length divides the block length, so no chunk is shared by
    two blocks (each block's chunks are written by one worker). Per axis, the divisor closest to
    ``plane`` (the last two axes, default :data:`CHUNK_PLANE`) or ``depth`` (the others, default
    :data:`CHUNK_DEPTH`) within a factor of 4 either way is taken; a block length without one (a
    large prime) stays whole.
    """
    plane = CHUNK_PLANE if plane is None else plane
    depth = CHUNK_DEPTH if depth is None else depth
    chunks = []
    for axis, length in enumerate(int(b) for b in block):
        want = plane if axis >= len(block) - 2 else depth
        if length <= want:
            chunks.append(length)
            continue
        near = [d for d in range(max(1, want // 4), min(length, 4 * want) + 1) if length % d == 0]
        chunks.append(min(near, key=lambda d: (abs(math.log(d / want)), -d)) if near else length)
    return tuple(chunks)


def block_region(grid: TileGrid, block: Block) -> tuple[tuple[slice, ...], list[tuple[int, int]], tuple[int, ...]]:
    """Return what a block reads: image region, padding to add, and the region's start in padded coordinates."""
    read, pads, origin = [], [], []
    for axis, (i0, i1) in enumerate(block.tiles):
        lo = grid.starts[axis][i0]
        hi = grid.starts[axis][i1] + grid.tile[axis]
        b, size = grid.before[axis], grid.shape[axis]
        start, stop = lo - b, hi - b
        read.append(slice(max(0, start), min(size, stop)))
        pads.append((max(0, -start), max(0, stop - size)))
        origin.append(lo)
    return tuple(read), pads, tuple(origin)


def predict_block(
    sample: np.ndarray,
    grid: TileGrid,
    block: Block,
    infer: Callable[[np.ndarray], np.ndarray] | Any,
    *,
    batch_size: int = 4,
    wait: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run the grid's tiles overlapping ``block`` and return the blended output over its core.

    Parameters
    ----------
    sample
        The normalised ``(C, *region)`` float32 read at :func:`block_region`'s region (unpadded).
    grid, block
        The whole image's tile grid and the block.
    infer
        Callable or :class:`~ebai.core.interfaces.Engine` mapping ``(N, C, *tile)`` to
        ``(N, C_out, *tile)``; its ``infer_many`` is used when present.
    batch_size
        Tiles per call.
    wait
        Set when ``sample`` is still being filled along its first spatial axis (:class:`SlabFeed`):
        ``wait(stop)`` returns once rows ``[0, stop)`` are in, so the first tiles run while the
        rest is read.

    Returns
    -------
    numpy.ndarray
        ``(C_out, *core)`` float32, equal to the same region of the whole-image ``predict_tiled``
        result up to float32 rounding: a view of the blend over the whole region (core and halo),
        so the sample and the blend are the only region-sized arrays (see :data:`_BYTES_PER_VOXEL`).
    """
    _, pads, origin = block_region(grid, block)
    if any(p != (0, 0) for p in pads):
        if wait is not None:  # padding needs the whole region
            wait(sample.shape[1])
            wait = None
        sample = np.pad(sample, [(0, 0), *pads], mode=grid.pad_mode)
    region = sample.shape[1:]
    ranges = [range(i0, i1 + 1) for i0, i1 in block.tiles]
    indices = list(product(*ranges))
    corners = [tuple(grid.starts[a][i] - origin[a] for a, i in enumerate(idx)) for idx in indices]
    tile = grid.tile

    # the grid is a product of per-axis grids, so the summed weights are a product of per-axis sums
    axis_sums = []
    for axis, rng in enumerate(ranges):
        total = np.zeros(region[axis], dtype=np.float64)
        for i in rng:
            c = grid.starts[axis][i] - origin[axis]
            total[c : c + tile[axis]] += grid.axis_weight(axis, i)
        axis_sums.append(total)

    batches = _batches(sample, corners, tile, batch_size, wait)
    infer_many = getattr(infer, "infer_many", None)
    outputs = infer_many(batches) if callable(infer_many) else (infer(b) for b in batches)

    # a tile's weight depends only on which image borders it touches (flattened there): at most
    # 4 per axis combination, built once each, as predict_tiled does
    full = grid.full
    weights: dict[tuple[tuple[bool, bool], ...], np.ndarray] = {}

    def tile_weight(j: int, _corner: tuple[int, ...]) -> np.ndarray:
        starts = [grid.starts[axis][i] for axis, i in enumerate(indices[j])]
        key = tuple((c == 0, c + t == f) for c, t, f in zip(starts, grid.tile, full, strict=True))
        if key not in weights:
            w = np.ones((), dtype=np.float32)
            for axis, i in enumerate(indices[j]):
                w = np.multiply.outer(w, grid.axis_weight(axis, i).astype(np.float32))
            weights[key] = w
        return weights[key]

    acc = _accumulate(outputs, corners, tile, batch_size, region, sample.shape[0], tile_weight)
    crop = tuple(
        slice(lo + grid.before[a] - origin[a], hi + grid.before[a] - origin[a]) for a, (lo, hi) in enumerate(block.core)
    )
    # divided in place, axis by axis as predict_tiled does: no second region-sized array (the
    # caller still holds the sample), and no core-sized weight array either
    core = acc[(slice(None), *crop)]
    for axis, sl in enumerate(crop):
        total = axis_sums[axis][sl].astype(np.float32)
        if np.any(total != 1.0):
            shape = [1] * core.ndim
            shape[axis + 1] = -1
            core /= total.reshape(shape)
    return core


class SlabFeed:
    """A block's sample filled slab by slab along the first spatial axis on a background thread.

    Reading, decompressing and normalising a block takes seconds in which the engine would sit
    idle; fed this way, :func:`predict_block` (given :meth:`wait`) starts on the first rows while
    the rest is read. Use as a context manager: leaving it stops the thread (also when the
    prediction failed) and re-raises what the reading raised.

    Parameters
    ----------
    shape
        ``(C, *region)`` of the sample.
    bounds
        ``(start, stop)`` row ranges along the first spatial axis, in order, covering the region.
    read
        ``read(start, stop)`` returns rows ``[start, stop)`` as ``(C, stop - start, ...)`` float32,
        ready to use (normalised).
    """

    def __init__(
        self, shape: Sequence[int], bounds: Sequence[tuple[int, int]], read: Callable[[int, int], np.ndarray]
    ) -> None:
        import threading

        self.sample = np.empty(tuple(shape), dtype=np.float32)
        self._bounds = list(bounds)
        self._read = read
        self._filled = 0
        self._error: BaseException | None = None
        self._stop = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._fill, name="ebai-slab-feed", daemon=True)

    def __enter__(self) -> SlabFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._ready:
            self._stop = True
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error

    def _fill(self) -> None:
        try:
            for start, stop in self._bounds:
                if self._stop:
                    return
                self.sample[:, start:stop] = self._read(start, stop)
                with self._ready:
                    self._filled = stop
                    self._ready.notify_all()
        except BaseException as exc:  # handed to the waiting thread
            with self._ready:
                self._error = exc
                self._ready.notify_all()

    def wait(self, stop: int) -> None:
        """Return once rows ``[0, stop)`` are filled; raise what the reading raised."""
        with self._ready:
            while self._filled < min(stop, self.sample.shape[1]) and self._error is None:
                self._ready.wait()
            if self._error is not None:
                raise self._error


def slab_bounds(start: int, stop: int, chunk: int, least: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` cut into slabs of at least ``least`` rows ending on multiples of ``chunk``.

    Relative to ``start``. Slabs end on storage chunk borders (image coordinates), so no chunk is
    decompressed twice.
    """
    chunk = max(1, int(chunk))
    step = chunk * max(1, -(-int(least) // chunk))
    cuts = [start, *range((start // step + 1) * step, stop, step), stop]
    return [(a - start, b - start) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def image_statistics(
    read: Callable[[tuple[slice, ...]], np.ndarray],
    shape: Sequence[int],
    channels: int,
    normalization: Normalization,
    *,
    max_voxels: int = 1 << 24,
    threads: int = 1,
    align: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``lo``/``hi`` of :meth:`Normalization.rescale` over a whole image read in slabs.

    ``minmax`` and ``zscore`` are exact (slabs summed in float64 and merged in order, so the result
    does not depend on ``threads``). ``percentile`` is exact for images of at most ``max_voxels``
    voxels per channel; larger images use every k-th plane along the first spatial axis, about
    ``max_voxels`` voxels, since exact percentiles need the whole image sorted.

    Parameters
    ----------
    read
        Reads one spatial region as ``(C, *region)`` float32; called from ``threads`` threads at once.
    shape
        Spatial shape of the image.
    channels
        Number of channels.
    normalization
        The normalisation to compute statistics for.
    max_voxels
        Voxels per channel held at once per thread (slab size, and the percentile sample).
    threads
        Slabs read and reduced at once (decompression and numpy release the GIL).
    align
        Storage chunk length along the first spatial axis: slabs are whole multiples of it, so no
        chunk is decompressed twice.
    """
    from concurrent.futures import ThreadPoolExecutor

    shape = tuple(int(s) for s in shape)
    if normalization.kind == "none":
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)
    plane = math.prod(shape[1:])
    align = max(1, int(align))
    step = max(1, max_voxels // max(plane, 1) // align) * align
    rest = tuple(slice(0, s) for s in shape[1:])
    if normalization.kind == "percentile":
        stride = max(1, -(-math.prod(shape) // max_voxels))
        data = read((slice(0, shape[0], stride), *rest))
        return normalization.statistics(data)
    minmax = normalization.kind == "minmax"

    def reduce(z: int) -> tuple[int, np.ndarray, np.ndarray]:
        slab = read((slice(z, min(z + step, shape[0])), *rest)).reshape(channels, -1)
        if minmax:
            return 0, slab.min(axis=1).astype(np.float64), slab.max(axis=1).astype(np.float64)
        mean = slab.mean(axis=1, dtype=np.float64)
        mean32 = mean.astype(np.float32)
        dev = slab - mean32[:, None]  # one float32 temporary, squared in place, summed in float64
        np.square(dev, out=dev)
        n = slab.shape[1]
        # sum((x - mean)^2) = sum((x - mean32)^2) - n (mean - mean32)^2
        m2 = dev.sum(axis=1, dtype=np.float64) - n * (mean - mean32.astype(np.float64)) ** 2
        return n, mean, m2

    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(reduce, range(0, shape[0], step)))
    if minmax:
        lo = np.min([p[1] for p in parts], axis=0)
        hi = np.max([p[2] for p in parts], axis=0)
        return lo.astype(np.float32), hi.astype(np.float32)
    count = 0
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    for n, slab_mean, slab_m2 in parts:  # Chan et al.'s pairwise merge, in slab order
        delta = slab_mean - mean
        total = count + n
        mean = mean + delta * n / total
        m2 = m2 + slab_m2 + delta**2 * count * n / total
        count = total
    lo32 = mean.astype(np.float32)
    return lo32, lo32 + np.sqrt(m2 / count).astype(np.float32)
