"""Lowering ONNX to OpenVINO IR and running it: fidelity, dynamic batch, options, damaged files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from openvino_nets import TILE_3D, pearson, run_torch, smooth_noise

from ebai.core import Artifact, ArtifactError, EbaiError, InputError
from ebai.openvino import OpenVINOBackend, OpenVINOEngine


@pytest.fixture(scope="module")
def backend() -> OpenVINOBackend:
    return OpenVINOBackend()


def test_plugin_is_registered_and_available() -> None:
    from ebai.core import get_backend
    from ebai.core.plugins import BACKENDS, get_plugin

    spec = get_plugin(BACKENDS, "openvino")
    assert spec.is_available().ok, spec.is_available().reason
    assert isinstance(get_backend("openvino"), OpenVINOBackend)


def test_int8_variants_offer_both_presets(backend: OpenVINOBackend) -> None:
    assert backend.variants("int8") == [{"preset": "mixed"}, {"preset": "performance"}]
    assert backend.variants("fp32") == [{}]


@pytest.fixture(scope="module")
def monai_int8(backend, monai_unet, spec_3d, calibration_3d, onnx_file, tmp_path_factory) -> dict:
    """The small MONAI UNet lowered to int8 with each NNCF preset, every layer in int8 (once per module)."""
    onnx_path = onnx_file(monai_unet, "monai", calibration_3d[0])
    out = {}
    for variant in backend.variants("int8"):
        folder = tmp_path_factory.mktemp(f"monai-{variant['preset']}")
        lowering = backend.lower(
            onnx_path,
            folder,
            precision="int8",
            input_spec=spec_3d,
            calibration=calibration_3d,
            options={**variant, "layer_precision": "int8"},
        )
        out[variant["preset"]] = (folder, lowering)
    return out


@pytest.mark.parametrize("preset", ["mixed", "performance"])
def test_int8_monai_unet_keeps_pearson(backend, monai_unet, monai_int8, held_out_3d, preset) -> None:
    folder, lowering = monai_int8[preset]
    assert lowering.files == ("model.xml", "model.bin") and lowering.entry == "model.xml"
    record = lowering.record
    assert record["preset"] == preset and record["subset_size"] == 8 and record["calibration_samples"] == 8
    assert record["overflow_fix"] == "first_layer_only"
    assert {"openvino", "nncf"} <= set(record["versions"])
    assert record["fake_quantize_ops"] > 0 and record["deconvolutions_rewritten"] == 2
    with backend.load(folder, lowering) as engine:
        got = engine.infer(held_out_3d)
    assert pearson(got, run_torch(monai_unet, held_out_3d)) >= 0.99


def test_int8_runs_every_convolution_in_int8(monai_int8) -> None:
    """With every layer in int8, the transposed convolutions are rewritten, so none is left to run in f32."""
    import openvino as ov

    folder, lowering = monai_int8["mixed"]
    compiled = ov.Core().compile_model(str(folder / lowering.entry), "CPU")
    layers = [
        (op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
        for op in compiled.get_runtime_model().get_ordered_ops()
    ]
    convolutions = [precision for kind, precision in layers if kind in ("Convolution", "Deconvolution")]
    assert convolutions and not any(kind == "Deconvolution" for kind, _ in layers)
    assert set(convolutions) <= {"u8", "i8"}, layers


def test_plain_int8_artifact_keeps_pearson_and_dynamic_batch(plain_artifact, plain_unet, held_out_3d) -> None:
    art = Artifact.open(plain_artifact)
    reference = run_torch(plain_unet, held_out_3d)
    for precision in ("fp32", "int8"):
        with art.load_engine("openvino", precision) as engine:
            batch3 = engine.infer(held_out_3d)
            singles = np.concatenate([engine.infer(held_out_3d[i : i + 1]) for i in range(3)])
            assert engine.input_shape.startswith("[?,1,16,32,32]")
        np.testing.assert_allclose(singles, batch3, rtol=0, atol=1e-5 * np.abs(batch3).max())
        assert pearson(batch3, reference) >= (0.999 if precision == "fp32" else 0.99)


def test_f32_hint_matches_torch_and_default_is_openvinos_choice(plain_artifact, plain_unet, held_out_3d) -> None:
    import openvino as ov
    import openvino.properties.hint as hints

    art = Artifact.open(plain_artifact)
    reference = run_torch(plain_unet, held_out_3d)
    with art.load_engine("openvino", "fp32", inference_precision="f32") as engine:
        assert engine.execution_precision == "f32"
        np.testing.assert_allclose(engine.infer(held_out_3d), reference, atol=1e-4 * np.abs(reference).max())
    default = ov.Core().get_property("CPU", hints.inference_precision()).to_string()
    with art.load_engine("openvino", "fp32") as engine:
        assert engine.execution_precision == default  # bf16 on CPUs with AVX-512 BF16 or AMX
        assert engine.precision == "fp32" and engine.backend == "openvino"


def test_infer_many_keeps_order_with_an_async_queue(plain_artifact, held_out_3d) -> None:
    art = Artifact.open(plain_artifact)
    batches = [smooth_noise((n, 1, *TILE_3D), 50 + n) for n in (1, 3, 2, 1, 2)]
    with art.load_engine("openvino", "fp32", performance_hint="throughput", num_requests=2) as engine:
        expected = [engine.infer(b) for b in batches]
        got = list(engine.infer_many(iter(batches)))
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * np.abs(e).max())


def test_engine_options(plain_artifact, held_out_3d) -> None:
    art = Artifact.open(plain_artifact)
    with art.load_engine("openvino", "fp32", num_threads=1, performance_hint="latency") as engine:
        assert engine.num_threads == 1
        with pytest.raises(InputError, match="channels|shape"):
            engine.infer(np.zeros((1, 2, *TILE_3D), np.float32))
    with pytest.raises(EbaiError, match="closed"):
        engine.infer(held_out_3d)
    with pytest.raises(InputError, match="unknown OpenVINO engine option"):
        art.load_engine("openvino", "fp32", threads=2)
    with pytest.raises(InputError, match="inference precision"):
        art.load_engine("openvino", "fp32", inference_precision="int4")
    with pytest.raises(InputError, match="performance hint"):
        art.load_engine("openvino", "fp32", performance_hint="fast")


def test_fp16_stores_half_size_weights(
    backend, plain_unet, spec_3d, calibration_3d, held_out_3d, onnx_file, tmp_path
) -> None:
    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    sizes = {}
    for precision in ("fp32", "fp16"):
        lowering = backend.lower(
            onnx_path, tmp_path / precision, precision=precision, input_spec=spec_3d, calibration=[]
        )
        assert lowering.record["weights"] == precision
        sizes[precision] = (tmp_path / precision / "model.bin").stat().st_size
        with backend.load(tmp_path / precision, lowering, inference_precision="f32") as engine:
            assert pearson(engine.infer(held_out_3d), run_torch(plain_unet, held_out_3d)) >= 0.9999
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


def test_accuracy_control_fallback(
    backend, plain_unet, spec_3d, calibration_3d, held_out_3d, onnx_file, tmp_path
) -> None:
    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    validation = [(held_out_3d[i : i + 1], run_torch(plain_unet, held_out_3d[i : i + 1])) for i in range(3)]
    lowering = backend.lower_with_accuracy_control(
        onnx_path,
        tmp_path,
        precision="int8",
        input_spec=spec_3d,
        calibration=calibration_3d,
        validation=validation,
        metric=pearson,
        max_drop=0.005,
        options={"preset": "performance"},
    )
    assert lowering is not None and lowering.options["accuracy_control"] is True
    assert lowering.record["max_drop"] == 0.005 and lowering.record["validation_batches"] == 3
    with backend.load(tmp_path, lowering) as engine:
        assert pearson(engine.infer(held_out_3d), run_torch(plain_unet, held_out_3d)) >= 0.99
    assert (
        backend.lower_with_accuracy_control(
            onnx_path,
            tmp_path / "x",
            precision="fp32",
            input_spec=spec_3d,
            calibration=[],
            validation=validation,
            metric=pearson,
            max_drop=0.01,
        )
        is None
    )


def test_lowering_refuses_bad_requests(backend, plain_unet, spec_3d, calibration_3d, onnx_file, tmp_path) -> None:
    from ebai.core import InputSpec

    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    with pytest.raises(InputError, match="precision 'int4'"):
        backend.lower(onnx_path, tmp_path / "a", precision="int4", input_spec=spec_3d, calibration=[])
    with pytest.raises(InputError, match="no calibration|none were given"):
        backend.lower(onnx_path, tmp_path / "b", precision="int8", input_spec=spec_3d, calibration=[])
    with pytest.raises(InputError, match="preset"):
        backend.lower(
            onnx_path,
            tmp_path / "c",
            precision="int8",
            input_spec=spec_3d,
            calibration=calibration_3d,
            options={"preset": "fast"},
        )
    with pytest.raises(InputError, match="takes only the option"):
        backend.lower(
            onnx_path, tmp_path / "d", precision="fp32", input_spec=spec_3d, calibration=[], options={"preset": "mixed"}
        )
    with pytest.raises(InputError, match="input spec says 2"):
        backend.lower(
            onnx_path, tmp_path / "e", precision="fp32", input_spec=InputSpec("bczyx", 2, TILE_3D), calibration=[]
        )
    with pytest.raises(InputError, match="does not exist"):
        backend.lower(tmp_path / "missing.onnx", tmp_path / "f", precision="fp32", input_spec=spec_3d, calibration=[])
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="cannot convert"):
        backend.lower(tmp_path / "junk.onnx", tmp_path / "g", precision="fp32", input_spec=spec_3d, calibration=[])


@pytest.mark.parametrize("damage", ["xml", "bin"])
def test_corrupt_ir_is_refused_in_one_line(plain_artifact, tmp_path, damage) -> None:
    """A damaged IR is refused with one line, even when the manifest's hashes were made to match."""
    import shutil

    from ebai.core.artifact import MANIFEST, sha256_file
    from ebai.core.manifest import Manifest

    copy = tmp_path / "damaged.ebai"
    shutil.copytree(plain_artifact, copy)
    target = copy / "openvino-fp32" / f"model.{damage}"
    if damage == "xml":
        target.write_text("<?xml version='1.0'?><net name='x' version='11'><layers><layer id='0'", encoding="utf-8")
    else:
        target.write_bytes(target.read_bytes()[:100])
    # the hash check catches it first ...
    with pytest.raises(ArtifactError, match="sha256"):
        Artifact.open(copy)
    # ... and OpenVINO's own failure is also turned into one clear line
    manifest = Manifest.from_dict(__import__("json").loads((copy / MANIFEST).read_text()))
    fixed = manifest.with_files({**manifest.files, f"openvino-fp32/model.{damage}": sha256_file(target)})
    (copy / MANIFEST).write_text(fixed.to_json())
    art = Artifact.open(copy)
    with pytest.raises(EbaiError) as info:
        art.load_engine("openvino", "fp32")
    message = str(info.value)
    assert "\n" not in message and "model.xml" in message and "recreate" in message


