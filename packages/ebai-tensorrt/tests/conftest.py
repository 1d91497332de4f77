"""Shared fixtures: a small 3D U-Net (BatchNorm, ReLU, ConvTranspose3d, skip concatenations) on 16x32x32
tiles, its ONNX export with a dynamic batch, synthetic smooth calibration/validation volumes, and the
fake TensorRT/CUDA modules of ``fake_gpu.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ebai.core.specs import InputSpec

TILE = (16, 32, 32)
_HERE = Path(__file__).parent


def _load_fakes():
    name = "ebai_tensorrt_test_fake_gpu"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "fake_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fake_gpu = _load_fakes()


def _unet():
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv3d(i, o, 3, padding=1), nn.BatchNorm3d(o), nn.ReLU(),
            nn.Conv3d(o, o, 3, padding=1), nn.BatchNorm3d(o), nn.ReLU(),
        )  # fmt: skip

    class UNet3D(nn.Module):
        def __init__(self, base: int = 8) -> None:
            super().__init__()
            self.e1, self.e2, self.mid = block(1, base), block(base, 2 * base), block(2 * base, 4 * base)
            self.pool = nn.MaxPool3d(2)
            self.up2, self.d2 = nn.ConvTranspose3d(4 * base, 2 * base, 2, stride=2), block(4 * base, 2 * base)
            self.up1, self.d1 = nn.ConvTranspose3d(2 * base, base, 2, stride=2), block(2 * base, base)
            self.head = nn.Conv3d(base, 1, 1)

        def forward(self, x):
            e1 = self.e1(x)
            e2 = self.e2(self.pool(e1))
            mid = self.mid(self.pool(e2))
            d2 = self.d2(torch.cat([self.up2(mid), e2], 1))
            d1 = self.d1(torch.cat([self.up1(d2), e1], 1))
            return self.head(d1)

    torch.manual_seed(0)
    model = UNet3D()
    model.train()
    with torch.no_grad():  # settle the BatchNorm statistics on smooth volumes
        for _ in range(3):
            model(_smooth(torch, 2, seed=None))
    return model.eval()


def _smooth(torch, n: int, seed: int | None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    noise = torch.randn(n, 1, TILE[0] + 4, TILE[1] + 4, TILE[2] + 4, generator=gen)
    return torch.nn.functional.avg_pool3d(noise, 5, stride=1) * 3.0


@pytest.fixture(scope="session")
def torch_unet():
    torch = pytest.importorskip("torch", reason="the U-Net test model is built and exported with torch")
    torch.set_num_threads(2)
    return _unet()


@pytest.fixture(scope="session")
def unet_onnx(torch_unet, tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("unet") / "reference.onnx"
    x = torch.zeros(1, 1, *TILE)
    torch.onnx.export(
        torch_unet,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
        dynamo=True,
        external_data=False,
    )
    return path


@pytest.fixture(scope="session")
def spec() -> InputSpec:
    return InputSpec(axes="bczyx", channels=1, tile=TILE)


@pytest.fixture(scope="session")
def calibration() -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    return [_smooth(torch, 4, seed=s).numpy() for s in (1, 2, 3)]


@pytest.fixture(scope="session")
def held_out(torch_unet) -> tuple[np.ndarray, np.ndarray]:
    """Inputs not used for calibration and the torch model's outputs for them."""
    import torch

    x = _smooth(torch, 4, seed=99)
    with torch.no_grad():
        y = torch_unet(x)
    return x.numpy(), y.numpy()


@pytest.fixture
def fake_state(monkeypatch) -> fake_gpu.FakeState:
    """A fake GPU with fake TensorRT and cuda-python installed in ``sys.modules``."""
    state = fake_gpu.FakeState()
    fake_gpu.install(monkeypatch, state)
    return state


@pytest.fixture(autouse=True)
def _ebai_debug_logs(caplog):
    """Capture ebai's debug logs whatever an earlier test (a CLI run) set the levels to."""
    import logging

    caplog.set_level(logging.DEBUG, logger="ebai")


@pytest.fixture(autouse=True)
def _private_user_cache(monkeypatch, tmp_path):
    """Each test's own user cache: engines recorded as built there are that test's alone."""
    monkeypatch.setenv("EBAI_CACHE_DIR", str(tmp_path / "user-cache"))
