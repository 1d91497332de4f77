"""Blocks with a halo reproduce whole-image tiling; readers lay regions out as to_sample does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ebai.core.errors import InputError
from ebai.core.imageio import to_sample
from ebai.core.specs import InputSpec, Normalization
from ebai.core.tiling import predict_tiled

pytest.importorskip("zarr")
pytest.importorskip("distributed")

from ebai.core.blocks import (
    SlabFeed,
    block_region,
    choose_block,
    image_statistics,
    output_chunks,
    plan_blocks,
    predict_block,
    slab_bounds,
    tile_grid,
)
from ebai.core.largeio import SampleView, open_image


def position_dependent(batch: np.ndarray) -> np.ndarray:
    """A fake network whose output depends on where a pixel sits in its tile (as zero-padded convs do)."""
    ramp = np.linspace(0.0, 1.0, batch.shape[-1], dtype=np.float32)
    ramp = ramp + np.linspace(0.0, 0.5, batch.shape[-2], dtype=np.float32)[:, None]
    return np.stack([batch[:, 0] * 2 + ramp, batch.sum(1) * 0.5 - ramp], axis=1)


def blocked(image: np.ndarray, tile: tuple[int, ...], block: tuple[int, ...], batch_size: int) -> np.ndarray:
    grid = tile_grid(image.shape[1:], tile, overlap=0.25)
    out = np.full((2, *image.shape[1:]), np.nan, dtype=np.float32)
    for b in plan_blocks(grid, block):
        read, _, _ = block_region(grid, b)
        out[(slice(None), *(slice(lo, hi) for lo, hi in b.core))] = predict_block(
            image[(slice(None), *read)], grid, b, position_dependent, batch_size=batch_size
        )
    return out


@pytest.mark.parametrize(
    ("shape", "tile", "block"),
    [
        ((1, 37, 90, 70), (16, 32, 32), (20, 40, 33)),  # uneven blocks, uneven tile steps
        ((2, 100, 77), (32, 32), (30, 50)),  # 2D, two channels
        ((1, 10, 60, 60), (16, 32, 32), (10, 25, 25)),  # an axis shorter than the tile (padded)
        ((1, 40, 64), (32, 32), (40, 64)),  # one block
    ],
)
def test_blocks_equal_whole_image_tiling(rng, shape, tile, block) -> None:
    image = rng.normal(size=shape).astype(np.float32)
    whole = predict_tiled(image, position_dependent, tile, overlap=0.25, batch_size=3)
    result = blocked(image, tile, block, batch_size=4)
    assert not np.isnan(result).any()
    assert np.abs(result - whole).max() <= 1e-5 * np.ptp(whole)


def test_a_block_with_its_own_grid_would_differ(rng) -> None:
    # why blocks use the whole image's grid: predict_tiled on a haloed block lays other tiles
    image = rng.normal(size=(1, 90, 70)).astype(np.float32)
    whole = predict_tiled(image, position_dependent, (32, 32), overlap=0.25)
    own = predict_tiled(image[:, :60], position_dependent, (32, 32), overlap=0.25)[:, :40]
    assert np.abs(own - whole[:, :40]).max() > 1e-3


def test_blocks_fit_the_memory_budget_with_fewest_tiles() -> None:
    grid = tile_grid((256, 1024, 1024), (32, 128, 128), overlap=0.25)

    def cost(shape: tuple[int, ...]) -> tuple[int, int]:
        blocks = plan_blocks(grid, shape)
        tiles = sum(int(np.prod([i1 - i0 + 1 for i0, i1 in b.tiles])) for b in blocks)
        largest = max(int(np.prod([r.stop - r.start for r in block_region(grid, b)[0]])) for b in blocks)
        return tiles, largest

    block = choose_block(grid, channels=2, budget_bytes=768 << 20)
    tiles, largest = cost(block)
    assert largest * 5 * 2 <= 768 << 20
    assert tiles < cost((64, 256, 256))[0]  # smaller cubes also fit, and run more tiles twice
    assert choose_block(tile_grid((40, 64), (32, 32), overlap=0.25), 2, 1 << 30) == (40, 64)


def test_chosen_block_runs_the_fewest_tiles_of_every_shape_that_fits() -> None:
    # every block shape is tried: lengths whose borders fall where one tile covers the image
    # repeat fewer tiles than the equal splits, and the chooser must find them
    grid = tile_grid((70, 52), (16, 16), overlap=0.25)

    def cost(shape: tuple[int, ...]) -> tuple[int, int]:
        blocks = plan_blocks(grid, shape)
        tiles = sum(int(np.prod([i1 - i0 + 1 for i0, i1 in b.tiles])) for b in blocks)
        largest = max(int(np.prod([r.stop - r.start for r in block_region(grid, b)[0]])) for b in blocks)
        return tiles, largest

    costs = [cost((a, b)) for a in range(1, 71) for b in range(1, 53)]
    for budget_voxels in (800, 1500, 2500):
        tiles, largest = cost(choose_block(grid, channels=2, budget_bytes=budget_voxels * 5 * 2))
        assert largest <= budget_voxels
        assert tiles == min(t for t, region in costs if region <= budget_voxels)


def test_a_block_fed_slab_by_slab_equals_one_read_whole(rng) -> None:
    image = rng.normal(size=(1, 37, 90, 70)).astype(np.float32)
    grid = tile_grid(image.shape[1:], (16, 32, 32), overlap=0.25)
    for b in plan_blocks(grid, (20, 40, 33)):
        read, _, _ = block_region(grid, b)
        region = image[(slice(None), *read)]
        whole = predict_block(region, grid, b, position_dependent, batch_size=4)
        asked: list[int] = []

        def rows(start: int, stop: int, region=region, asked=asked) -> np.ndarray:
            asked.append(stop)
            return region[:, start:stop]

        bounds = slab_bounds(read[0].start, read[0].stop, 8, 8)
        with SlabFeed(region.shape, bounds, rows) as feed:
            fed = predict_block(feed.sample, grid, b, position_dependent, batch_size=4, wait=feed.wait)
        assert np.array_equal(fed, whole)
        assert asked == [stop for _, stop in bounds]  # every slab read once, in order


def test_a_failing_slab_read_stops_the_block_with_its_error(rng) -> None:
    image = rng.normal(size=(1, 37, 90, 70)).astype(np.float32)
    grid = tile_grid(image.shape[1:], (16, 32, 32), overlap=0.25)
    block = plan_blocks(grid, (37, 90, 70))[0]

    def rows(start: int, stop: int) -> np.ndarray:
        if start >= 16:
            msg = "chunk 2.0.0 is damaged"
            raise InputError(msg)
        return image[:, start:stop]

    with pytest.raises(InputError, match="chunk 2.0.0 is damaged"):
        with SlabFeed(image.shape, slab_bounds(0, 37, 8, 8), rows) as feed:
            predict_block(feed.sample, grid, block, position_dependent, wait=feed.wait)

    # and a prediction that fails stops the reading thread instead of leaving it running
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("engine failed")

    feed = SlabFeed(image.shape, slab_bounds(0, 37, 1, 1), lambda a, b: image[:, a:b])
    with pytest.raises(RuntimeError, match="engine failed"), feed:
        predict_block(feed.sample, grid, block, broken, wait=feed.wait)
    assert not feed._thread.is_alive()


def test_slabs_end_on_chunk_borders() -> None:
    assert slab_bounds(0, 144, 32, 32) == [(0, 32), (32, 64), (64, 96), (96, 128), (128, 144)]
    # a region starting inside a chunk: the first slab ends on the next border (image coordinates)
    assert slab_bounds(122, 288, 32, 32) == [(0, 6), (6, 38), (38, 70), (70, 102), (102, 134), (134, 166)]
    assert slab_bounds(0, 100, 1, 30) == [(0, 30), (30, 60), (60, 90), (90, 100)]  # unchunked (NPY)
    assert slab_bounds(0, 10, 64, 32) == [(0, 10)]


@pytest.mark.parametrize(
    ("block", "chunks"),
    [
        ((134, 1024, 1024), (67, 256, 256)),  # the 1 GB benchmark's blocks: 17.5 MB chunks, not 536 MB
        ((134, 538, 1024), (67, 269, 256)),  # the divisor nearest 256 may be above it
        ((167, 1031, 64), (167, 1031, 64)),  # primes have no divisor near the target: kept whole
        ((16, 32, 32), (16, 32, 32)),  # blocks smaller than the targets are one chunk
        ((2000, 2000), (250, 250)),  # 2D: both axes are the plane
    ],
)
def test_output_chunks_divide_blocks(block, chunks) -> None:
    assert output_chunks(block) == chunks
    assert all(b % c == 0 for b, c in zip(block, chunks, strict=True))  # no chunk spans two blocks


@pytest.mark.parametrize("kind", ["percentile", "minmax", "zscore", "none"])
def test_whole_image_statistics_match_in_memory(rng, kind) -> None:
    sample = (rng.gamma(2.0, size=(2, 30, 40, 20)) * [[[[1.0]]], [[[5.0]]]]).astype(np.float32)
    norm = Normalization(kind)

    def read(region):
        return sample[(slice(None), *region)]

    lo, hi = image_statistics(read, sample.shape[1:], 2, norm, max_voxels=2000)  # many slabs
    if kind == "percentile":  # larger than max_voxels: a plane subsample, close but not exact
        lo, hi = image_statistics(read, sample.shape[1:], 2, norm)
    expected = norm.apply(sample)
    assert np.allclose(norm.rescale(sample, lo, hi), expected, atol=1e-5)


def _zarr_array(path: Path, data: np.ndarray, fmt: int, chunks: tuple[int, ...]) -> None:
    import zarr

    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=fmt)
    arr[...] = data


@pytest.mark.parametrize(
    ("layout", "shape", "channels"),
    [("zyx", (12, 20, 18), 1), ("czyx", (2, 12, 20, 18), 2), ("yxc", (20, 18, 2), 2), ("zcyx", (12, 2, 20, 18), 2)],
)
@pytest.mark.parametrize("fmt", ["zarr2", "zarr3", "ome0.4", "ome0.5", "tiff", "npy"])
def test_regions_are_laid_out_as_to_sample(tmp_path, rng, write_ome_zarr, layout, shape, channels, fmt) -> None:
    import tifffile

    data = rng.integers(0, 1000, size=shape).astype(np.uint16)
    ndim = 3 if "z" in layout else 2
    spec = InputSpec("bczyx" if ndim == 3 else "bcyx", channels, (8, 8, 8)[:ndim])
    if fmt.startswith("zarr"):
        path = tmp_path / "a.zarr"
        _zarr_array(path, data, int(fmt[-1]), tuple(max(1, s // 3) for s in shape))
    elif fmt.startswith("ome"):
        path = tmp_path / "a.ome.zarr"
        write_ome_zarr(path, data, fmt[3:], layout, [1.0] * len(shape))
    elif fmt == "tiff":
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, data, tile=(16, 16) if shape[-1] >= 16 and layout != "yxc" else None)
    else:
        path = tmp_path / "a.npy"
        np.save(path, data)
    view = SampleView(open_image(path), spec)
    whole = to_sample(data, spec)
    assert view.shape == whole.shape[1:]
    region = tuple(slice(1, s - 2) for s in view.shape)
    assert np.array_equal(view.read(region), whole[(slice(None), *region)])


def test_ome_zarr_levels_axes_and_scale(tmp_path, rng, write_ome_zarr) -> None:
    data = rng.random((2, 8, 16, 16)).astype(np.float32)
    path = tmp_path / "img.ome.zarr"
    write_ome_zarr(path, data, "0.4", "czyx", [1.0, 2.0, 0.5, 0.5])
    spec = InputSpec("bczyx", 2, (4, 8, 8))
    level1 = SampleView(open_image(path, level=1), spec)
    assert level1.shape == (8, 8, 8)
    assert level1.spatial_names() == ("z", "y", "x")
    assert level1.spatial_scale() == (2.0, 1.0, 1.0)
    assert level1.spatial_units() == ("micrometer",) * 3
    with pytest.raises(InputError, match=r"has 2 resolution level\(s\).*--level 5"):
        open_image(path, level=5)


def test_missing_and_damaged_chunks_are_named(tmp_path, rng, write_ome_zarr) -> None:
    data = rng.random((2, 16, 16)).astype(np.float32)
    path = tmp_path / "img.ome.zarr"
    write_ome_zarr(path, data, "0.4", "cyx", [1.0, 1.0, 1.0])
    spec = InputSpec("bcyx", 2, (8, 8))
    view = SampleView(open_image(path), spec)
    (path / "0" / "0.1.0").unlink()
    with pytest.raises(InputError) as missing:
        view.read((slice(0, 16), slice(0, 16)))
    assert "'0.1.0'" in str(missing.value) and str(path) in str(missing.value) and "\n" not in str(missing.value)
    (path / "0" / "0.0.1").write_bytes(b"not a compressed chunk")
    with pytest.raises(InputError) as damaged:
        view.read((slice(0, 8), slice(0, 16)))
    assert "'0.0.1'" in str(damaged.value) and "damaged" in str(damaged.value) and "\n" not in str(damaged.value)
    assert json.loads((path / ".zattrs").read_text())["multiscales"]


def test_compression_reads_the_centre_of_a_large_image_lazily(tmp_path, rng, write_ome_zarr) -> None:
    from ebai.core.data import ImageFiles

    data = rng.random((1, 40, 64, 72)).astype(np.float32)
    write_ome_zarr(tmp_path / "big.ome.zarr", data, "0.5", "czyx", [1.0, 1.0, 1.0, 1.0])
    np.save(tmp_path / "small.npy", data[0, :8, :16, :16])
    spec = InputSpec("bczyx", 1, (4, 8, 8))
    files = ImageFiles([tmp_path], spec)
    assert [p.name for p in files.paths] == ["big.ome.zarr", "small.npy"]
    crop, small = list(files)
    assert np.array_equal(crop, data[:, 12:28, 16:48, 20:52])  # 4 tiles along each axis, centred
    assert small.shape == (1, 8, 16, 16)


def test_the_install_line_names_the_real_extra() -> None:
    import tomllib

    from ebai.core.largeio import LARGE_INSTALL

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["large"]
    assert LARGE_INSTALL == "pip install 'ebai-core[large]'"
    assert {"dask[array]", "distributed", "zarr", "ome-zarr", "dask-jobqueue"} <= {d.split(">")[0] for d in extra}
