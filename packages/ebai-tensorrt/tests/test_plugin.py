"""The plugin spec and its probe (no GPU, old driver, fine), ``ebai info``, and loading through an artifact."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ebai.tensorrt._plugin as plugin
from ebai.core.artifact import Artifact, ArtifactWriter
from ebai.core.errors import BackendUnavailableError
from ebai.core.manifest import Manifest, TargetRecord
from ebai.core.plugins import BACKENDS, get_plugin
from ebai.core.specs import OutputSpec
from ebai.tensorrt import TensorRTBackend
from ebai.tensorrt._accuracy import run_onnx

INSTALL = "pip install 'ebai-tensorrt[cu12]'"


def _fake_smi(tmp_path: Path, monkeypatch, line: str | None) -> None:
    """Put an ``nvidia-smi`` printing ``line`` first on PATH (``None``: no nvidia-smi at all)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    if line is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\necho '{line}'\n")
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + (os.pathsep + os.environ["PATH"] if line is not None else ""))
    plugin.query_gpus.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_gpu_query():
    plugin.query_gpus.cache_clear()
    yield
    plugin.query_gpus.cache_clear()


def test_spec_is_registered_and_light():
    spec = get_plugin(BACKENDS, "tensorrt")
    assert spec is plugin.backend
    assert spec.requires == ("tensorrt",) and spec.install_line.startswith(INSTALL)
    assert spec.target == "ebai.tensorrt._backend:TensorRTBackend"


def test_without_tensorrt_the_spec_says_what_to_install():
    avail = plugin.backend.is_available()
    if "tensorrt" in plugin.backend.missing():
        assert not avail and avail.reason.startswith(f"needs tensorrt: {INSTALL}")
    else:  # a machine with TensorRT installed: the probe decides
        assert avail.ok or avail.reason


def test_probe_no_gpu(fake_state, tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, None)
    reason = plugin.probe()
    assert reason and reason.startswith("no NVIDIA GPU found") and "openvino" in reason


def test_probe_without_cuda_bindings(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cuda", None)
    reason = plugin.probe()
    assert "cuda-python" in reason and INSTALL in reason


@pytest.mark.parametrize(
    ("major", "driver", "ok"),
    [
        (12, "550.54.15", True),
        (12, "470.82.01", False),
        (13, "575.51.03", False),
        (13, "580.65.06", True),
        (None, "470.82.01", True),
    ],
)
def test_probe_driver_against_the_cuda_major(fake_state, tmp_path, monkeypatch, major, driver, ok):
    _fake_smi(tmp_path, monkeypatch, f"NVIDIA A100-SXM4-40GB, 8.0, {driver}")
    monkeypatch.setattr(plugin, "installed_cuda_major", lambda: major)
    monkeypatch.setattr(plugin.sys, "platform", "linux")
    reason = plugin.probe()
    if ok:
        assert reason is None
    else:
        assert f"NVIDIA driver {driver} is too old for TensorRT built for CUDA {major}" in reason
        assert ("ebai-tensorrt[cu12]" in reason) == (major == 13)


def test_query_gpus_parses_nvidia_smi(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA H100 80GB HBM3, 9.0, 570.86.15")
    (gpu,) = plugin.query_gpus()
    assert gpu.describe() == "NVIDIA H100 80GB HBM3 (compute 9.0, driver 570.86.15)"
    assert "GPU NVIDIA H100 80GB HBM3 (compute 9.0, driver 570.86.15)" in plugin.details()


def test_ebai_info_says_tensorrt_is_missing_and_how_to_get_it():
    if "tensorrt" not in plugin.backend.missing():
        pytest.skip("TensorRT is installed here")
    from ebai.core.cli import cli

    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("tensorrt"))
    assert "ebai-tensorrt" in line and f"unavailable: needs tensorrt: {INSTALL}" in line


def test_ebai_info_with_a_gpu_and_tensorrt(fake_state, tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA A100-SXM4-40GB, 8.0, 550.54.15")
    from ebai.core.cli import cli

    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = next(i for i, x in enumerate(lines) if x.strip().startswith("tensorrt"))
    assert "available" in lines[at] and "unavailable" not in lines[at]
    details = lines[at + 1]  # ebai info prints a backend's details on the lines below its row
    assert "TensorRT 10.99.1" in details and "GPU NVIDIA A100-SXM4-40GB (compute 8.0, driver 550.54.15)" in details
    assert "NVIDIA A100-SXM4-40GB (compute 8.0, driver 550.54.15)" in result.output


def test_available_matches_the_spec(fake_state, tmp_path, monkeypatch):
    _fake_smi(tmp_path / "none", monkeypatch, None)
    assert TensorRTBackend().available().startswith("no NVIDIA GPU found")
    _fake_smi(tmp_path / "gpu", monkeypatch, "NVIDIA A100-SXM4-40GB, 8.0, 550.54.15")
    assert TensorRTBackend().available() is None


def test_artifact_load_engine_end_to_end(fake_state, tmp_path, monkeypatch, unet_onnx, spec, calibration, held_out):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA A100-SXM4-40GB, 8.0, 550.54.15")
    path = tmp_path / "denoiser.ebai"
    with ArtifactWriter(path) as writer:
        lowering = TensorRTBackend().lower(
            unet_onnx,
            writer.root / "tensorrt-int8",
            precision="int8",
            input_spec=spec,
            calibration=calibration,
            options={"quantizer": "onnxruntime"},
        )
        target = TargetRecord.from_lowering(lowering, "tensorrt-int8")
        writer.commit(
            Manifest(name="denoiser", input=spec, output=OutputSpec(axes="bczyx", channels=1), targets=(target,))
        )
    artifact = Artifact.open(path)
    x, _ = held_out
    with artifact.load_engine("tensorrt", "int8") as engine:
        y = engine.infer(x)
        assert engine.build_info["source"] == "built"
    np.testing.assert_allclose(y, run_onnx(path / "tensorrt-int8" / lowering.entry, x), rtol=1e-5, atol=1e-5)
    assert list((path / "cache" / "tensorrt").glob("*.engine"))
    reopened = Artifact.open(path)  # the engine cache is not part of the hashed files
    with reopened.load_engine("tensorrt", "int8") as engine:
        assert engine.build_info["source"] == "cache"


def test_get_backend_refuses_without_gpu(fake_state, tmp_path, monkeypatch):
    from ebai.core.plugins import get_backend

    _fake_smi(tmp_path, monkeypatch, None)
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU found"):
        get_backend("tensorrt")
