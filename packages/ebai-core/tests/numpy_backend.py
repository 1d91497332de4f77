"""A backend whose "model" is a small numpy program read from the artifact: out = scale * x + shift.

Lets the core's ``ebai run`` and ``ebai benchmark`` be tested end to end (artifact on disk, plugin
lookup, tiling, writing) without OpenVINO or torch. The parameters live in the artifact's hashed
``params.json``, so the engine only runs what the artifact verifiably holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.interfaces import Engine, Lowering
from ebai.core.plugins import PluginSpec

spec = PluginSpec(name="numpy", package="ebai-core-tests", target="numpy_backend:NumpyBackend")


class NumpyEngine(Engine):
    backend = "numpy"
    precision = "fp32"

    def __init__(self, scale: float, shift: float) -> None:
        self.scale = np.float32(scale)
        self.shift = np.float32(shift)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return (np.asarray(batch, dtype=np.float32) * self.scale + self.shift).astype(np.float32)


class NumpyBackend:
    name = "numpy"

    def load(self, directory: Path, lowering: Lowering, **options: Any) -> NumpyEngine:
        params = json.loads((Path(directory) / lowering.entry).read_text(encoding="utf-8"))
        return NumpyEngine(params["scale"], params["shift"])
