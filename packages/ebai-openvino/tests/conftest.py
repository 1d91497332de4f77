"""Fixtures of the ebai-openvino tests: small seeded U-Nets, their ONNX files and artifacts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("EBAI_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).parent))

TILE_3D = (16, 32, 32)


def _nets() -> Any:
    """The torch-based helpers; tests needing them are skipped where torch is not installed."""
    pytest.importorskip("torch")
    import openvino_nets

    return openvino_nets


@pytest.fixture(scope="session")
def plain_unet() -> Any:
    """The regression net: BatchNorm, ReLU, ConvTranspose, skip concatenations (seeded)."""
    nets = _nets()
    nets.torch.manual_seed(0)
    return nets.settle(nets.PlainUNet(), (4, 1, *TILE_3D))


@pytest.fixture(scope="session")
def monai_unet() -> Any:
    """A small MONAI UNet with residual units (PReLU, strided and transposed convolutions, BatchNorm)."""
    pytest.importorskip("monai")
    from monai.networks.nets import UNet

    nets = _nets()
    nets.torch.manual_seed(1)
    net = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=2,
        norm="batch",
    )
    return nets.settle(net, (4, 1, *TILE_3D))


@pytest.fixture(scope="session")
def spec_3d() -> Any:
    from ebai.core import InputSpec

    return InputSpec("bczyx", 1, TILE_3D, divisor=4, overlap=0.25)


@pytest.fixture(scope="session")
def calibration_3d() -> list[np.ndarray]:
    """Eight calibration samples in batches of two (as ebai.compress hands them over)."""
    return [_nets().smooth_noise((2, 1, *TILE_3D), 100 + i) for i in range(4)]


@pytest.fixture(scope="session")
def held_out_3d() -> np.ndarray:
    """Three samples never used for calibration."""
    return _nets().smooth_noise((3, 1, *TILE_3D), 999)


@pytest.fixture(scope="session")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str, np.ndarray], Path]:
    cache: dict[str, Path] = {}

    def make(net: Any, name: str, example: np.ndarray) -> Path:
        if name not in cache:
            cache[name] = _nets().export(net, tmp_path_factory.mktemp(name) / "reference.onnx", example)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def plain_artifact(
    tmp_path_factory: pytest.TempPathFactory,
    plain_unet: Any,
    spec_3d: Any,
    calibration_3d: list[np.ndarray],
    onnx_file: Any,
) -> Path:
    """Artifact of the plain U-Net with openvino:fp32 and openvino:int8 targets (every layer int8)."""
    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    path = tmp_path_factory.mktemp("artifacts") / "plain.ebai"
    return _nets().build_artifact(
        path,
        onnx_path,
        spec_3d,
        [("fp32", {}), ("int8", {"preset": "mixed", "layer_precision": "int8"})],
        calibration_3d,
    )
