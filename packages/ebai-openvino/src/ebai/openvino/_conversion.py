"""ONNX to OpenVINO IR: ``openvino.convert_model`` (not the legacy Model Optimizer) and ``save_model``.

The converted model keeps one input whose batch axis is dynamic, so one compiled model serves any
number of tiles per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebai.core.errors import ArtifactError, InputError
from ebai.core.specs import InputSpec
from ebai.openvino._deps import require_openvino

__all__ = ["IR_BIN", "IR_XML", "convert_onnx", "first_line", "read_ir", "save_ir"]

IR_XML = "model.xml"
IR_BIN = "model.bin"


def first_line(exc: BaseException) -> str:
    """Return the first informative line of an exception message (OpenVINO's run to dozens of lines)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith("Check ") and "Exception from" not in line:
            return line
    return type(exc).__name__


def convert_onnx(onnx_path: Path, input_spec: InputSpec) -> Any:
    """Convert an ONNX file to an ``openvino.Model`` with a dynamic batch axis.

    Parameters
    ----------
    onnx_path
        fp32 ONNX with one input laid out as ``input_spec.axes`` (batch, channels, spatial).
    input_spec
        Used to check the input rank and channel count, so a wrong file fails here and not later
        in the middle of a run.
    """
    ov = require_openvino()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        msg = f"ONNX file {str(onnx_path)!r} does not exist: export the model first (ebai.compress.export_onnx)"
        raise InputError(msg)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises bare RuntimeErrors/OpConversionFailure
        msg = (
            f"OpenVINO cannot convert {str(onnx_path)!r} ({first_line(exc)}): check that it is a valid fp32 ONNX model"
        )
        raise InputError(msg) from exc
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        msg = (
            f"{str(onnx_path)!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs: "
            "ebai runs models with one image input and one image output"
        )
        raise InputError(msg)
    shape = model.input(0).get_partial_shape()
    rank = len(input_spec.axes)
    if shape.rank.is_dynamic or shape.rank.get_length() != rank:
        msg = f"ONNX input has shape {shape} but the input spec {input_spec.axes!r} needs rank {rank}: export with the spec's axes"
        raise InputError(msg)
    channels = shape[1]
    if channels.is_static and channels.get_length() != input_spec.channels:
        msg = f"ONNX input has {channels.get_length()} channel(s) but the input spec says {input_spec.channels}: make the spec match the model"
        raise InputError(msg)
    if shape[0].is_static:
        shape[0] = ov.Dimension(-1)
        try:
            model.reshape({model.input(0): shape})
        except Exception as exc:
            msg = (
                f"{str(onnx_path)!r} has a fixed batch size and OpenVINO cannot make it dynamic "
                f"({first_line(exc)}): export the ONNX with a dynamic batch axis"
            )
            raise InputError(msg) from exc
    return model


def save_ir(model: Any, out_dir: Path, *, compress_to_fp16: bool) -> tuple[str, str]:
    """Write ``model.xml`` + ``model.bin`` into ``out_dir``; return their names (relative)."""
    ov = require_openvino()
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_dir / IR_XML), compress_to_fp16=compress_to_fp16)
    return IR_XML, IR_BIN


def read_ir(xml_path: Path) -> Any:
    """Read an IR written by :func:`save_ir`; a damaged file gives a one-line :class:`ArtifactError`."""
    ov = require_openvino()
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    for path in (xml_path, bin_path):
        if not path.is_file():
            msg = f"OpenVINO model file {str(path)!r} is missing: the artifact is incomplete, recreate it"
            raise ArtifactError(msg)
    try:
        return ov.Core().read_model(str(xml_path), str(bin_path))
    except Exception as exc:
        msg = f"OpenVINO cannot read {str(xml_path)!r} ({first_line(exc)}): the file is damaged, recreate the artifact"
        raise ArtifactError(msg) from exc
