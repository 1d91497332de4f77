"""The torch side of the cellpose adapter; imported only when a network is built.

cellpose's ``CPnet.forward`` returns ``(flows, style, downsampled)``. ebai exports, prunes and
quantises networks that return one tensor, so :class:`FlowsOnly` wraps the unmodified CPnet and
returns only the flows and cell probability ``(N, 3, Y, X)``. It also feeds the zero channel that
cellpose adds for grayscale images (``channels=[0, 0]``), so a one-channel image goes straight
into the exported model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["FlowsOnly", "architecture_from_state", "build_cpnet"]


class FlowsOnly(nn.Module):
    """Run a cellpose ``CPnet`` and return only its first output (flows and cell probability).

    Parameters
    ----------
    net
        The cellpose network, left as cellpose builds it.
    pad_channels
        Zero channels appended to the input (the network's ``nchan`` minus the image channels).
    """

    def __init__(self, net: nn.Module, pad_channels: int = 0) -> None:
        super().__init__()
        self.net = net
        self.pad_channels = int(pad_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, Y, X)`` images to ``(N, nout, Y, X)`` flows and cell probability."""
        if self.pad_channels:
            zero = x[:, :1] * 0.0
            x = torch.cat([x] + [zero] * self.pad_channels, dim=1)
        return self.net(x)[0]


def architecture_from_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Read ``nbase``, ``nout``, ``sz`` and ``diam_mean`` of a CPnet from its state dict.

    cellpose saves only tensors, so the architecture is recovered from their shapes: the first
    convolution of each down block gives the channel widths, the output convolution ``nout``.
    """
    if "W2" in state:
        msg = "this is a cellpose 4 (Cellpose-SAM) model, which the cellpose adapter does not support: give a cellpose 3 model"
        raise ValueError(msg)
    nbase: list[int] = []
    level = 0
    while f"downsample.down.res_down_{level}.proj.1.weight" in state:
        weight = state[f"downsample.down.res_down_{level}.proj.1.weight"]
        if level == 0:
            nbase.append(int(weight.shape[1]))
        nbase.append(int(weight.shape[0]))
        level += 1
    if not nbase or "output.2.weight" not in state:
        msg = "the weights are not a cellpose CPnet state dict (no downsample/output layers found)"
        raise ValueError(msg)
    out: dict[str, Any] = {
        "nbase": nbase,
        "nout": int(state["output.2.weight"].shape[0]),
        "sz": int(state["downsample.down.res_down_0.conv.conv_0.2.weight"].shape[-1]),
    }
    if "diam_mean" in state:
        out["diam_mean"] = float(state["diam_mean"].reshape(-1)[0])
    return out


def build_cpnet(nbase: Sequence[int], nout: int, sz: int, diam_mean: float) -> nn.Module:
    """Build cellpose's own 2D ``CPnet`` (no mkldnn, so it exports and prunes)."""
    from cellpose.resnet_torch import CPnet

    return CPnet(
        list(nbase), int(nout), int(sz), mkldnn=False, conv_3D=False, max_pool=True, diam_mean=float(diam_mean)
    )
