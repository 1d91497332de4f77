"""Shared fixtures: a clean plugin cache around every test and fake entry points."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint

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
