"""A 3D label-free prediction network in the style of fnet (Ounkomol et al., Nature Methods 2018).

fnet is a U-Net whose every level runs two 3x3x3 convolutions with batch norm and ReLU, goes down
with a 2x2x2 convolution of stride 2 and up with a 2x2x2 transposed convolution, and doubles its
channels per level. This is the same design, smaller (fewer levels and channels) so that its
weights ship inside the package; it is imported only when the label-free task builds its network.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FNet3D"]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class _Level(nn.Module):
    """One level of the U: two convolutions, then (above the bottom) down, recurse, up, merge."""

    def __init__(self, c_in: int, c_out: int, depth: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(c_in, c_out), _conv_bn_relu(c_out, c_out))
        self.depth = depth
        if depth > 0:
            self.down = nn.Sequential(
                nn.Conv3d(c_out, 2 * c_out, 2, stride=2, bias=False), nn.BatchNorm3d(2 * c_out), nn.ReLU(inplace=True)
            )
            self.sub = _Level(2 * c_out, 2 * c_out, depth - 1)
            self.up = nn.Sequential(
                nn.ConvTranspose3d(2 * c_out, c_out, 2, stride=2, bias=False),
                nn.BatchNorm3d(c_out),
                nn.ReLU(inplace=True),
            )
            self.merge = nn.Sequential(_conv_bn_relu(2 * c_out, c_out), _conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the level on ``(N, C, Z, Y, X)``; every spatial size a multiple of ``2**depth``."""
        skip = self.convs(x)
        if self.depth == 0:
            return skip
        deep = self.up(self.sub(self.down(skip)))
        return self.merge(torch.cat([skip, deep], dim=1))


class FNet3D(nn.Module):
    """fnet-style 3D U-Net mapping a transmitted-light volume to a fluorescence volume.

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input (transmitted light) and output (predicted fluorescence).
    base
        Channels of the top level; each level below doubles them.
    depth
        Number of down/up steps; every spatial size fed must be a multiple of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.body = _Level(in_channels, base, depth)
        self.head = nn.Conv3d(base, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``(N, out_channels, Z, Y, X)`` from ``(N, in_channels, Z, Y, X)``."""
        return self.head(self.body(x))
