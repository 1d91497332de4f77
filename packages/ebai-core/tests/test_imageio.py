"""Image listing, reading, layout conversion, atomic TIFF writing, and the data sources."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ebai.core import imageio
from ebai.core.data import ArraySource, ImageFiles
from ebai.core.errors import InputError, MissingDependencyError, OutputExistsError
from ebai.core.imageio import list_images, read_image, to_sample, write_tiff
from ebai.core.interfaces import DataSource
from ebai.core.specs import InputSpec


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    tifffile.imwrite(root / "b.tif", np.zeros((8, 8), dtype=np.uint16))
    tifffile.imwrite(root / "A.TIFF", np.ones((8, 8), dtype=np.uint16))
    np.save(root / "c.npy", np.full((8, 8), 2, dtype=np.float32))
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    tifffile.imwrite(root / "sub" / "d.tif", np.full((8, 8), 3, dtype=np.uint16))
    return root


def test_list_images_folder_is_sorted_and_flat(folder: Path) -> None:
    assert [p.name for p in list_images([folder])] == ["A.TIFF", "b.tif", "c.npy"]


def test_list_images_globs_files_and_duplicates(folder: Path) -> None:
    found = list_images([str(folder / "**" / "*.tif"), folder / "c.npy", folder / "b.tif"])
    assert [p.name for p in found] == ["b.tif", "d.tif", "c.npy"]  # inputs in order, each once
    assert list_images(folder / "c.npy") == [folder / "c.npy"]


def test_list_images_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_images([folder / "missing.tif"])
    with pytest.raises(InputError, match="not an image ebai reads"):
        list_images([folder / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        list_images([tmp_path / "empty"])
    with pytest.raises(InputError, match="no images found"):
        list_images([str(folder / "*.png")])


def test_write_and_read_tiff(tmp_path: Path, rng: np.random.Generator) -> None:
    volume = rng.integers(0, 60000, size=(3, 10, 12), dtype=np.uint16)
    path = write_tiff(tmp_path / "out" / "v.tif", volume, axes="ZYX")
    assert np.array_equal(read_image(path), volume)
    with pytest.raises(OutputExistsError):
        write_tiff(path, volume)
    write_tiff(path, volume.astype(np.float32) / 2, overwrite=True, compression="zlib")
    assert np.array_equal(read_image(path), volume.astype(np.float32) / 2)
    assert sorted(os.listdir(path.parent)) == ["v.tif"]
    with pytest.raises(InputError, match="axes"):
        write_tiff(tmp_path / "x.tif", volume, axes="YX")


def test_write_tiff_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.tif"
    write_tiff(path, np.zeros((4, 4), dtype=np.uint8))

    def fail(file, data, **kwargs):
        Path(file).write_bytes(b"II*\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", fail)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(path, np.ones((4, 4), dtype=np.uint8), overwrite=True)
    monkeypatch.undo()
    assert np.array_equal(read_image(path), np.zeros((4, 4), dtype=np.uint8))
    assert os.listdir(tmp_path) == ["p.tif"]


def test_read_npy_and_png(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.random((5, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    assert np.array_equal(read_image(tmp_path / "a.npy"), arr)
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    rgb = rng.integers(0, 255, size=(7, 9, 3), dtype=np.uint8)
    image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "c.png"), rgb)
    gray16 = rng.integers(0, 65535, size=(7, 9)).astype(np.uint16)
    image.fromarray(gray16).save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png"), gray16)


def test_png_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependencyError) as info:
        read_image(tmp_path / "x.png")
    assert str(info.value) == "pip install pillow"


def test_read_unsupported(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an image ebai reads"):
        read_image(tmp_path / "x.jpg")


@pytest.mark.parametrize(
    ("axes", "channels", "shape", "expected", "source_axis"),
    [
        ("bcyx", 1, (10, 12), (1, 10, 12), None),  # YX gets a channel axis
        ("bcyx", 1, (1, 1, 10, 12), (1, 10, 12), None),  # extra singleton axes dropped
        ("bcyx", 3, (10, 12, 3), (3, 10, 12), -1),  # YXC (RGB PNG)
        ("bcyx", 2, (2, 10, 12), (2, 10, 12), 0),  # CYX
        ("bczyx", 1, (5, 10, 12), (1, 5, 10, 12), None),  # ZYX
        ("bczyx", 2, (2, 5, 10, 12), (2, 5, 10, 12), 0),  # CZYX
        ("bczyx", 2, (5, 2, 10, 12), (2, 5, 10, 12), 1),  # ZCYX (ImageJ)
        ("bczyx", 2, (5, 10, 12, 2), (2, 5, 10, 12), -1),  # ZYXC
    ],
)
def test_to_sample_layouts(axes, channels, shape, expected, source_axis, rng: np.random.Generator) -> None:
    spec = InputSpec(axes=axes, channels=channels, tile=(4,) * (len(axes) - 2))
    arr = rng.integers(0, 1000, size=shape).astype(np.uint16)
    sample = to_sample(arr, spec)
    assert sample.shape == expected and sample.dtype == np.float32
    if source_axis is None:
        assert np.array_equal(sample.reshape(-1), arr.reshape(-1))
    else:
        assert np.array_equal(sample, np.moveaxis(arr, source_axis, 0))


@pytest.mark.parametrize(
    ("axes", "channels", "shape", "match"),
    [
        ("bcyx", 2, (10, 12), "no channel axis"),
        ("bcyx", 1, (5, 10, 12), "2D images"),
        ("bcyx", 3, (4, 10, 12), "no axis"),
        ("bczyx", 1, (10, 12), "3D images"),
    ],
)
def test_to_sample_errors(axes, channels, shape, match) -> None:
    spec = InputSpec(axes=axes, channels=channels, tile=(4,) * (len(axes) - 2))
    with pytest.raises(InputError, match=match):
        to_sample(np.zeros(shape), spec, what="image 'x.tif'")


def test_image_files_source(folder: Path, spec2d: InputSpec) -> None:
    source = ImageFiles([folder], spec2d)
    assert isinstance(source, DataSource)
    assert len(source) == 3
    samples = list(source)
    assert [float(s.max()) for s in samples] == [1.0, 0.0, 2.0]  # A.TIFF, b.tif, c.npy
    assert all(s.shape == (1, 8, 8) and s.dtype == np.float32 for s in samples)


def test_image_files_names_the_bad_file(tmp_path: Path, spec2d: InputSpec) -> None:
    (tmp_path / "bad.tif").write_bytes(b"this is not a tiff")
    np.save(tmp_path / "ok.npy", np.zeros((8, 8)))
    source = ImageFiles(tmp_path, spec2d)
    with pytest.raises(InputError, match=r"'.*bad\.tif' cannot be read as a TIFF image"):
        list(source)
    np.save(tmp_path / "ok.npy", np.zeros((3, 8, 8)))
    (tmp_path / "bad.tif").unlink()
    with pytest.raises(InputError, match=r"image '.*ok\.npy' has shape \(3, 8, 8\)"):
        list(ImageFiles(tmp_path, spec2d))


def test_array_source(spec2d: InputSpec, rng: np.random.Generator) -> None:
    arrays = [rng.random((1, 8, 8)), rng.random((1, 9, 7))]
    source = ArraySource(arrays)
    assert isinstance(source, DataSource) and len(source) == 2
    assert all(a is b or np.array_equal(a, b) for a, b in zip(source, arrays, strict=True))
    converted = ArraySource([rng.random((8, 8))], spec=spec2d)
    assert converted[0].shape == (1, 8, 8)
    with pytest.raises(InputError, match="array 0"):
        ArraySource([np.zeros(5)])
    with pytest.raises(InputError, match="array 0"):
        ArraySource([np.zeros((2, 8, 8))], spec=spec2d)


def test_suffixes_are_exported() -> None:
    assert set(imageio.IMAGE_SUFFIXES) == {".tif", ".tiff", ".png", ".npy"}
