"""A small residual 2D network given to ``ebai compress`` as ``torch_nets.py:small2d`` in the tests."""

from __future__ import annotations

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
