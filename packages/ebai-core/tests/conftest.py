"""Shared fixtures: a clean plugin cache around every test and fake entry points."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from ebai.core import plugins
from ebai.core.manifest import FidelityRecord, Manifest, TargetRecord
from ebai.core.specs import InputSpec, Normalization, OutputSpec


@pytest.fixture(autouse=True)
def _fresh_plugin_cache() -> Iterator[None]:
    # autouse fixtures are set up before (and torn down after) the test's monkeypatch
    plugins.clear_cache()
    yield
    plugins.clear_cache()


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBAI_PROGRESS", "0")


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, dict[str, str]]], None]:
    """Replace entry-point discovery: ``{group: {name: "module:attr"}}``; other groups are empty."""

    def install(table: dict[str, dict[str, str]]) -> None:
        def fake(group: str) -> dict[str, EntryPoint]:
            return {name: EntryPoint(name, value, group) for name, value in table.get(group, {}).items()}

        monkeypatch.setattr(plugins, "_entry_points", fake)
        plugins._load_spec.cache_clear()

    return install


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> Callable[..., types.ModuleType]:
    """Register an importable in-memory module with the given attributes."""

    def make(name: str, **attrs: object) -> types.ModuleType:
        mod = types.ModuleType(name)
        for key, value in attrs.items():
            setattr(mod, key, value)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    return make


@pytest.fixture
def spec2d() -> InputSpec:
    return InputSpec(axes="bcyx", channels=1, tile=(16, 16))


@pytest.fixture
def manifest() -> Manifest:
    fidelity = FidelityRecord(
        pearson=0.995,
        max_abs_error=0.03,
        samples=4,
        metric="pearson",
        threshold=0.99,
        passed=True,
        metrics={"ssim": 0.97},
    )
    target = TargetRecord(
        backend="openvino",
        precision="int8",
        directory="openvino-int8",
        files=("model.xml", "model.bin"),
        entry="model.xml",
        options={"preset": "mixed"},
        record={"openvino": "2026.4.1"},
        calibration={"samples": 8},
        fidelity=fidelity,
    )
    return Manifest(
        name="denoiser",
        input=InputSpec(
            axes="bczyx", channels=1, tile=(8, 32, 32), normalization=Normalization("percentile"), divisor=8
        ),
        output=OutputSpec(axes="bczyx", channels=2),
        targets=(target,),
        reference="reference.onnx",
        source={"adapter": "torch", "config": {"model": "net.py:build"}},
        pruning={"method": "l1", "ratio": 0.5},
        fine_tuning=None,
        versions={"ebai-core": "0.1.0"},
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def write_ome_zarr() -> Callable[..., None]:
    """Write a two-level OME-Zarr image by hand: NGFF ``"0.4"`` (Zarr v2) or ``"0.5"`` (Zarr v3).

    ``axes`` names the axes of ``data`` (``"czyx"``), ``scale`` the pixel size of level 0; the
    last two axes are halved in level 1.
    """

    def write(path: Path, data: np.ndarray, version: str, axes: str, scale: list[float]) -> None:
        import zarr

        group = zarr.open_group(store=str(path), mode="w", zarr_format=3 if version == "0.5" else 2)
        for level in (0, 1):
            f = 2**level
            sub = data[(Ellipsis, slice(None, None, f), slice(None, None, f))]
            chunks = tuple(max(1, s // 2) for s in sub.shape)
            group.create_array(str(level), shape=sub.shape, chunks=chunks, dtype=sub.dtype)[...] = sub
        ms = {
            "axes": [
                {"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", "unit": "micrometer"}
                for a in axes
            ],
            "datasets": [
                {
                    "path": str(level),
                    "coordinateTransformations": [
                        {
                            "type": "scale",
                            "scale": [s * (2**level if i >= len(axes) - 2 else 1) for i, s in enumerate(scale)],
                        }
                    ],
                }
                for level in (0, 1)
            ],
        }
        if version == "0.5":
            group.attrs["ome"] = {"version": "0.5", "multiscales": [ms], "omero": {"channels": []}}
        else:
            group.attrs.update({"multiscales": [{"version": "0.4", **ms}], "omero": {"channels": []}})

    return write
