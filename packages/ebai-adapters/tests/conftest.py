"""Shared fixtures of the ebai-adapters tests: small networks, synthetic images, modest threads."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _modest_threads() -> None:
    """The CPU is shared: two torch threads at most."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def nuclei() -> ModuleType:
    """The synthetic nuclei generator (``nuclei_image(seed, size, count)``)."""
    return _load("ebai_adapters_test_nuclei", FIXTURES / "nuclei.py")


@pytest.fixture(scope="session")
def cellpose_weights() -> Path:
    """A small CPnet (nbase 2-8-16-32) trained on synthetic nuclei by fixtures/train_cellpose_fixture.py."""
    return FIXTURES / "cpnet_nuclei.pt"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def net_file(tmp_path: Path) -> Path:
    """A user's model file with a ``build`` factory (a small 2D conv net, 1 -> 2 channels)."""
    path = tmp_path / "my_net.py"
    path.write_text(
        "import torch\n"
        "from torch import nn\n\n"
        "def build(width=8):\n"
        "    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 2, 1))\n"
    )
    return path
