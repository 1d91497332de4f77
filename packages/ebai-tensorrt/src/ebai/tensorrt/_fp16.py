"""fp16 lowering: an ONNX whose weights and activations are float16 but whose input and output stay float32.

A strongly typed TensorRT network runs each layer in the type the ONNX gives it, so the precision is
decided here, in a file that ONNX Runtime can check on a CPU, not by builder flags at build time.
The conversion is onnxconverter-common's ``convert_float_to_float16`` (maintained by the ONNX
converters team, and the converter NVIDIA's ModelOpt itself depends on) with ``keep_io_types=True``:
Cast nodes at the graph input and output keep the engine's I/O float32, so the tiler feeds it as is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ebai.core.errors import MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.tensorrt._onnx_io import save_model

__all__ = ["FP16_MAX", "FP16_MIN_POSITIVE", "convert_fp16"]

logger = logging.getLogger("ebai")

#: Largest finite and smallest positive (subnormal) float16 values: weights are clipped into this range.
FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 5.96e-08


def _converter() -> Any:
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        msg = f"fp16 lowering needs onnxconverter-common ({exc}): {install_line('tensorrt-lowering')}"
        raise MissingDependencyError(msg) from exc
    return float16


def convert_fp16(
    onnx_path: Path,
    out_path: Path,
    *,
    op_block_list: Sequence[str] | None = None,
    node_block_list: Sequence[str] = (),
) -> Mapping[str, Any]:
    """Write an fp16 copy of ``onnx_path`` with float32 input and output to ``out_path``.

    Parameters
    ----------
    onnx_path, out_path
        The fp32 ONNX read and the fp16 ONNX written (the caller makes ``out_path`` atomic).
    op_block_list
        Operator types left in float32 (with Casts around them). ``None`` takes onnxconverter-common's
        default list (ops without float16 kernels in ONNX Runtime, e.g. ``Resize``, ``TopK``), so the
        file stays checkable on a CPU; TensorRT then runs those layers in fp32, which its layer
        report shows.
    node_block_list
        Node names left in float32, e.g. layers found sensitive by the accuracy guard.

    Returns
    -------
    Mapping
        What the manifest records: converter, its version and the block lists used.
    """
    import onnx

    float16 = _converter()
    model = onnx.load(str(onnx_path))
    block = list(float16.DEFAULT_OP_BLOCK_LIST if op_block_list is None else op_block_list)
    converted = float16.convert_float_to_float16(
        model,
        min_positive_val=FP16_MIN_POSITIVE,
        max_finite_val=FP16_MAX,
        keep_io_types=True,
        op_block_list=block,
        node_block_list=list(node_block_list),
    )
    onnx.checker.check_model(converted)
    written = save_model(converted, out_path)
    present = {n.op_type for n in model.graph.node}
    kept = sorted(present & set(block))
    if kept:
        logger.info("fp16 lowering keeps %s in float32 (blocked op types)", ", ".join(kept))
    from importlib.metadata import version

    return {
        "converter": "onnxconverter-common",
        "converter_version": version("onnxconverter-common"),
        "keep_io_types": True,
        "op_block_list": block,
        "node_block_list": list(node_block_list),
        "fp32_op_types_in_model": kept,
        "files": [p.name for p in written],
    }
