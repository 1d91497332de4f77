"""Quantization-aware fine-tuning: int8 for networks that post-training quantization cannot keep.

Post-training int8 fixes every weight and range from a few calibration tiles; when a network's
activations spread over very different ranges from channel to channel, the 256 levels of one
per-tensor range cannot hold them all and no preset or calibration helps. Fine-tuning the
quantized network (NNCF's quantization-aware training for torch models: the FakeQuantize
operations simulate int8 in the forward pass and pass gradients straight through) lets the
weights and the quantizer ranges adapt to int8. No labels are needed: the original network is the
teacher on the user's own images, as in :mod:`ebai.compress._distillation`.

The result leaves as an ONNX file holding QuantizeLinear/DequantizeLinear pairs where NNCF put its
quantizers; a backend that reads such a file (OpenVINO turns the pairs into the FakeQuantize
operations its CPU plugin runs in int8) lowers it without quantizing again, and the accuracy guard
measures what the backend runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebai.compress._distillation import DistillResult, distill
from ebai.compress._onnx_export import ExportResult, export_onnx
from ebai.compress._recipe import FineTuneSettings, QatSettings
from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line

__all__ = ["QatResult", "quantization_aware"]

logger = logging.getLogger("ebai")

#: NNCF compiles a small C++ extension on first use; its own limit (60 s) is too short for a busy
#: machine and, when hit, leaves a lock that makes every later try hang.
_EXTENSION_TIMEOUT = "NNCF_EXTENSION_LOAD_TIMEOUT"


def require_nncf_torch() -> Any:
    """Return the ``nncf`` module with its torch backend, or raise with the pip line."""
    try:
        import nncf
        import nncf.torch
    except ImportError as exc:
        msg = f"quantization-aware training needs NNCF ({exc}): {install_line('qat')}"
        raise MissingDependencyError(msg) from exc
    return nncf


@dataclass(frozen=True)
class QatResult:
    """A quantization-aware fine-tuned network exported as a QDQ ONNX file.

    Attributes
    ----------
    onnx
        The exported file (QuantizeLinear/DequantizeLinear pairs, dynamic batch).
    tuning
        How the fine-tuning went (steps, validation Pearson before and after, wall time).
    preset
        NNCF preset the quantizers were placed with.
    quantizers
        Number of quantizers NNCF inserted.
    """

    onnx: ExportResult
    tuning: DistillResult
    preset: str
    quantizers: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the manifest."""
        tuning = self.tuning.to_dict()
        tuning["method"] = "qat"
        return {
            **tuning,
            "preset": self.preset,
            "quantizers": self.quantizers,
            "onnx": self.onnx.to_dict(),
        }


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    log = logging.getLogger("nncf")
    old = log.level
    if not logging.getLogger("ebai").isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(old)


def _quantizers(model: Any) -> list[Any]:
    from nncf.torch.quantization.layers import BaseQuantizer

    return [m for m in model.modules() if isinstance(m, BaseQuantizer)]


def quantization_aware(
    student: Any,
    teacher: Any,
    images: Sequence[np.ndarray],
    calibration: Sequence[np.ndarray],
    out: Path,
    settings: QatSettings,
    *,
    tile: Sequence[int],
    preset: str = "mixed",
    validation: Sequence[np.ndarray] | None = None,
    opset: int = 18,
    seed: int = 0,
    metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> QatResult:
    """Quantize ``student`` with NNCF, fine-tune it against ``teacher``, and export a QDQ ONNX file.

    Parameters
    ----------
    student
        The fp32 network to make int8 (the original, or its pruned and distilled copy); not
        changed: a copy is quantized.
    teacher
        The original network, whose outputs the int8 network learns to reproduce.
    images
        Preprocessed training images ``(C, *spatial)``; crops of ``tile`` are drawn from them.
    calibration
        Tiles ``(C, *tile)`` that place NNCF's quantizers and set their first ranges.
    out
        Path of the ONNX file to write.
    settings
        Step budget, learning rate, batch size and early stop (the recipe's ``qat`` section).
    tile
        Spatial crop shape.
    preset
        NNCF preset: ``"mixed"`` (asymmetric activations) or ``"performance"`` (symmetric).
    validation
        Fixed tiles for early stopping (never the guard's held-out tiles).
    opset, seed
        ONNX opset of the file; seed of the crops.
    metric
        The guard's metric on output batches: the weights kept are those scoring best on the
        validation tiles (by default, those of the lowest validation loss).

    Returns
    -------
    QatResult
        The ONNX file and how the fine-tuning went.
    """
    import torch

    nncf = require_nncf_torch()
    from nncf.torch.quantization.layers import QuantizerExportMode

    if not calibration:
        msg = "quantization-aware training needs calibration tiles but none were given: give more of your images"
        raise InputError(msg)
    os.environ.setdefault(_EXTENSION_TIMEOUT, "0")
    samples = [torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)[np.newaxis]) for t in calibration]
    network = copy.deepcopy(student).eval()
    logger.info("quantization-aware training: placing int8 quantizers with NNCF (%s preset)", preset)
    try:
        with _quiet_nncf():
            quantized = nncf.quantize(
                network,
                nncf.Dataset(samples),
                preset=nncf.QuantizationPreset(preset),
                target_device=nncf.TargetDevice.CPU,
                subset_size=len(samples),
            )
    except Exception as exc:
        if "extension" in f"{type(exc).__name__} {exc}".lower():
            msg = (
                f"NNCF could not build its C++ extension for int8 training ({type(exc).__name__}): "
                "install a C++ compiler (g++), or leave quantization-aware training off (qat.when: never)"
            )
            raise InputError(msg) from exc
        raise
    tune = FineTuneSettings(
        steps=settings.steps,
        lr=settings.lr,
        batch_size=settings.batch_size,
        eval_every=settings.eval_every,
        patience=settings.patience,
        schedule="cosine",
        vector_lr_scale=10.0,
    )
    tuned = distill(quantized, teacher, images, tune, tile=tile, validation=validation, seed=seed, metric=metric)
    quantizers = _quantizers(tuned.model)
    for q in quantizers:
        q.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    example = samples[0]
    # NNCF's quantizers describe themselves to the TorchScript exporter only; ONNX Runtime rounds
    # zero points to integers where NNCF keeps them real, so the file is held to the guard, not to torch
    exported = export_onnx(
        tuned.model, out, example, opset=opset, exporter="torchscript", rtol=float("inf"), overwrite=True
    )
    return QatResult(onnx=exported, tuning=tuned, preset=preset, quantizers=len(quantizers))
