"""int8 lowering by explicit quantization: a QDQ ONNX that a strongly typed TensorRT engine runs as written.

TensorRT 10 deprecated and TensorRT 11 removed implicit int8 (the INT8 builder flag, calibrators,
per-tensor dynamic ranges). What remains is explicit quantization: QuantizeLinear/DequantizeLinear
pairs in the ONNX, symmetric int8 (zero point 0), weights per output channel, activations per
tensor. This module writes such a file, calibrated on the user's own samples, with one of two
quantizers:

``modelopt``
    NVIDIA ModelOpt's ONNX post-training quantization (``modelopt.onnx.quantization.quantize``),
    which places Q/DQ by TensorRT's own rules. Used when it is installed: it pins onnx and
    onnxruntime-gpu and needs torch, so it cannot be a dependency of this package.
``onnxruntime``
    ONNX Runtime's ``quantize_static`` in QDQ format with the options TensorRT needs (see
    :data:`ORT_EXTRA_OPTIONS`). Always available.

:func:`describe_qdq` reads the placement and parameters back from the file and
:func:`tensorrt_qdq_problems` checks them against what TensorRT accepts, so a bad file is caught on
the CPU rather than at engine build time on a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.errors import BackendUnavailableError, InputError, MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.tensorrt._onnx_io import copy_model, read_io, save_model

__all__ = [
    "CALIBRATION_METHODS",
    "ORT_EXTRA_OPTIONS",
    "QUANTIZERS",
    "describe_qdq",
    "quantize_int8",
    "resolve_quantizer",
    "tensorrt_qdq_problems",
]

logger = logging.getLogger("ebai")

QUANTIZERS = ("auto", "modelopt", "onnxruntime")
#: Calibration methods each quantizer offers (``minmax`` and ``max`` name the same method). ONNX
#: Runtime's ``Entropy`` is left out: ``quantize_static`` does not pass its bin counts, and with the
#: defaults (128 histogram bins into 128 quantized bins) it returns the min-max range (identical
#: scales, measured on the test U-Net).
CALIBRATION_METHODS = {"onnxruntime": ("minmax", "percentile"), "modelopt": ("minmax", "entropy")}

#: ONNX Runtime ``quantize_static`` options for a TensorRT-ready QDQ file, and why.
ORT_EXTRA_OPTIONS: Mapping[str, Any] = {
    # TensorRT's int8 is symmetric: every zero point must be 0.
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    # Biases stay float: TensorRT has no int32 DequantizeLinear and folds the bias itself.
    "QuantizeBias": False,
    # Float weights followed by Q/DQ, the form TensorRT quantizes at build time (and ModelOpt writes).
    "AddQDQPairToWeight": True,
    # One Q/DQ pair per consumer, so each branch of a skip connection can fuse with its own layer.
    "DedicatedQDQPair": True,
    # Keep ReLU explicit; ONNX Runtime would otherwise fold it into the scale, which TensorRT does not.
    "QDQKeepRemovableActivations": True,
    # Quantize the inputs of weighted layers, not their outputs (TensorRT's Q/DQ placement advice, and
    # what ModelOpt does): TensorRT fuses bias and ReLU into the convolution and quantizes at the next
    # layer's input. On the test U-Net this also lifts Pearson vs torch from 0.9967 to 0.9989.
    "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "Gemm", "MatMul"],
}
# The per-channel axis needs no option: ONNX Runtime's QDQ Conv quantizer takes axis 0 for Conv and
# axis 1 for ConvTranspose (whose weight is ``C_in x C_out/group x k...``); tensorrt_qdq_problems checks it.

#: Operators whose second input is a weight quantized per output channel, and that channel's axis.
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


def _has_modelopt() -> bool:
    try:
        return importlib.util.find_spec("modelopt") is not None
    except (ImportError, ValueError):
        return False


def resolve_quantizer(quantizer: str) -> str:
    """Return the quantizer that ``quantizer`` stands for here: ``auto`` is modelopt when installed, else onnxruntime."""
    if quantizer not in QUANTIZERS:
        msg = f"unknown int8 quantizer {quantizer!r}: use one of {', '.join(QUANTIZERS)}"
        raise InputError(msg)
    if quantizer == "auto":
        return "modelopt" if _has_modelopt() else "onnxruntime"
    return quantizer


def _normalise_method(method: str, quantizer: str) -> str:
    method = {"max": "minmax"}.get(method.lower(), method.lower())
    allowed = CALIBRATION_METHODS[quantizer]
    if method not in allowed:
        msg = f"calibration method {method!r} is not offered by {quantizer}: use one of {', '.join(allowed)}"
        raise InputError(msg)
    return method


def _stack_calibration(calibration: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not calibration:
        msg = "int8 lowering needs calibration samples but none were given: give the recipe some of your images (16 or more tiles)"
        raise InputError(msg)
    batches = []
    for i, batch in enumerate(calibration):
        arr = np.ascontiguousarray(batch, dtype=np.float32)
        if arr.ndim < 3:
            msg = f"calibration batch {i} has shape {arr.shape}: give batches shaped (N, C, *tile)"
            raise InputError(msg)
        batches.append(arr)
    return batches


def _ort_version() -> str:
    import onnxruntime

    return str(getattr(onnxruntime, "__version__", "unknown"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def quantize_int8(
    onnx_path: Path,
    out_path: Path,
    calibration: Sequence[np.ndarray],
    *,
    quantizer: str = "auto",
    calibration_method: str = "minmax",
    percentile: float = 99.999,
    nodes_to_exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a symmetric int8 QDQ copy of ``onnx_path`` to ``out_path``, calibrated on ``calibration``.

    Parameters
    ----------
    onnx_path, out_path
        The fp32 ONNX (dynamic batch) read and the QDQ ONNX written. Intermediate files of the
        quantizers go to a private temporary folder, never beside either path.
    calibration
        Preprocessed batches ``(N, C, *tile)`` float32 from the user's data.
    quantizer
        ``auto`` (ModelOpt when installed, else ONNX Runtime), ``modelopt`` or ``onnxruntime``.
    calibration_method
        ``minmax`` (alias ``max``); ``percentile`` with ONNX Runtime; ``entropy`` with ModelOpt.
    percentile
        Percentile of ``|activation|`` kept by the ``percentile`` method.
    nodes_to_exclude
        Node names left unquantized (float), e.g. layers the accuracy guard found sensitive.

    Returns
    -------
    dict
        The record kept in the manifest: quantizer and version, settings, calibration size and a
        summary of the Q/DQ placement (see :func:`describe_qdq`).
    """
    batches = _stack_calibration(calibration)
    chosen = resolve_quantizer(quantizer)
    method = _normalise_method(calibration_method, chosen)
    samples = int(sum(b.shape[0] for b in batches))
    with tempfile.TemporaryDirectory(prefix="ebai-trt-quant-") as tmp:
        work = Path(tmp)
        src = work / "model.fp32.onnx"
        copy_model(onnx_path, src)
        result = work / "model.int8.qdq.onnx"
        if chosen == "modelopt":
            settings = _quantize_modelopt(src, result, batches, method, nodes_to_exclude)
        else:
            settings = _quantize_onnxruntime(src, result, batches, method, percentile, nodes_to_exclude)
        import onnx

        written = save_model(onnx.load(str(result)), out_path)
    summary = describe_qdq(out_path)
    problems = tensorrt_qdq_problems(summary)
    if problems:
        msg = f"the {chosen} quantizer wrote a QDQ file TensorRT would not run as intended ({problems[0]}): report this to ebai-tensorrt"
        raise InputError(msg)
    return {
        "quantizer": chosen,
        "quantizer_requested": quantizer,
        "quantizer_version": _version("nvidia-modelopt") if chosen == "modelopt" else _ort_version(),
        "format": "QDQ",
        "weights": "int8, symmetric, per output channel (Conv axis 0, ConvTranspose axis 1)",
        "activations": "int8, symmetric, per tensor",
        "calibration_method": method,
        "calibration_samples": samples,
        "calibration_batches": len(batches),
        "nodes_to_exclude": list(nodes_to_exclude),
        **settings,
        "qdq": summary["counts"],
        "files": [p.name for p in written],
    }


