"""Parsing the engine inspector's JSON into per-layer precisions and silent fallbacks."""

from __future__ import annotations

import json

import pytest

from ebai.tensorrt import LayerReport, parse_engine_information
from ebai.tensorrt._inspect import dtype_from_format, tensor_dtype


@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("Row major linear FP32", "fp32"),
        ("Float", "fp32"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Half", "fp16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Int8", "int8"),
        ("Row major linear UInt8 format", "uint8"),
        ("Row major linear BFloat16 format", "bf16"),
        ("Row major linear FP8 format", "fp8"),
        ("Row major linear Int32 format", "int32"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_dtype_from_format(text, dtype):
    assert dtype_from_format(text) == dtype


def _layer(name, kind, fmt, weights=None):
    layer = {
        "Name": name,
        "LayerType": kind,
        "Inputs": [{"Name": "x", "Format/Datatype": fmt}],
        "Outputs": [{"Name": "y", "Format/Datatype": fmt}],
    }
    if weights:
        layer["Weights"] = {"Type": weights, "Count": 10}
    return layer


def test_fallbacks_are_compute_layers_above_the_target():
    info = {
        "Layers": [
            _layer("reformat in", "Reformat", "Row major linear FP32"),
            _layer(
                "/e1/Conv + /e1/Relu",
                "CaskConvolution",
                "Thirty-two wide channel vectorized row major Int8 format",
                "Int8",
            ),
            _layer("/up1/ConvTranspose", "CaskDeconvolution", "Row major linear FP32", "Float"),
            _layer(
                "/up2/ConvTranspose", "CaskDeconvolution", "Channel major FP16 format where channel % 8 == 0", "Half"
            ),
            _layer("/head/Conv", "CaskConvolution", "Int8", None),
        ]
    }
    report = parse_engine_information(json.dumps(info), "int8")
    assert report.detailed and len(report.layers) == 5
    assert report.counts == {"int8": 2, "fp32": 1, "fp16": 1}
    assert report.fallbacks == ("/up1/ConvTranspose", "/up2/ConvTranspose")
    assert "2 not in int8: /up1/ConvTranspose, /up2/ConvTranspose" in report.summary()
    fp16 = parse_engine_information(json.dumps(info), "fp16")
    assert fp16.fallbacks == ("/up1/ConvTranspose",)
    assert parse_engine_information(json.dumps(info), "fp32").fallbacks == ()


def test_report_roundtrips_through_json():
    info = {"Layers": [_layer("conv", "CaskConvolution", "Int8", "Int8")]}
    report = parse_engine_information(json.dumps(info), "int8")
    again = LayerReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


def test_names_only_and_garbage_are_reported_as_unknown():
    names = parse_engine_information(json.dumps({"Layers": ["conv1", "conv2"]}), "int8")
    assert not names.detailed and [layer.precision for layer in names.layers] == ["unknown", "unknown"]
    assert "unknown" in names.summary()
    assert not parse_engine_information("not json", "fp16").detailed


@pytest.mark.parametrize(
    ("tensor", "dtype"),
    [
        ({"Name": "x", "Format/Datatype": "Row major linear FP32"}, "fp32"),  # TensorRT 10
        ({"Name": "x", "Format": "Row major linear format (kLINEAR)", "DataType": "Half"}, "fp16"),  # TensorRT 11
        (
            {"Name": "x", "Format": "Thirty-two wide channel vectorized row major format (kCHW32)", "DataType": "Int8"},
            "int8",
        ),
        ({"Name": "x", "Format": "Row major linear FP32 format (kLINEAR)"}, "fp32"),  # type named in the format only
        ({"Name": "x", "Format": "Row major linear format (kLINEAR)"}, "unknown"),
        ({"Name": "x"}, "unknown"),
    ],
)
def test_tensor_dtype_reads_both_layouts(tensor, dtype):
    assert tensor_dtype(tensor) == dtype


def test_tensorrt_11_layout_finds_fallbacks_in_layers_without_weights():
    def layer(name, kind, layout, short):
        io = {"Format": layout, "DataType": short}
        return {"Name": name, "LayerType": kind, "Inputs": [dict(io, Name="x")], "Outputs": [dict(io, Name="y")]}

    info = {
        "Layers": [
            layer(
                "/e1/Conv", "CaskConvolution", "Thirty-two wide channel vectorized row major format (kCHW32)", "Int8"
            ),
            layer("/up1/ConvTranspose", "CaskDeconvolution", "Row major linear format (kLINEAR)", "Float"),
        ],
        "I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"}],
    }
    report = parse_engine_information(json.dumps(info), "int8")
    assert report.counts == {"int8": 1, "fp32": 1} and report.fallbacks == ("/up1/ConvTranspose",)
