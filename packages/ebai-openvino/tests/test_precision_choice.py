"""Int8 layer precision chosen by measurement, layers kept at the default precision, and per-layer profiles."""

from __future__ import annotations

import numpy as np
import pytest
from openvino_nets import pearson, run_torch

from ebai.core.errors import InputError
from ebai.core.profiling import LayerProfile, profile_table
from ebai.openvino import OpenVINOBackend, OpenVINOEngine
from ebai.openvino._precision_choice import f32_deconvolutions, pick, slow_int8_layers
from ebai.openvino._profile import executed_precision


def _profile(*layers: tuple[str, str, str, float]) -> LayerProfile:
    return LayerProfile.from_layers([(n, t, p, f"k_{p}", s) for n, t, p, s in layers], calls=1)


def test_slow_int8_layers_compares_each_layer_with_its_default_time() -> None:
    default = _profile(
        ("a", "Convolution", "bf16", 1.0),
        ("b", "Convolution", "bf16", 1.0),
        ("c", "MatMul", "bf16", 2.0),
        ("d", "MVN", "bf16", 1.0),
    )
    int8 = _profile(
        ("a", "Convolution", "i8", 0.5),  # pays: stays int8
        ("b", "Convolution", "i8", 0.9),  # above 0.8x: kept at the default precision
        ("c", "MatMul", "i8", 1.7),
        ("d", "MVN", "i8", 5.0),  # not a compute layer NNCF can leave out one to one
        ("e", "Convolution", "i8", 9.0),  # not in the default profile (a rewrite made it)
    )
    assert slow_int8_layers(int8, default) == ["b", "c"]
    assert slow_int8_layers(int8, default, ratio=0.4) == ["a", "b", "c"]
    # profiles taken in turns: the median of each layer's round-by-round ratio decides; in the
    # second round the machine ran everything 2.4x slower while the default was profiled
    slow_default = _profile(
        ("a", "Convolution", "bf16", 2.4),
        ("b", "Convolution", "bf16", 2.4),
        ("c", "MatMul", "bf16", 4.8),
        ("d", "MVN", "bf16", 2.4),
    )
    assert slow_int8_layers([int8, int8, int8], [default, slow_default, default]) == ["b", "c"]
    with pytest.raises(ValueError, match="in pairs"):
        slow_int8_layers([int8, int8], [default])
    deconvs = _profile(("x", "ConvolutionBackpropData", "f32", 1.0), ("y", "ConvolutionBackpropData", "bf16", 1.0))
    assert f32_deconvolutions(deconvs) == ["x"]


def test_pick_never_chooses_a_model_slower_than_the_default() -> None:
    assert pick({"all-int8": 1.6, "mixed": 2.0}) == "mixed"
    assert pick({"all-int8": 1.6}) == "all-int8"
    assert pick({"all-int8": 0.9, "mixed": 1.0}) == "default"
    # an edge within the timing noise is not enough: 5% at least
    assert pick({"all-int8": 1.03}) == "default"
    assert pick({"all-int8": 1.06, "mixed": 1.04}) == "all-int8"
    assert pick({"all-int8": 1.2}, margin=1.3) == "default"
    # the timing in the opposite order must show the edge too, and a candidate failing it gives way
    # to the next; candidates rank by the lesser of their two speed-ups
    assert pick({"all-int8": 1.43}, {"all-int8": 1.03}) == "default"
    assert pick({"all-int8": 1.4, "mixed": 1.2}, {"all-int8": 1.0, "mixed": 1.1}) == "mixed"
    assert pick({"all-int8": 1.5, "mixed": 1.3}, {"all-int8": 1.2, "mixed": 1.3}) == "mixed"
    assert pick({"all-int8": 1.3}, {}) == "default"  # no second timing of a candidate: not confirmed


def test_benchmark_says_when_an_int8_target_quantized_nothing() -> None:
    from ebai.core.commands.benchmark import _precision_label

    assert _precision_label("int8", "bf16", True, 12) == "int8 (other layers bf16)"
    assert _precision_label("int8", "bf16", True, None) == "int8 (other layers bf16)"
    assert _precision_label("int8", "bf16", True, 0).startswith("bf16 (int8 target with no layer quantized")


def test_executed_precision_reads_the_kernel_name() -> None:
    assert executed_precision("brgconv_avx512_amx_I8") == "i8"
    assert executed_precision("jit_avx512_BF16") == "bf16"
    assert executed_precision("ref_any_FP32") == "f32"
    assert executed_precision("jit_uni_u8") == "i8"
    assert executed_precision("unknown") == "undef"


