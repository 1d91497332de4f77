"""``TorchModule``: a compressed network handed back to PyTorch code as a ``torch.nn.Module``.

Imported by :func:`ebai.torch.load_module` only (it imports torch at module level, as a
``torch.nn.Module`` subclass must).
"""

from __future__ import annotations

from typing import Any

import torch
from ebai.torch._engine import TorchEngine

__all__ = ["TorchModule"]


class TorchModule(torch.nn.Module):
    """A compressed network as a ``torch.nn.Module``: ``module(x)`` for tensors ``(N, C, *tile)``.

    What a PyTorch tool swaps in for its own network (MONAI's ``sliding_window_inference``
    predictor, a cellpose-style tiling loop): the output has the input's dtype and device, while the
    network runs on the device it was loaded for, in the artifact's precision and the measured
    configuration. For inference only: it holds no parameters and computes no gradients.

    Parameters
    ----------
    engine
        The :class:`~ebai.torch.TorchEngine` to run (from :meth:`ebai.torch.TorchBackend.load`).
    """

    def __init__(self, engine: TorchEngine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the compressed network on ``x`` and return the result in ``x``'s dtype and device."""
        return self.engine.run_tensor(x).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        """Name the stored precision and how it runs here."""
        return f"precision={self.engine.precision!r}, runs={self.engine.execution_precision!r}"

    def close(self) -> None:
        """Release the engine (its GPU memory and captured graphs)."""
        self.engine.close()

    def __enter__(self) -> TorchModule:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