class _Reader:
    """An ONNX Runtime ``CalibrationDataReader`` over in-memory batches (built lazily: onnxruntime import)."""

    @staticmethod
    def make(input_name: str, batches: Sequence[np.ndarray]) -> Any:
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._it, None)
                return None if batch is None else {input_name: batch}

            def rewind(self) -> None:
                self._it = iter(batches)

        return Reader()


def _input_name(path: Path) -> str:
    model_io = read_io(path)
    if len(model_io.inputs) != 1:
        msg = f"the model has {len(model_io.inputs)} inputs but ebai calibrates models with one input: export a model with one input"
        raise InputError(msg)
    return model_io.inputs[0].name


def _quantize_onnxruntime(
    src: Path,
    dst: Path,
    batches: Sequence[np.ndarray],
    method: str,
    percentile: float,
    nodes_to_exclude: Sequence[str],
) -> dict[str, Any]:
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        msg = f"int8 lowering needs onnxruntime ({exc}): {install_line('tensorrt-lowering')}"
        raise MissingDependencyError(msg) from exc
    pre = src.with_name("model.pre.onnx")
    try:
        # ONNX Runtime's recommended step: shape inference and graph folding (BatchNorm into Conv).
        quant_pre_process(str(src), str(pre))
        model_in, pre_note = pre, "onnxruntime quant_pre_process"
    except Exception as exc:  # a model it cannot pre-process is still quantizable as is
        logger.warning("ONNX Runtime pre-processing failed (%s); quantizing the model as exported", exc)
        model_in, pre_note = src, f"skipped ({type(exc).__name__}: {exc})"
    extra = dict(ORT_EXTRA_OPTIONS)
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    reader = _Reader.make(_input_name(model_in), batches)
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):  # the histogram calibrators print progress
        quantize_static(
            str(model_in),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude) or None,
            calibrate_method=methods[method],
            extra_options=extra,
        )
    if chatter.getvalue().strip():
        logger.debug("onnxruntime quantize_static: %s", chatter.getvalue().strip())
    settings: dict[str, Any] = {
        "quant_format": "QDQ",
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "per_channel": True,
        "pre_process": pre_note,
        "extra_options": {k: v for k, v in extra.items()},
    }
    if method == "percentile":
        settings["percentile"] = float(percentile)
    return settings