def test_profile_groups_layers_by_type_and_precision(plain_artifact, held_out_3d) -> None:
    from ebai.core import Artifact

    art = Artifact.open(plain_artifact)
    profiles = {}
    for precision in ("fp32", "int8"):
        with art.load_engine("openvino", precision) as engine:
            profiles[precision] = engine.profile(held_out_3d[:1], calls=2)
    int8 = profiles["int8"]
    assert int8.calls == 2 and int8.total_s > 0
    assert int8.seconds("Convolution", "i8") > 0 and int8.seconds(precision="i8") <= int8.total_s
    assert any(g.layer_type == "FakeQuantize" or g.precision == "i8" for g in int8.groups)
    assert all(p != "i8" for _, p, _ in profiles["fp32"].layers.values())
    assert sum(g.layers for g in int8.groups) == len(int8.layers)
    table = profile_table({"default": profiles["fp32"], "int8": int8, "torch": None}).splitlines()
    assert table[0].split()[:3] == ["layer", "type", "precision"] and "int8 ms (%)" in table[0]
    assert any(line.startswith("Convolution") and " i8 " in line for line in table)
    assert table[-2].startswith("total") and table[-1] == "torch: its backend gives no per-layer profile"
    back = LayerProfile.from_dict(int8.as_dict())
    assert [(g.layer_type, g.precision, g.layers, g.kernels) for g in back.groups] == [
        (g.layer_type, g.precision, g.layers, g.kernels) for g in int8.groups
    ]
    assert back.total_s == pytest.approx(int8.total_s)


@pytest.fixture(scope="module")
def monai_measured(monai_unet, spec_3d, calibration_3d, onnx_file, tmp_path_factory):
    onnx_path = onnx_file(monai_unet, "monai", calibration_3d[0])
    folder = tmp_path_factory.mktemp("monai-measured")
    lowering = OpenVINOBackend().lower(
        onnx_path, folder, precision="int8", input_spec=spec_3d, calibration=calibration_3d, options={}
    )
    return onnx_path, folder, lowering


def test_measured_int8_records_layers_by_precision(monai_measured, monai_unet, held_out_3d) -> None:
    import openvino as ov

    _, folder, lowering = monai_measured
    choice = lowering.record["precision_choice"]
    assert choice["chosen"] in ("all-int8", "mixed", "default")
    assert set(choice["median_ms"]) >= {"default", "all-int8"} and set(choice["fastest_ms"]) == set(choice["median_ms"])
    assert set(choice["paired_speedups"]) == set(choice["median_ms"]) - {"default"}
    assert set(choice["paired_speedups_reversed_order"]) == set(choice["paired_speedups"])
    # int8 is kept only with a paired edge of 5% over the default, as timed at lowering
    assert choice["speedup_vs_default"] >= 1.05 or choice["chosen"] == "default"
    kept, int8 = set(choice["layers_default_precision"]), set(choice["layers_int8"])
    assert not kept & int8 and lowering.options["keep_default"] == sorted(kept)
    # where int8 did not pay, the recorded options say so, so that they reproduce the float model
    assert lowering.options["layer_precision"] == ("default" if choice["chosen"] == "default" else "measured")
    assert lowering.options["deconv_to_conv"] == choice["deconvolutions_rewritten"]
    assert (lowering.record["fake_quantize_ops"] > 0) == (choice["chosen"] != "default")
    names = {op.get_friendly_name() for op in ov.Core().read_model(str(folder / "model.xml")).get_ops()}
    assert int8 <= names
    with OpenVINOBackend().load(folder, lowering) as engine:
        assert pearson(engine.infer(held_out_3d), run_torch(monai_unet, held_out_3d)) >= 0.99
        assert engine.quantized_layers == lowering.record["fake_quantize_ops"]


