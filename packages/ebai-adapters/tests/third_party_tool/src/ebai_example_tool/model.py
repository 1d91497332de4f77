"""The tool's own network: a residual 2D denoiser (what the tool ships, independent of ebai)."""

from __future__ import annotations

import torch
from torch import nn


class Denoiser(nn.Module):
    """Predicts the noise and subtracts it (residual learning, as DnCNN does)."""

    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the denoised image."""
        return x - self.body(x)


def build_denoiser(width: int = 16, depth: int = 3) -> Denoiser:
    """Build the tool's denoiser."""
    return Denoiser(width, depth)
