"""The transposed-convolution rewrite computes exactly what OpenVINO's own operation computes."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

from ebai.openvino._deconvolution import rewrite_transposed_convolutions  # noqa: E402

CASES = [
    # (spatial size, kernel, strides, pads_begin, pads_end, output_padding, cin, cout)
    ((4, 6, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1), 8, 4),  # MONAI UNet's up layer
    ((4, 6, 5), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (0, 0, 0), 8, 4),  # classic U-Net up-sampling
    ((3, 4, 5), (4, 4, 4), (2, 2, 2), (1, 1, 1), (1, 1, 1), (0, 0, 0), 4, 4),
    ((3, 8, 8), (1, 2, 2), (1, 2, 2), (0, 0, 0), (0, 0, 0), (0, 0, 0), 6, 3),  # anisotropic 3D
    ((7, 6), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 3, 5),  # 2D
    ((5, 6), (5, 5), (3, 3), (2, 2), (2, 2), (2, 2), 3, 2),  # stride 3
    ((5, 6), (3, 3), (1, 1), (1, 1), (1, 1), (0, 0), 4, 4),  # stride 1
    ((7,), (3,), (2,), (0,), (0,), (1,), 2, 3),  # 1D
]


def _model(size, kernel, strides, pads_begin, pads_end, output_padding, cin, cout, seed):
    rng = np.random.default_rng(seed)
    param = ops.parameter(ov.PartialShape([-1, cin, *size]), ov.Type.f32)
    weights = rng.standard_normal((cin, cout, *kernel)).astype(np.float32)
    node = ops.convolution_backprop_data(
        param,
        ops.constant(weights),
        list(strides),
        pads_begin=list(pads_begin),
        pads_end=list(pads_end),
        output_padding=list(output_padding),
    )
    bias = ops.constant(rng.standard_normal((1, cout, *([1] * len(size)))).astype(np.float32))
    return ov.Model([ops.relu(ops.add(node, bias))], [param])


@pytest.mark.parametrize("case", CASES, ids=[f"k{c[1]}s{c[2]}" for c in CASES])
def test_rewrite_matches_openvino(case) -> None:
    seed = CASES.index(case)
    original, rewritten = _model(*case, seed), _model(*case, seed)
    assert rewrite_transposed_convolutions(rewritten) == 1
    kinds = {op.get_type_name() for op in rewritten.get_ops()}
    assert "ConvolutionBackpropData" not in kinds and "Convolution" in kinds
    assert rewritten.output(0).get_partial_shape() == original.output(0).get_partial_shape()
    x = np.random.default_rng(100 + seed).standard_normal((3, case[6], *case[0])).astype(np.float32)
    core = ov.Core()
    want = core.compile_model(original, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    got = core.compile_model(rewritten, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_rewrite_leaves_what_it_cannot_handle() -> None:
    param = ops.parameter(ov.PartialShape([-1, 2, 4, 4]), ov.Type.f32)
    weights = ops.constant(np.ones((2, 2, 3, 3), np.float32))
    dilated = ops.convolution_backprop_data(
        param, weights, [2, 2], pads_begin=[0, 0], pads_end=[0, 0], dilations=[2, 2]
    )
    model = ov.Model([dilated], [param])
    assert rewrite_transposed_convolutions(model) == 0
    dynamic = ops.parameter(ov.PartialShape([-1, 2, -1, -1]), ov.Type.f32)
    model = ov.Model(
        [ops.convolution_backprop_data(dynamic, weights, [2, 2], pads_begin=[0, 0], pads_end=[0, 0])], [dynamic]
    )
    assert rewrite_transposed_convolutions(model) == 0


def test_signed_only_leaves_transposed_convolutions_after_relu() -> None:
    """ReLU outputs (and their concatenation) quantize without zero point: OpenVINO runs those in int8 already."""
    weights = ops.constant(np.ones((4, 2, 2, 2), np.float32))

    def model(first):
        param = ops.parameter(ov.PartialShape([-1, 2, 4, 4]), ov.Type.f32)
        x = ops.concat([first(param), ops.relu(param)], 1)
        up = ops.convolution_backprop_data(x, weights, [2, 2], pads_begin=[0, 0], pads_end=[0, 0])
        return ov.Model([up], [param])

    assert rewrite_transposed_convolutions(model(ops.relu), signed_only=True) == 0
    assert rewrite_transposed_convolutions(model(ops.relu)) == 1
    assert rewrite_transposed_convolutions(model(lambda p: ops.add(p, p)), signed_only=True) == 1
