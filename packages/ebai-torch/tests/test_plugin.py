"""The ``torch`` entry point: what ``ebai info`` says the target can use, read without importing torch."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from ebai.core.cli import cli
from ebai.core.hardware import GpuRecord
from ebai.core.plugins import get_backend, get_plugin
from ebai.torch import TorchBackend
from ebai.torch import _plugin as plugin


def _fake_smi(tmp_path, monkeypatch, *lines: str) -> None:
    """Put an ``nvidia-smi`` printing ``lines`` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in lines))
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    plugin.query_gpus.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_gpu_query():
    plugin.query_gpus.cache_clear()
    yield
    plugin.query_gpus.cache_clear()


@pytest.mark.parametrize(
    ("cc", "features"),
    [
        ("6.0", ("fp32", "cuda graphs")),
        ("7.5", ("fp32", "fp16", "torch.compile", "cuda graphs")),
        ("8.0", ("fp32", "tf32", "fp16", "bf16", "torch.compile", "cuda graphs")),
        ("9.0", ("fp32", "tf32", "fp16", "bf16", "torch.compile", "cuda graphs")),
    ],
)
def test_gpu_features_follow_the_compute_capability(cc, features):
    assert plugin.gpu_features(GpuRecord("GPU", cc, "580.65.06")) == features


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        ({"torch": "2.13.0+cpu"}, ("2.13.0+cpu", None)),
        ({"torch": "2.6.0+cu124"}, ("2.6.0+cu124", "12.4")),
        ({"torch": "2.13.0+cu130"}, ("2.13.0+cu130", "13.0")),
        ({"torch": "2.13.0", "nvidia-cuda-runtime-cu12": "12.8.90"}, ("2.13.0", "12.8")),
        ({"torch": "2.13.0+rocm6.2"}, ("2.13.0+rocm6.2", None)),
        ({}, (None, None)),
    ],
)
def test_torch_build_reads_the_cuda_version_from_metadata(monkeypatch, versions, expected):
    def version(name):
        if name in versions:
            return versions[name]
        raise plugin.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(plugin.importlib.metadata, "version", version)
    assert plugin.torch_build() == expected


def test_details_list_every_cuda_device_and_what_the_target_uses(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA H200, 9.0, 580.65.06", "Tesla P100-PCIE-16GB, 6.0, 580.65.06")
    monkeypatch.setattr(plugin, "torch_build", lambda: ("2.13.0+cu130", "13.0"))
    parts = plugin.details().split("; ")
    assert parts[0] == "torch 2.13.0+cu130 (built for CUDA 13.0)"
    assert "cuda:0 NVIDIA H200 (compute 9.0): fp32, tf32, fp16, bf16, torch.compile, cuda graphs" in parts
    assert "cuda:1 Tesla P100-PCIE-16GB (compute 6.0): fp32, cuda graphs" in parts
    monkeypatch.setattr(plugin, "torch_build", lambda: ("2.13.0+cpu", None))
    assert "2 NVIDIA GPU(s) unused: this torch has no CUDA" in plugin.details()


def test_ebai_info_shows_the_torch_target_and_cuda_devices(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, "NVIDIA H200, 9.0, 580.65.06")
    monkeypatch.setattr(plugin, "torch_build", lambda: ("2.13.0+cu130", "13.0"))
    result = CliRunner().invoke(cli, ["info"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:3] == ["torch", "ebai-torch", "available"] for line in lines)
    assert any(
        line.strip() == "cuda:0 NVIDIA H200 (compute 9.0): fp32, tf32, fp16, bf16, torch.compile, cuda graphs"
        for line in lines
    )
    assert any(line.strip() == "cuda:0   NVIDIA H200 (compute 9.0, driver 580.65.06)" for line in lines)


def test_the_entry_point_gives_the_backend():
    spec = get_plugin("ebai.backends", "torch")
    assert spec.package == "ebai-torch" and spec.is_available()
    backend = get_backend("torch")
    assert isinstance(backend, TorchBackend) and backend.lowers_module and backend.available() is None
