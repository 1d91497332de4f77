"""A small residual 2D network given to ``ebai compress`` as ``torch_nets.py:small2d`` in the tests,
and the helpers that make and reload it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class Small2D(nn.Module):
    """Convolutions, BatchNorm, a residual add and a transposed convolution: what bioimaging nets use."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        d = self.down(s)
        return self.head(self.up(d + self.body(d)) + s)


def small2d() -> nn.Module:
    """The factory ``ebai compress`` calls."""
    return Small2D()


def smooth_images(n: int, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """``n`` smooth random images (box-filtered noise, zero mean, unit variance), float32."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal(shape)
        for axis in range(len(shape)):
            x = sum(np.roll(x, k, axis=axis) for k in range(-2, 3)) / 5.0
        out.append(((x - x.mean()) / x.std()).astype(np.float32))
    return out


def trained_weights(path: Path) -> Path:
    """Write a state dict of :func:`small2d` with BatchNorm statistics settled on smooth images."""
    torch.manual_seed(0)
    model = small2d().train()
    with torch.no_grad():
        for img in smooth_images(4, (32, 32), seed=5):
            model(torch.from_numpy(img)[None, None].repeat(2, 1, 1, 1))
    torch.save(model.eval().state_dict(), path)
    return path


def original_model(weights: Path) -> nn.Module:
    """The uncompressed network, as ``ebai compress`` read it."""
    model = small2d()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()