def _quantize_modelopt(
    src: Path,
    dst: Path,
    batches: Sequence[np.ndarray],
    method: str,
    nodes_to_exclude: Sequence[str],
) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    if not _has_modelopt():
        msg = "the modelopt quantizer is not installed: pip install 'nvidia-modelopt[onnx]', or pass quantizer='onnxruntime'"
        raise MissingDependencyError(msg)
    calib = src.with_name("calibration.npy")
    np.save(calib, np.concatenate(list(batches), axis=0))
    # A child process: ModelOpt patches ONNX Runtime's calibrators in the process that imports it.
    cmd = [
        sys.executable,
        "-m",
        "ebai.tensorrt._modelopt_run",
        str(src),
        str(dst),
        str(calib),
        "max" if method == "minmax" else method,
        json.dumps(list(nodes_to_exclude)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not dst.is_file():
        lines = [x for x in (done.stderr or done.stdout).strip().splitlines() if x.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        msg = (
            f"ModelOpt could not quantize the model ({last}): pass quantizer='onnxruntime' to use ONNX Runtime instead"
        )
        raise BackendUnavailableError(msg)
    return {
        "quantize_mode": "int8",
        "calibration_eps": ["cpu"],
        "high_precision_dtype": "fp32",
        "process": "separate (ModelOpt patches ONNX Runtime in its process)",
    }


# -- reading a QDQ file back -------------------------------------------------------------------


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def describe_qdq(path: Path) -> dict[str, Any]:
    """Read the Q/DQ placement and parameters of a QDQ ONNX file.

    Returns
    -------
    dict
        ``weights``: one entry per Conv/ConvTranspose weight (node, op, quantized, axis, channels,
        zero points, dtype); ``activations``: one entry per activation QuantizeLinear (tensor,
        per_tensor, zero point, dtype); ``dequantize_input_types``: element types fed to every
        DequantizeLinear; ``counts``: totals, for the manifest.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    const_out = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def array(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in const_out:
            return numpy_helper.to_array(_attr(const_out[name], "value", None))
        return None

    def qparams(node: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        scale = array(node.input[1])
        zero = array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return scale, zero

    weights = []
    for node in graph.node:
        if node.op_type not in WEIGHT_AXIS or len(node.input) < 2:
            continue
        entry: dict[str, Any] = {"node": node.name, "op": node.op_type, "quantized": False}
        dq = producer.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            scale, zero = qparams(dq)
            src = dq.input[0]
            q = producer.get(src)
            if q is not None and q.op_type == "QuantizeLinear":
                raw = array(q.input[0])
                stored, dtype = "float weight + Q/DQ", (zero.dtype.name if zero is not None else "uint8")
            else:
                raw = array(src)
                stored, dtype = "int8 initializer + DQ", (raw.dtype.name if raw is not None else "unknown")
            out_channels = int(raw.shape[WEIGHT_AXIS[node.op_type]]) if raw is not None and raw.ndim > 1 else None
            n_scales = int(scale.size) if scale is not None else 0
            scalar = scale is None or scale.ndim == 0
            entry.update(
                quantized=True,
                stored=stored,
                dtype=dtype,
                # one scale per output channel (a single-channel layer has one either way)
                per_channel=n_scales == out_channels and (not scalar or out_channels == 1),
                axis=None if scalar else int(_attr(dq, "axis", 1)),
                channels=n_scales,
                out_channels=out_channels,
                zero_points=sorted({int(z) for z in np.ravel(zero)}) if zero is not None else [0],
            )
        weights.append(entry)

    weight_sources = {
        w_in for n in graph.node if n.op_type in WEIGHT_AXIS and len(n.input) > 1 for w_in in [n.input[1]]
    }
    weight_q = set()
    for name in weight_sources:
        dq = producer.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                weight_q.add(q.name)

    activations = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.name in weight_q or node.input[0] in inits:
            continue
        scale, zero = qparams(node)
        activations.append(
            {
                "tensor": node.input[0],
                "per_tensor": scale is not None and scale.size == 1,
                "zero_point": int(np.ravel(zero)[0]) if zero is not None and zero.size else 0,
                "dtype": zero.dtype.name if zero is not None else "uint8",
            }
        )

    dq_types = set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        raw = array(node.input[0])
        if raw is not None:
            dq_types.add(raw.dtype.name)
        else:
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                _, zero = qparams(q)
                dq_types.add(zero.dtype.name if zero is not None else "uint8")

    ops = [n.op_type for n in graph.node]
    counts = {
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "weights_quantized": sum(1 for w in weights if w["quantized"]),
        "weights_total": len(weights),
        "weights_left_float": [w["node"] for w in weights if not w["quantized"]],
        "activation_quantizers": len(activations),
    }
    return {
        "weights": weights,
        "activations": activations,
        "dequantize_input_types": sorted(dq_types),
        "counts": counts,
    }


def tensorrt_qdq_problems(summary: Mapping[str, Any]) -> list[str]:
    """List what in a :func:`describe_qdq` summary TensorRT would reject or run other than intended.

    Checked: int8 everywhere, every zero point 0, weights per output channel on the right axis
    (Conv 0, ConvTranspose 1), activations per tensor, no int32 (bias) DequantizeLinear. Empty when fine.
    """
    problems = []
    for w in summary["weights"]:
        if not w["quantized"]:
            continue
        where = f"{w['op']} {w['node']!r}"
        if w["dtype"] != "int8":
            problems.append(f"{where} weight is {w['dtype']}, not int8")
        if any(z != 0 for z in w["zero_points"]):
            problems.append(f"{where} weight has non-zero zero points {w['zero_points'][:3]}")
        if not w["per_channel"]:
            problems.append(f"{where} weight has {w['channels']} scales for {w['out_channels']} output channels")
        elif w["axis"] is not None and w["out_channels"] != 1 and w["axis"] != WEIGHT_AXIS[w["op"]]:
            problems.append(f"{where} weight is quantized along axis {w['axis']}, not {WEIGHT_AXIS[w['op']]}")
    for a in summary["activations"]:
        if a["dtype"] != "int8":
            problems.append(f"activation {a['tensor']!r} is quantized to {a['dtype']}, not int8")
        if a["zero_point"] != 0:
            problems.append(f"activation {a['tensor']!r} has zero point {a['zero_point']}, not 0")
        if not a["per_tensor"]:
            problems.append(f"activation {a['tensor']!r} is quantized per channel, not per tensor")
    bad = [t for t in summary["dequantize_input_types"] if t != "int8"]
    if bad:
        problems.append(f"DequantizeLinear takes {', '.join(bad)} input (TensorRT dequantizes int8 here)")
    return problems
