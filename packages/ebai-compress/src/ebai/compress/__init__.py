"""ebai.compress: make a trained network smaller and prove it still does its job.

Structured pruning (Torch-Pruning), label-free fine-tuning by distillation from the original
network, ONNX export with a dynamic batch axis, and :func:`compress`, which runs the whole flow
for every requested backend and writes one verified artifact. Importing this package does not
import torch; each function imports what it needs when called.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebai-compress")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from ebai.compress._distillation import DistillResult, distill
from ebai.compress._onnx_export import ExportResult, export_onnx
from ebai.compress._pipeline import compress
from ebai.compress._pruning import PruneResult, prune
from ebai.compress._recipe import (
    CalibrationSettings,
    ExportSettings,
    FidelitySettings,
    FineTuneSettings,
    PruneSettings,
    QatSettings,
    Recipe,
    SearchSettings,
)

__all__ = [
    "CalibrationSettings",
    "DistillResult",
    "ExportResult",
    "ExportSettings",
    "FidelitySettings",
    "FineTuneSettings",
    "PruneResult",
    "PruneSettings",
    "QatSettings",
    "Recipe",
    "SearchSettings",
    "__version__",
    "compress",
    "distill",
    "export_onnx",
    "prune",
]
