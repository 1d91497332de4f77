"""Small networks of the shapes bioimaging models take, built in the tests (random weights)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _block3(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


def _instance_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(0.1),
    )


class UNet3D(nn.Module):
    """3D U-Net: skip concatenations, transposed convolutions, BatchNorm, in-place ReLU (or ``block``'s layers)."""

    def __init__(
        self, cin: int = 1, cout: int = 1, ch: tuple[int, int, int] = (16, 32, 64), block: Any = _block3
    ) -> None:
        super().__init__()
        self.enc1, self.enc2, self.bottom = block(cin, ch[0]), block(ch[0], ch[1]), block(ch[1], ch[2])
        self.pool = nn.MaxPool3d(2)
        self.up2, self.dec2 = nn.ConvTranspose3d(ch[2], ch[1], 2, stride=2), block(2 * ch[1], ch[1])
        self.up1, self.dec1 = nn.ConvTranspose3d(ch[1], ch[0], 2, stride=2), block(2 * ch[0], ch[0])
        self.head = nn.Conv3d(ch[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def instance_unet3d(seed: int = 0, spread: float = 1.0) -> UNet3D:
    """A :class:`UNet3D` with instance normalisation (as MONAI's BasicUNet), channels 8-16-32.

    Its mid-block channels span ``spread``-fold ranges of values.

    Each block's first normalisation scales its channels by factors log-uniform in
    [1/spread, 1] and the next convolution divides them back out: the same function (LeakyReLU
    commutes with a positive scale), but one per-tensor int8 range must now cover channels of
    very different size, as in trained networks that post-training quantization handles badly.
    """
    torch.manual_seed(seed)
    model = UNet3D(ch=(8, 16, 32), block=_instance_block)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, nn.Sequential) and len(block) == 6:
                scale = torch.exp(-torch.rand(block[1].num_features, generator=g) * math.log(spread))
                block[1].weight.mul_(scale)
                block[1].bias.mul_(scale)
                block[3].weight.div_(scale.view(1, -1, 1, 1, 1))
    return model.eval()


class _Res2(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResUNet2D(nn.Module):
    """2D residual U-Net: residual additions, additive skips, transposed convolutions, BatchNorm."""

    def __init__(self, cin: int = 1, cout: int = 1, ch: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem, self.res1 = nn.Conv2d(cin, ch[0], 3, padding=1), _Res2(ch[0])
        self.down1, self.res2 = nn.Conv2d(ch[0], ch[1], 3, stride=2, padding=1), _Res2(ch[1])
        self.down2, self.res3 = nn.Conv2d(ch[1], ch[2], 3, stride=2, padding=1), _Res2(ch[2])
        self.up2, self.res4 = nn.ConvTranspose2d(ch[2], ch[1], 2, stride=2), _Res2(ch[1])
        self.up1, self.res5 = nn.ConvTranspose2d(ch[1], ch[0], 2, stride=2), _Res2(ch[0])
        self.head = nn.Conv2d(ch[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.res1(self.stem(x))
        b = self.res2(self.down1(a))
        c = self.res3(self.down2(b))
        d = self.res4(self.up2(c) + b)
        e = self.res5(self.up1(d) + a)
        return self.head(e)


class DataDependent(nn.Module):
    """A network whose forward branches on tensor values: it cannot be exported with a graph."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Gate())
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x * 2
        return x


def settle_batchnorm(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, as a trained network has."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape, generator=g))
    return model.eval()


def unet3d(seed: int = 0, ch: tuple[int, int, int] = (16, 32, 64)) -> UNet3D:
    torch.manual_seed(seed)
    return settle_batchnorm(UNet3D(ch=ch), (2, 1, 16, 32, 32), seed)


def resunet2d(seed: int = 0, ch: tuple[int, int, int] = (16, 32, 64)) -> ResUNet2D:
    torch.manual_seed(seed)
    return settle_batchnorm(ResUNet2D(ch=ch), (2, 1, 64, 64), seed)


def small2d() -> ResUNet2D:
    """Factory used by the CLI tests (module.py:factory)."""
    return ResUNet2D(ch=(8, 16, 32))
