"""The inputs and outputs of an ONNX file, read without running it, and checked against the spec.

TensorRT needs an optimization profile for every dynamic input dimension, so the lowering and the
engine build both need to know which dimensions are fixed in the file and which are free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ebai.core.errors import InputError
from ebai.core.specs import InputSpec

__all__ = ["ModelIO", "TensorInfo", "check_against_spec", "read_io"]


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, element type name and shape (``None`` = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ModelIO:
    """The graph inputs (initializers excluded) and outputs of an ONNX model."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


def _info(value_info: object) -> TensorInfo:
    import onnx

    ttype = value_info.type.tensor_type  # type: ignore[attr-defined]
    dims: list[int | None] = []
    for d in ttype.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    dtype = onnx.TensorProto.DataType.Name(ttype.elem_type) if ttype.elem_type else "UNDEFINED"
    return TensorInfo(name=value_info.name, dtype=dtype, shape=tuple(dims))  # type: ignore[attr-defined]


def read_io(path: Path) -> ModelIO:
    """Read the inputs and outputs of the ONNX file at ``path`` (weights are not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        msg = f"{str(path)!r} is not a readable ONNX file ({exc}): export the model again"
        raise InputError(msg) from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_info(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_info(v) for v in model.graph.output)
    return ModelIO(inputs=inputs, outputs=outputs)


def check_against_spec(io: ModelIO, spec: InputSpec, what: str = "the ONNX model") -> None:
    """Raise :class:`InputError` unless ``io`` has one float input and one output matching ``spec``.

    The batch dimension may be fixed or dynamic; channel and spatial dimensions must be dynamic or
    equal to the spec's channels and tile.
    """
    if len(io.inputs) != 1:
        names = ", ".join(i.name for i in io.inputs) or "none"
        msg = f"{what} has {len(io.inputs)} inputs ({names}) but ebai feeds one image tensor: export a model with one input"
        raise InputError(msg)
    if len(io.outputs) != 1:
        names = ", ".join(o.name for o in io.outputs) or "none"
        msg = f"{what} has {len(io.outputs)} outputs ({names}) but ebai reads one: export a model with one output"
        raise InputError(msg)
    inp = io.inputs[0]
    if inp.dtype != "FLOAT":
        msg = (
            f"{what} takes {inp.dtype} input {inp.name!r} but ebai feeds float32: export the model with a float32 input"
        )
        raise InputError(msg)
    want = (None, spec.channels, *spec.tile)
    if len(inp.shape) != len(want):
        msg = (
            f"{what} input {inp.name!r} has {len(inp.shape)} dimensions but axes {spec.axes!r} need "
            f"{len(want)}: check the input spec against the exported model"
        )
        raise InputError(msg)
    for axis, (have, need) in enumerate(zip(inp.shape[1:], want[1:], strict=True), start=1):
        if have is not None and have != need:
            msg = (
                f"{what} input {inp.name!r} has size {have} on axis {spec.axes[axis]!r} but the spec says "
                f"{need}: export the model with the spec's channels and tile {spec.tile}, or fix the spec"
            )
            raise InputError(msg)


#: Models larger than this are written with their weights in a side file (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


def save_model(model: object, path: Path) -> list[Path]:
    """Write an ``onnx.ModelProto`` to ``path``; return every file written (weights side file included).

    Models under ~1.8 GB are written as one self-contained file; larger ones keep their weights
    in ``<name>.data`` beside it, which TensorRT's parser and ONNX Runtime both find.
    """
    import onnx

    if model.ByteSize() < _EXTERNAL_DATA_BYTES:  # type: ignore[attr-defined]
        onnx.save_model(model, str(path))  # type: ignore[arg-type]
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)  # type: ignore[arg-type]
    return [path, data]


def copy_model(src: Path, dst: Path) -> list[Path]:
    """Copy the ONNX at ``src`` to ``dst`` with its weights, wherever ``src`` kept them."""
    import onnx

    try:
        model = onnx.load(str(src))
    except Exception as exc:
        msg = f"{str(src)!r} cannot be read as ONNX with its weights ({exc}): export the model again"
        raise InputError(msg) from exc
    return save_model(model, dst)