def test_kept_layers_run_at_the_default_precision(monai_measured, spec_3d, calibration_3d, held_out_3d, tmp_path):
    """Naming layers in keep_default leaves them unquantized; the options a measured lowering records reproduce it."""
    onnx_path, _, measured = monai_measured
    backend = OpenVINOBackend()
    every = backend.lower(
        onnx_path,
        tmp_path / "all",
        precision="int8",
        input_spec=spec_3d,
        calibration=calibration_3d,
        options={"layer_precision": "int8", "deconv_to_conv": False},
    )
    with backend.load(tmp_path / "all", every) as engine:
        layers = engine.profile(held_out_3d[:1], calls=1).layers
    convs = sorted(n for n, (t, p, _) in layers.items() if t == "Convolution" and p == "i8")
    assert len(convs) >= 2
    keep = convs[:2]
    mixed = backend.lower(
        onnx_path,
        tmp_path / "mixed",
        precision="int8",
        input_spec=spec_3d,
        calibration=calibration_3d,
        options={"keep_default": keep, "deconv_to_conv": False},
    )
    assert mixed.options["keep_default"] == keep and "precision_choice" not in mixed.record
    assert mixed.record["fake_quantize_ops"] < every.record["fake_quantize_ops"]
    with backend.load(tmp_path / "mixed", mixed) as engine:
        layers = engine.profile(held_out_3d[:1], calls=1).layers
    assert all(layers[n][1] != "i8" for n in keep)
    assert any(p == "i8" for t, p, _ in layers.values() if t == "Convolution")
    again = backend.lower(
        onnx_path,
        tmp_path / "again",
        precision="int8",
        input_spec=spec_3d,
        calibration=calibration_3d,
        options=dict(measured.options),
    )
    assert "precision_choice" not in again.record
    assert again.record["fake_quantize_ops"] == measured.record["fake_quantize_ops"]


def test_bad_layer_precision_options_are_refused(monai_measured, spec_3d, calibration_3d, tmp_path) -> None:
    onnx_path = monai_measured[0]
    backend = OpenVINOBackend()
    for options, words in (
        ({"layer_precision": "fast"}, "unknown layer_precision 'fast'"),
        ({"keep_default": "conv1"}, "keep_default must be a list of layer names"),
        ({"deconv_to_conv": 3.5}, "deconv_to_conv must be true, false, auto or a list"),
    ):
        with pytest.raises(InputError, match=words):
            backend.lower(
                onnx_path, tmp_path, precision="int8", input_spec=spec_3d, calibration=calibration_3d, options=options
            )


def test_in_memory_engine_profile_matches_its_layers(held_out_3d) -> None:
    import openvino as ov
    from openvino import opset13 as ops

    param = ops.parameter(ov.PartialShape([-1, 1, 8, 8]), ov.Type.f32)
    conv = ops.convolution(param, ops.constant(np.ones((4, 1, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    model = ov.Model([ops.relu(conv)], [param])
    with OpenVINOEngine(model, inference_precision="f32") as engine:
        found = engine.profile(np.ones((1, 1, 8, 8), np.float32), calls=3)
        assert engine.quantized_layers == 0
    assert found.calls == 3 and found.seconds("Convolution", "f32") >= 0
    assert {g.precision for g in found.groups} <= {"f32", "undef", "i32", "i64"}


def test_engine_profiles_again_without_compiling_again_and_frees_on_close() -> None:
    """Profiles in turns one call apart need the profiling copy compiled once, not per profile."""
    import openvino as ov
    from openvino import opset13 as ops

    from ebai.core.errors import EbaiError

    param = ops.parameter(ov.PartialShape([-1, 1, 8, 8]), ov.Type.f32)
    conv = ops.convolution(param, ops.constant(np.ones((4, 1, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    engine = OpenVINOEngine(ov.Model([ops.relu(conv)], [param]), inference_precision="f32")
    first = engine.profile(np.ones((1, 1, 8, 8), np.float32), calls=1)
    profiler = engine._profiler
    second = engine.profile(np.ones((2, 1, 8, 8), np.float32), calls=2)  # a new batch shape: warmed again
    assert engine._profiler is profiler and profiler is not None
    assert first.layers.keys() == second.layers.keys() and second.calls == 2
    engine.close()
    assert engine._profiler is None
    with pytest.raises(EbaiError, match="closed"):
        engine.profile(np.ones((1, 1, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match="profiler was closed"):
        profiler.profile(np.ones((1, 1, 8, 8), np.float32))


def test_layer_precision_default_quantizes_nothing(monai_measured, spec_3d, calibration_3d, tmp_path) -> None:
    """What a measured choice records where int8 did not pay: re-lowering with it gives the float model."""
    onnx_path = monai_measured[0]
    lowering = OpenVINOBackend().lower(
        onnx_path,
        tmp_path,
        precision="int8",
        input_spec=spec_3d,
        calibration=calibration_3d,
        options={"layer_precision": "default"},
    )
    assert lowering.record["fake_quantize_ops"] == 0 and lowering.options["layer_precision"] == "default"
    assert "precision_choice" not in lowering.record
