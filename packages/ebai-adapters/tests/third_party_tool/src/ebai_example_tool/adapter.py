"""The tool's ebai adapter: its network plus what the network alone lacks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ebai.adapters import Adapter, load_weights
from ebai.core import InputSpec, Normalization, OutputSpec


class DenoiserAdapter(Adapter):
    """The example tool's denoiser: percentile-normalised 2D images, 64x64 tiles, SSIM as metric."""

    name = "example-denoiser"
    path_keys = ("weights",)

    def __init__(self, weights: str | None = None, width: int = 16, tile: int = 64) -> None:
        self.weights = weights
        self.width = int(width)
        self.input_spec = InputSpec(
            axes="bcyx",
            channels=1,
            tile=(tile, tile),
            normalization=Normalization("percentile", low=1.0, high=99.8),
            overlap=0.125,
        )

    @property
    def output_spec(self) -> OutputSpec:
        """One denoised channel."""
        return OutputSpec(axes="bcyx", channels=1)

    def load_module(self) -> Any:
        """Build the tool's network and load its weights (weights_only, through ebai.adapters)."""
        from ebai_example_tool.model import build_denoiser

        net = build_denoiser(self.width)
        if self.weights is not None:
            load_weights(net, self.weights)
        return net.eval()

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Clip to the normalised range the tool displays."""
        return np.clip(np.asarray(output, dtype=np.float32), 0.0, 1.0)

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """SSIM of the denoised image against the reference result."""
        from ebai.core.metrics import ssim

        return {"ssim": ssim(prediction, target, data_range=1.0)}

    def config(self) -> dict[str, Any]:
        """Return the settings that rebuild this adapter."""
        return {"weights": self.weights, "width": self.width, "tile": self.input_spec.tile[0]}
