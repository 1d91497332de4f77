"""The N-D sliding-window tiler: equivalence, borders, padding, batching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from ebai.core.errors import InputError
from ebai.core.interfaces import Engine
from ebai.core.tiling import BLEND_RTOL, BLENDINGS, PAD_MODES, blend_bytes, predict_tiled, tile_starts


def box_filter(batch: np.ndarray, radius: int = 1) -> np.ndarray:
    """A local 'network': mean over a (2r+1)^d window per channel, zero padding at the tile edge."""
    spatial = batch.ndim - 2
    pad = [(0, 0), (0, 0)] + [(radius, radius)] * spatial
    padded = np.pad(batch, pad)
    out = np.zeros(batch.shape, dtype=np.float32)
    width = 2 * radius + 1
    for offset in np.ndindex(*(width,) * spatial):
        region = tuple(slice(o, o + s) for o, s in zip(offset, batch.shape[2:], strict=True))
        out += padded[(slice(None), slice(None), *region)]
    return out / np.float32(width**spatial)


def two_channel(batch: np.ndarray) -> np.ndarray:
    """A non-trivial map to two output channels."""
    conv = box_filter(batch)
    return np.concatenate([conv.sum(axis=1, keepdims=True), 2 * batch[:, :1] + 1], axis=1)


class Recorder:
    """A callable that records the batch shapes it sees."""

    def __init__(self, fn=lambda b: b) -> None:
        self.fn = fn
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32
        self.shapes.append(batch.shape)
        return self.fn(batch)


def safe_mask(shape: tuple[int, ...], tile: tuple[int, ...], overlap: float, radius: int) -> np.ndarray:
    """Pixels every covering tile sees at least ``radius`` away from its edges inside the image."""
    axes = []
    for size, t in zip(shape, tile, strict=True):
        ok = np.ones(size, dtype=bool)
        for s in tile_starts(size, t, overlap):
            x = np.arange(s, s + t)
            bad = np.zeros(t, dtype=bool)
            if s > 0:
                bad |= x - s < radius
            if s + t < size:
                bad |= s + t - 1 - x < radius
            ok[x[bad]] = False
        axes.append(ok)
    mask = axes[0]
    for a in axes[1:]:
        mask = np.multiply.outer(mask, a)
    return mask


@pytest.mark.parametrize("shape", [(2, 24, 40), (1, 8, 12, 16)])
def test_single_tile_equals_direct_call(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    image = rng.normal(size=shape).astype(np.float32)
    direct = two_channel(image[None])[0]
    for blending in BLENDINGS:
        out = predict_tiled(image, two_channel, shape[1:], blending=blending)
        assert out.dtype == np.float32
        assert np.array_equal(out, direct)


@pytest.mark.parametrize(
    ("shape", "tile"),
    [((1, 37, 50), (16, 16)), ((3, 64, 33), (32, 16)), ((1, 17, 29, 31), (8, 16, 16)), ((2, 9, 40, 21), (4, 8, 8))],
)
@pytest.mark.parametrize("blending", BLENDINGS)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.6])
def test_identity_reproduces_input_to_the_documented_tolerance(
    rng: np.random.Generator, shape: tuple[int, ...], tile: tuple[int, ...], blending: str, overlap: float
) -> None:
    image = rng.normal(size=shape).astype(np.float32) * 1000
    out = predict_tiled(image, lambda b: b, tile, overlap=overlap, blending=blending, batch_size=3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=BLEND_RTOL, atol=0)


def test_blending_holds_no_float64_or_weight_image(rng: np.random.Generator) -> None:
    """The in-memory path allocates the output alone on top of the float32 input (about 2x, not 8x)."""
    import tracemalloc

    image = rng.normal(size=(1, 64, 512, 512)).astype(np.float32)  # 64 MiB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = predict_tiled(image, lambda b: b * 2, (16, 64, 64), overlap=0.25, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == image.shape
    # the float32 output plus tile-sized buffers (a batch, up to 27 cached 3D tile weights, ~9 MiB
    # here); the float64 accumulator, weight sum and quotient that were here before took 7x the image
    assert blend_bytes(image.shape, 1) == 2 * image.nbytes
    assert peak <= 1.25 * image.nbytes, peak


@pytest.mark.parametrize(("shape", "tile"), [((1, 70, 45), (24, 24)), ((1, 22, 40, 37), (10, 16, 16))])
@pytest.mark.parametrize("blending", BLENDINGS)
def test_local_operation_matches_direct_application(
    rng: np.random.Generator, shape: tuple[int, ...], tile: tuple[int, ...], blending: str
) -> None:
    image = rng.random(size=shape).astype(np.float32)
    direct = box_filter(image[None])[0]
    out = predict_tiled(image, box_filter, tile, overlap=0.5, blending=blending)
    mask = safe_mask(shape[1:], tile, 0.5, radius=1)
    assert mask.mean() > 0.4  # a large part of the image, its borders included
    np.testing.assert_allclose(out[0][mask], direct[0][mask], rtol=BLEND_RTOL, atol=0)
    # the seams differ only by the tile-edge error of the filter, down-weighted by the blending
    assert np.max(np.abs(out - direct)) < 0.5


@pytest.mark.parametrize(("shape", "tile"), [((2, 50, 41), (16, 16)), ((1, 13, 30, 27), (8, 16, 8))])
def test_batch_size_does_not_change_the_result(rng: np.random.Generator, shape, tile) -> None:
    image = rng.normal(size=shape).astype(np.float32)
    one = Recorder(two_channel)
    three = Recorder(two_channel)
    out1 = predict_tiled(image, one, tile, batch_size=1)
    out3 = predict_tiled(image, three, tile, batch_size=3)
    assert np.array_equal(out1, out3)
    assert {s[0] for s in one.shapes} == {1}
    assert max(s[0] for s in three.shapes) == 3
    assert sum(s[0] for s in one.shapes) == sum(s[0] for s in three.shapes)
    assert out1.shape == (2, *shape[1:])


@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize(("shape", "tile"), [((1, 5, 7), (16, 16)), ((2, 3, 20, 1), (8, 8, 8)), ((1, 1, 1), (4, 4))])
def test_image_smaller_than_tile(rng: np.random.Generator, shape, tile, pad_mode: str) -> None:
    image = rng.normal(size=shape).astype(np.float32)
    rec = Recorder()
    out = predict_tiled(image, rec, tile, pad_mode=pad_mode)
    assert all(s[2:] == tile for s in rec.shapes)
    np.testing.assert_allclose(out, image, rtol=BLEND_RTOL, atol=0)  # several tiles along the 20-long axis


def test_divisor_rounds_the_tile_up(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 37, 45)).astype(np.float32)
    rec = Recorder(lambda b: b * 3)
    out = predict_tiled(image, rec, (20, 20), divisor=8)
    assert {s[2:] for s in rec.shapes} == {(24, 24)}
    assert out.shape == image.shape
    assert np.allclose(out, image * 3, rtol=1e-6)


def test_odd_sizes_3d_cover_every_voxel(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 11, 23, 19)).astype(np.float32)
    rec = Recorder(lambda b: np.ones_like(b))
    out = predict_tiled(image, rec, (4, 8, 8), overlap=0.0, blending="gaussian", divisor=4)
    # every voxel covered with a positive weight: no NaN, no division by zero at the borders
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np.ones_like(image), rtol=BLEND_RTOL, atol=0)


@pytest.mark.parametrize("blending", BLENDINGS)
@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.5, 0.9])
def test_weights_never_vanish(blending: str, overlap: float) -> None:
    image = np.zeros((1, 33, 47), dtype=np.float32)
    out = predict_tiled(image, lambda b: np.full_like(b, 5.0), (8, 12), overlap=overlap, blending=blending)
    assert np.all(np.isfinite(out))
    assert np.allclose(out, 5.0, rtol=1e-6)


def test_tile_starts() -> None:
    assert tile_starts(32, 32, 0.25) == [0]
    starts = tile_starts(100, 32, 0.25)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:], strict=False))  # overlap >= 8 pixels
    assert tile_starts(33, 32, 0.0) == [0, 1]
    with pytest.raises(InputError):
        tile_starts(10, 32, 0.25)


class CountingEngine(Engine):
    backend = "fake"
    precision = "fp32"

    def __init__(self) -> None:
        self.many_calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return batch * 2

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        self.many_calls += 1
        yield from super().infer_many(batches)


def test_engine_infer_many_is_used(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 40, 40)).astype(np.float32)
    with CountingEngine() as engine:
        out = predict_tiled(image, engine, (16, 16), progress_desc="tiles")
    assert engine.many_calls == 1
    assert np.allclose(out, image * 2, rtol=1e-6)


def test_bad_model_output_is_reported(rng: np.random.Generator) -> None:
    image = rng.normal(size=(1, 40, 40)).astype(np.float32)
    with pytest.raises(InputError, match="the model returned shape"):
        predict_tiled(image, lambda b: b[..., :8], (16, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile": (16,)}, "one size per spatial axis"),
        ({"tile": (16, 16), "overlap": 1.0}, "overlap"),
        ({"tile": (16, 16), "blending": "cosine"}, "blending"),
        ({"tile": (16, 16), "pad_mode": "wrap"}, "pad mode"),
        ({"tile": (16, 16), "batch_size": 0}, "batch size"),
        ({"tile": (0, 16)}, "positive"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    image = np.zeros((1, 20, 20), dtype=np.float32)
    tile = kwargs.pop("tile")
    with pytest.raises(InputError, match=match):
        predict_tiled(image, lambda b: b, tile, **kwargs)


def test_image_without_channel_axis_is_refused() -> None:
    with pytest.raises(InputError, match="channels first"):
        predict_tiled(np.zeros(10, dtype=np.float32), lambda b: b, (4,))
