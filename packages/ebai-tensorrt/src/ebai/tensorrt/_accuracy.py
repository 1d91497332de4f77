"""Scoring a lowered ONNX on the CPU, and the order in which int8 layers are released to float.

Used by :meth:`TensorRTBackend.lower_with_accuracy_control`: the QDQ file's numerics are what a
strongly typed TensorRT engine follows, so ONNX Runtime on the CPU scores it before any GPU is
involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ebai.core.errors import MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.core.interfaces import Metric
from ebai.tensorrt._qdq import describe_qdq

__all__ = ["release_order", "run_onnx", "score_onnx"]


def run_onnx(path: Path, batch: np.ndarray, threads: int = 2) -> np.ndarray:
    """Run an ONNX file on one batch with ONNX Runtime's CPU provider (float32 out)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        msg = f"scoring a lowered model needs onnxruntime ({exc}): {install_line('tensorrt-lowering')}"
        raise MissingDependencyError(msg) from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0], dtype=np.float32)


def score_onnx(path: Path, validation: Sequence[tuple[np.ndarray, np.ndarray]], metric: Metric) -> float:
    """``metric(candidate, reference)`` over all validation pairs at once (outputs concatenated)."""
    outs = [run_onnx(path, inp) for inp, _ in validation]
    refs = [np.asarray(ref, dtype=np.float32) for _, ref in validation]
    return float(metric(np.concatenate(outs), np.concatenate(refs)))


def release_order(qdq_path: Path) -> list[str]:
    """Quantized weighted layers in the order they are given back to float.

    Transposed convolutions first (TensorRT may lack int8 kernels for them anyway), then the first
    and the last convolution (the usual sensitive ends of a network), then the others from the
    output backwards.
    """
    weights = [w for w in describe_qdq(qdq_path)["weights"] if w["quantized"]]
    names = [w["node"] for w in weights]
    order = [w["node"] for w in weights if w["op"] == "ConvTranspose"]
    convs = [n for n in names if n not in order]
    if convs:
        order.append(convs[0])
        if convs[-1] not in order:
            order.append(convs[-1])
    order += [n for n in reversed(convs) if n not in order]
    return order