def test_engine_from_in_memory_model(held_out_3d) -> None:
    import openvino as ov
    from openvino import opset13 as ops

    param = ops.parameter(ov.PartialShape([-1, 1, *TILE_3D]), ov.Type.f32)
    model = ov.Model([ops.multiply(param, ops.constant(np.float32(2.0)))], [param])
    with OpenVINOEngine(model, inference_precision="f32") as engine:
        np.testing.assert_allclose(engine(held_out_3d), 2 * held_out_3d)
        assert "in-memory" in repr(engine)


def test_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ebai.openvino, ebai.openvino._backend, ebai.openvino._engine, ebai.openvino._quantization, "
        "ebai.openvino._deconvolution; from ebai.openvino import OpenVINOBackend; OpenVINOBackend().available(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorrt', 'pycuda')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_missing_file_gives_artifact_error(tmp_path) -> None:
    from ebai.core.interfaces import Lowering

    with pytest.raises(ArtifactError, match="missing"):
        OpenVINOBackend().load(Path(tmp_path), Lowering("openvino", "fp32", ("model.xml", "model.bin"), "model.xml"))


def test_nncf_progress_bars_follow_ebai_progress(monkeypatch, capfd) -> None:
    """EBAI_PROGRESS=0 silences NNCF's bars as well as ebai's; rich's console is restored after."""
    import openvino as ov
    import rich
    from openvino import opset13 as ops

    from ebai.openvino import _quantization as q

    param = ops.parameter([1, 4, 8, 8], ov.Type.f32)
    weights = ops.constant(np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32))
    conv = ops.convolution(param, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    model = ov.Model([ops.relu(conv)], [param])
    samples = [np.random.default_rng(i).normal(size=(1, 4, 8, 8)).astype(np.float32) for i in range(3)]
    monkeypatch.setenv("EBAI_PROGRESS", "0")
    capfd.readouterr()
    quantized = q.quantize(model, samples, q.QuantizeOptions({}, len(samples)))
    out, err = capfd.readouterr()
    assert q.count_fake_quantize(quantized) > 0
    assert "Statistics collection" not in out + err
    assert rich.get_console().quiet is False
