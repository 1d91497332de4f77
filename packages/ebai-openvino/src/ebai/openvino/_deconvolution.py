"""Rewrite transposed convolutions as a convolution plus a pixel shuffle, so they run in int8.

Why: OpenVINO's CPU plugin runs ``ConvolutionBackpropData`` in int8 only when its input has no zero
point, and on CPUs without AMX it gives convolutions unsigned (u8) inputs only, so a signed tensor
(the sum of a residual block, say) that feeds both a convolution and a transposed one reaches the
latter as u8 with a zero point; OpenVINO then runs it in f32. On MONAI's 3D ``UNet`` with residual
units this left the three transposed convolutions, about half the int8 run time, in f32.

How: a transposed convolution with stride ``s`` equals ``prod(s)`` ordinary convolutions over its
input, one per output phase, interleaved. The rewrite stacks the phase kernels into one
convolution (stride 1; taps a phase does not use are zero), then reshapes, transposes and slices its
output into place. The result equals the original up to float rounding (checked in the tests); the
convolution quantizes like any other, with zero points allowed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = ["rewrite_transposed_convolutions"]


def _phase_kernel(weights: np.ndarray, strides: list[int], taps: list[int]) -> np.ndarray:
    """``[Cin, Cout, *K]`` transposed-convolution weights -> ``[Cout * prod(s), Cin, *taps]``.

    Output channel ``c * prod(s) + phase`` computes output positions ``t = m * s + r`` (``r`` the
    phase, row-major over axes) as a cross-correlation: tap ``u`` along an axis reads kernel index
    ``r + (taps - 1 - u) * s`` (zero where that falls outside the kernel).
    """
    cin, cout, *kernel = weights.shape
    d = len(kernel)
    phases = list(itertools.product(*(range(s) for s in strides)))
    out = np.zeros((cout, len(phases), cin, *taps), dtype=np.float32)
    for p, r in enumerate(phases):
        for u in itertools.product(*(range(t) for t in taps)):
            k = [r[i] + (taps[i] - 1 - u[i]) * strides[i] for i in range(d)]
            if all(k[i] < kernel[i] for i in range(d)):
                out[(slice(None), p, slice(None), *u)] = weights[(slice(None), slice(None), *k)].T
    return out.reshape(cout * len(phases), cin, *taps)


def _plan(op: Any) -> dict[str, Any] | None:
    """Geometry of the rewrite for one ``ConvolutionBackpropData``, or ``None`` to leave it."""
    if op.get_type_name() != "ConvolutionBackpropData" or op.get_input_size() != 2:
        return None
    attrs = op.get_attributes()
    weights_node = op.input_value(1).get_node()
    if weights_node.get_type_name() != "Constant":
        return None
    if any(d != 1 for d in attrs["dilations"]) or attrs["auto_pad"] not in ("explicit", "notset"):
        return None
    in_shape, out_shape = op.get_input_partial_shape(0), op.get_output_partial_shape(0)
    d = len(attrs["strides"])
    if in_shape.rank.is_dynamic or any(in_shape[i].is_dynamic or out_shape[i].is_dynamic for i in range(1, d + 2)):
        return None
    strides, pads = [int(s) for s in attrs["strides"]], [int(p) for p in attrs["pads_begin"]]
    weights = np.asarray(weights_node.get_data(), dtype=np.float32)
    kernel = list(weights.shape[2:])
    size_in = [in_shape[2 + i].get_length() for i in range(d)]
    size_out = [out_shape[2 + i].get_length() for i in range(d)]
    taps = [math.ceil(kernel[i] / strides[i]) for i in range(d)]
    first = [pads[i] // strides[i] for i in range(d)]  # first input-grid position needed
    last = [(pads[i] + size_out[i] - 1) // strides[i] for i in range(d)]
    pad_begin = [taps[i] - 1 - first[i] for i in range(d)]
    if any(p < 0 for p in pad_begin):
        return None  # padding larger than a stride step: rare, left to OpenVINO
    pad_end = [max(0, last[i] - (size_in[i] - 1)) for i in range(d)]
    grid = [size_in[i] + pad_begin[i] + pad_end[i] - taps[i] + 1 for i in range(d)]
    crop = [pads[i] - first[i] * strides[i] for i in range(d)]
    return {
        "weights": weights,
        "strides": strides,
        "taps": taps,
        "pad_begin": pad_begin,
        "pad_end": pad_end,
        "grid": grid,
        "crop": crop,
        "size_out": size_out,
    }


#: Operations whose output is non-negative whatever their input.
_NON_NEGATIVE = {"Relu", "Sigmoid", "SoftPlus", "Softmax", "Exp", "Abs"}
#: Operations whose output is non-negative when their data input(s) are.
_KEEPS_SIGN = {
    "Concat",
    "MaxPool",
    "AvgPool",
    "Interpolate",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "DepthToSpace",
    "SpaceToDepth",
    "Slice",
    "StridedSlice",
    "Pad",
}


def _non_negative(output: Any, seen: dict[int, bool]) -> bool:
    """Whether a graph value is non-negative by construction (after ReLU, or concatenations of such)."""
    node = output.get_node()
    key = id(node)
    if key in seen:
        return seen[key]
    kind = node.get_type_name()
    if kind in _NON_NEGATIVE:
        result = True
    elif kind == "Clamp":
        result = float(node.get_attributes().get("min", -1.0)) >= 0.0
    elif kind in _KEEPS_SIGN:
        data = [node.input_value(i) for i in range(node.get_input_size())]
        if kind != "Concat":
            data = data[:1]  # the others are shapes, axes or pads
        result = all(_non_negative(v, seen) for v in data)
    else:
        result = False
    seen[key] = result
    return result


def rewrite_transposed_convolutions(
    model: Any, *, signed_only: bool = False, names: Collection[str] | None = None
) -> int:
    """Replace every suitable ``ConvolutionBackpropData`` of ``model`` in place; return how many.

    Suitable: constant weights, no groups, dilation 1, explicit padding, static channel and spatial
    sizes. Others are left as they are. With ``signed_only``, transposed convolutions whose input is
    non-negative by construction (a ReLU output, or a concatenation of such) are left too: NNCF
    gives their input an unsigned quantizer without zero point, so OpenVINO already runs them in
    int8, and there the rewrite only costs time (its pixel shuffle moves the whole output: 11.2 ms
    against 15.1 ms per 32x128x128 tile for the reference denoiser, MONAI UNet without residual
    units, on a 2-core AVX-512 VNNI CPU). With ``names``, only the transposed convolutions of
    those friendly names are considered (a measured choice names them, see
    :mod:`ebai.openvino._precision_choice`).
    """
    from openvino import opset13 as ops

    count = 0
    seen: dict[int, bool] = {}
    for op in list(model.get_ordered_ops()):
        plan = _plan(op)
        if plan is None or (names is not None and op.get_friendly_name() not in names):
            continue
        if signed_only and _non_negative(op.input_value(0), seen):
            continue
        d = len(plan["strides"])
        cout = plan["weights"].shape[1]
        kernel = _phase_kernel(plan["weights"], plan["strides"], plan["taps"])
        conv = ops.convolution(
            op.input_value(0), ops.constant(kernel), [1] * d, plan["pad_begin"], plan["pad_end"], [1] * d
        )
        strides = plan["strides"]
        if len(set(strides)) == 1 and d in (2, 3):
            # OpenVINO's DepthToSpace (depth-first: channel = c * s**d + phase) is a fast kernel
            x = ops.depth_to_space(conv, "depth_first", strides[0])
        else:  # [N, Cout*P, *grid] -> [N, Cout, *s, *grid] -> [N, Cout, g0, s0, g1, s1, ...] -> [N, Cout, *(g*s)]
            x = ops.reshape(conv, ops.constant(np.array([0, cout, *strides, *plan["grid"]], np.int64)), True)
            perm = [0, 1, *(v for i in range(d) for v in (2 + d + i, 2 + i))]
            x = ops.transpose(x, ops.constant(np.array(perm, np.int64)))
            full = [g * s for g, s in zip(plan["grid"], strides, strict=True)]
            x = ops.reshape(x, ops.constant(np.array([0, cout, *full], np.int64)), True)
        start = np.array(plan["crop"], np.int64)
        x = ops.slice(
            x,
            ops.constant(start),
            ops.constant(start + np.array(plan["size_out"], np.int64)),
            ops.constant(np.ones(d, np.int64)),
            ops.constant(np.arange(2, 2 + d, dtype=np.int64)),
        )
        x.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(x.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count
