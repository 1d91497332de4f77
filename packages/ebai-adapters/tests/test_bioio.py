"""OME-Zarr and other bioio formats, read only when such an image is met."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ebai.adapters import BioImageFiles, list_bioimages, read_bioimage
from ebai.core import InputError, InputSpec, MissingDependencyError


def _write_ome_zarr(path: Path, data: np.ndarray) -> None:
    """Write a TCZYX array as a one-level OME-Zarr with bioio-ome-zarr's writer."""
    from bioio_ome_zarr.writers import OMEZarrWriter

    writer = OMEZarrWriter(
        path, level_shapes=[data.shape], dtype=data.dtype, zarr_format=2, axes_names=["t", "c", "z", "y", "x"]
    )
    writer.write_full_volume(data)


@pytest.fixture
def ome_zarr(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pytest.importorskip("bioio_ome_zarr", reason="bioio-ome-zarr is not installed (pip install 'ebai-adapters[bioio]')")
    data = np.random.default_rng(0).integers(0, 4000, size=(2, 2, 3, 16, 20), dtype=np.uint16)
    path = tmp_path / "cells.ome.zarr"
    _write_ome_zarr(path, data)
    return path, data


def test_read_ome_zarr_channels_first(ome_zarr: tuple[Path, np.ndarray]) -> None:
    path, data = ome_zarr
    np.testing.assert_array_equal(read_bioimage(path), data[0])
    np.testing.assert_array_equal(read_bioimage(path, timepoint=1), data[1])
    with pytest.raises(InputError, match="time point 2 does not exist"):
        read_bioimage(path, timepoint=2)


def test_single_plane_drops_z(tmp_path: Path) -> None:
    pytest.importorskip("bioio_ome_zarr")
    data = np.arange(1 * 1 * 1 * 8 * 8, dtype=np.float32).reshape(1, 1, 1, 8, 8)
    _write_ome_zarr(tmp_path / "plane.zarr", data)
    assert read_bioimage(tmp_path / "plane.zarr").shape == (1, 8, 8)


def test_data_source_mixes_zarr_and_tiff(tmp_path: Path, ome_zarr: tuple[Path, np.ndarray]) -> None:
    import tifffile

    path, data = ome_zarr
    folder = path.parent
    tiff = data[0].astype(np.float32)
    tifffile.imwrite(folder / "a.tif", tiff, photometric="minisblack")
    (folder / "notes.txt").write_text("not an image")
    spec = InputSpec(axes="bczyx", channels=2, tile=(2, 8, 8))
    source = BioImageFiles([folder], spec)
    assert [p.name for p in source.paths] == ["a.tif", "cells.ome.zarr"]
    samples = list(source)
    assert len(source) == 2 and all(s.shape == (2, 3, 16, 20) and s.dtype == np.float32 for s in samples)
    np.testing.assert_array_equal(samples[0], samples[1])


def test_listing_errors(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="not an image"):
        list_bioimages(tmp_path / "x.txt")
    with pytest.raises(InputError, match="does not exist"):
        list_bioimages(tmp_path / "missing.zarr")
    with pytest.raises(InputError, match="no images found"):
        list_bioimages(str(tmp_path / "*.czi"))


def test_unreadable_file_names_the_fix(tmp_path: Path) -> None:
    pytest.importorskip("bioio")
    bad = tmp_path / "broken.czi"
    bad.write_bytes(b"not a czi file")
    with pytest.raises(InputError, match="bioio plugin"):
        read_bioimage(bad)


def test_missing_bioio_gives_the_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bioio", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ebai-adapters\[bioio\]'"):
        read_bioimage(tmp_path / "any.ome.zarr")
