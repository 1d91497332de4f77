"""Shared fixtures: small networks, synthetic images, a test backend on ONNX Runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# the helper modules beside this file (unique names: every package's tests share one process)
sys.path.insert(0, str(Path(__file__).parent))

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the CPU is shared: one thread avoids spin-waiting on a busy core


def smooth_images(n: int, shape: tuple[int, ...], seed: int = 0, channels: int = 1) -> list[np.ndarray]:
    """Smooth random images (Gaussian-blurred noise, unit variance), channels first, float32."""
    rng = np.random.default_rng(seed)
    freqs = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    kernel = np.exp(-2 * (np.pi * 1.5) ** 2 * sum(f**2 for f in freqs))  # Gaussian blur, sigma 1.5 px
    out = []
    for _ in range(n):
        noise = rng.standard_normal((channels, *shape))
        img = np.real(np.fft.ifftn(np.fft.fftn(noise, axes=range(1, noise.ndim)) * kernel, axes=range(1, noise.ndim)))
        img = (img - img.mean()) / (img.std() + 1e-8)
        out.append(img.astype(np.float32))
    return out


@pytest.fixture
def images3d() -> list[np.ndarray]:
    return smooth_images(5, (20, 40, 40), seed=1)


@pytest.fixture
def images2d() -> list[np.ndarray]:
    return smooth_images(5, (80, 80), seed=2)


@pytest.fixture
def images3d_six() -> list[np.ndarray]:
    """Six smooth volumes: four to calibrate and train on once two are held out."""
    return smooth_images(6, (20, 40, 40), seed=1)
