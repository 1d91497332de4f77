"""Engine build, cache and runner, exercised with fake ``tensorrt`` and ``cuda.bindings`` modules.

The fakes (fake_gpu.py) follow TensorRT's and cuda-python's Python APIs; an engine "built" by them
runs the ONNX with ONNX Runtime, so the runner's outputs can be compared with ONNX Runtime directly,
and every build, deserialization and allocation is counted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ebai_tensorrt_test_fake_gpu as fake_gpu
import numpy as np
import pytest

from ebai.core.errors import ArtifactError, BackendUnavailableError, InputError, MissingDependencyError
from ebai.tensorrt import LayerReport, TensorRTBackend
from ebai.tensorrt._accuracy import run_onnx
from ebai.tensorrt._cache import MAGIC, EngineStore


@pytest.fixture(scope="module")
def lowered(unet_onnx, spec, calibration, tmp_path_factory):
    """An artifact-like folder with fp32 and int8 targets (the artifact root is the parent)."""
    root = tmp_path_factory.mktemp("artifact") / "model.ebai"
    backend = TensorRTBackend()
    out = {}
    for precision in ("fp32", "int8"):
        target = root / f"tensorrt-{precision}"
        out[precision] = (
            target,
            backend.lower(
                unet_onnx,
                target,
                precision=precision,
                input_spec=spec,
                calibration=calibration,
                options={"quantizer": "onnxruntime"} if precision == "int8" else {},
            ),
        )
    return root, out


@pytest.fixture
def artifact(lowered, tmp_path):
    """A fresh copy per test so cache files do not leak between tests."""
    import shutil

    root, targets = lowered
    copy = tmp_path / "model.ebai"
    shutil.copytree(root, copy)
    return copy, {p: (copy / t.name, low) for p, (t, low) in targets.items()}


def _load(artifact, precision="fp32", **options):
    _, targets = artifact
    directory, lowering = targets[precision]
    return TensorRTBackend().load(directory, lowering, **options)


def _cache_files(root: Path) -> list[Path]:
    return sorted((root / "cache" / "tensorrt").glob("*.engine"))


def _set_trt_version(state, version):
    state.trt_version = version
    sys.modules["tensorrt"].__version__ = version


def test_first_load_builds_with_profile_workspace_and_strong_typing(fake_state, artifact):
    with _load(artifact, "fp32", workspace_mb=512, max_batch=6) as engine:
        assert engine.build_info["source"] == "built" and fake_state.builds == 1
        build = fake_state.last_build
        assert build["flags"] == 2  # 1 << STRONGLY_TYPED, whose value is 1 in TensorRT 10
        assert build["workspace"] == 512 << 20
        assert build["profiles"] == [{"input": ((1, 1, 16, 32, 32), (4, 1, 16, 32, 32), (6, 1, 16, 32, 32))}]
        assert build["verbosity"] == 2  # DETAILED
        assert build["cleared"] == []  # TF32 stays allowed by default
    files = _cache_files(artifact[0])
    assert len(files) == 1 and files[0].name.startswith("tensorrt-fp32__NVIDIA-Fake-A100-SXM4-40GB_sm80_trt10.99.1__")
    assert files[0].read_bytes().startswith(MAGIC)


def test_runner_matches_onnxruntime_and_splits_large_batches(fake_state, artifact, held_out):
    x, _ = held_out
    x = np.concatenate([x, x[:1]])  # 5 tiles
    directory, lowering = artifact[1]["fp32"]
    expected = run_onnx(directory / lowering.entry, x)
    with _load(artifact, "fp32", max_batch=2, opt_batch=2) as engine:
        y = engine.infer(x)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        assert y.dtype == np.float32 and y.shape == (5, 1, 16, 32, 32)
        assert fake_state.executions[-3:] == [(2, 1, 16, 32, 32), (2, 1, 16, 32, 32), (1, 1, 16, 32, 32)]
        np.testing.assert_allclose(engine(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)  # Engine.__call__


def test_min_batch_pads_and_drops_the_padding(fake_state, artifact, held_out):
    x, _ = held_out
    directory, lowering = artifact[1]["fp32"]
    with _load(artifact, "fp32", min_batch=2, opt_batch=2, max_batch=4) as engine:
        y = engine.infer(x[:1])
    assert fake_state.executions[-1] == (2, 1, 16, 32, 32)
    np.testing.assert_allclose(y, run_onnx(directory / lowering.entry, x[:1]), rtol=1e-5, atol=1e-5)


def test_close_frees_every_buffer_and_stream(fake_state, artifact, held_out):
    engine = _load(artifact, "fp32")
    assert fake_state.live() == 5  # 2 device buffers, 2 pinned host buffers, 1 stream
    engine.close()
    engine.close()  # idempotent
    assert fake_state.live() == 0
    with pytest.raises(InputError, match="was closed"):
        engine.infer(held_out[0])


def test_wrong_batch_shape_is_refused(fake_state, artifact):
    with _load(artifact, "fp32") as engine, pytest.raises(InputError, match=r"batch has shape \(1, 1, 8, 32, 32\)"):
        engine.infer(np.zeros((1, 1, 8, 32, 32), np.float32))


def test_second_load_comes_from_the_cache(fake_state, artifact, held_out):
    _load(artifact, "int8").close()
    builds, timing_before = fake_state.builds, list(fake_state.timing_cache_in)
    with _load(artifact, "int8") as engine:
        assert engine.build_info["source"] == "cache" and fake_state.builds == builds
        assert engine.layer_report.target == "int8" and engine.layer_report.detailed  # restored from the header
        engine.infer(held_out[0][:2])
    assert fake_state.timing_cache_in == timing_before  # no build, no timing cache read


def test_timing_cache_is_stored_and_reused(fake_state, artifact):
    _load(artifact, "fp32").close()
    _load(artifact, "int8").close()
    timing = sorted((artifact[0] / "cache" / "tensorrt").glob("timing__*.cache"))
    assert len(timing) == 1
    assert fake_state.timing_cache_in[0] == b"" and fake_state.timing_cache_in[1].startswith(b"FAKETIMING:")


@pytest.mark.parametrize(
    "change",
    [
        lambda s: setattr(s, "gpu_name", "NVIDIA Fake L4"),
        lambda s: setattr(s, "major", 9),
        lambda s: _set_trt_version(s, "10.99.2"),
    ],
    ids=["gpu-name", "compute-capability", "tensorrt-version"],
)
def test_engine_from_another_gpu_or_tensorrt_is_rebuilt_never_loaded(fake_state, artifact, change):
    _load(artifact, "fp32").close()
    change(fake_state)
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "built"
    assert fake_state.builds == 2 and fake_state.foreign_deserialize_attempts == 0
    assert len(_cache_files(artifact[0])) == 2  # each machine keeps its own engine


def test_foreign_engine_under_the_expected_name_is_refused_by_its_header(fake_state, artifact, caplog):
    _load(artifact, "fp32").close()
    (old,) = _cache_files(artifact[0])
    fake_state.gpu_name = "NVIDIA Fake L4"
    _load(artifact, "fp32").close()
    new = next(f for f in _cache_files(artifact[0]) if f != old)
    new.write_bytes(old.read_bytes())  # someone copied the A100 engine over the L4 one
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "built"
    assert fake_state.foreign_deserialize_attempts == 0 and fake_state.builds == 3
    assert "built for gpu_name='NVIDIA Fake A100-SXM4-40GB'" in caplog.text


def test_corrupt_cached_engine_is_rebuilt(fake_state, artifact, caplog):
    _load(artifact, "fp32").close()
    (path,) = _cache_files(artifact[0])
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the engine
    path.write_bytes(bytes(data))
    deserialized = fake_state.deserialized
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "built"
    assert fake_state.builds == 2 and fake_state.deserialized == deserialized + 1  # only the new engine
    assert "engine bytes are damaged" in caplog.text
    engine_bytes, header, reason = _read(path)
    assert reason == "" and engine_bytes is not None  # rewritten whole


def _read(path):
    return EngineStore.read(path, {})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_cache_files_are_rebuilt(fake_state, artifact, damage, caplog):
    _load(artifact, "fp32").close()
    (path,) = _cache_files(artifact[0])
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        path.write_bytes(data[:20] + b"{" + data[21:])
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "built"
    assert fake_state.builds == 2


def _replace_plan(path: Path, plan: bytes) -> None:
    """Put ``plan`` in a cache file with a matching header and checksum, recorded as built here.

    Recorded in the ledger (as after a driver update that TensorRT then refuses), so it reaches
    TensorRT, and only TensorRT can refuse it.
    """
    import hashlib

    from ebai.tensorrt._cache import _LEN

    data = path.read_bytes()
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    header = json.loads(data[start : start + hlen])
    header.update(engine_bytes=len(plan), engine_sha256=hashlib.sha256(plan).hexdigest())
    head = json.dumps(header).encode()
    path.write_bytes(MAGIC + _LEN.pack(len(head)) + head + plan)
    (EngineStore([]).ledger / header["engine_sha256"]).touch()


def test_engine_tensorrt_refuses_is_rebuilt(fake_state, artifact, caplog):
    """A cache file whose header and checksum are right but whose plan TensorRT rejects."""
    _load(artifact, "fp32").close()
    (path,) = _cache_files(artifact[0])
    _replace_plan(path, b"NOT A PLAN" * 10)
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "built"
    assert "could not be deserialized" in caplog.text and fake_state.builds == 2


def test_engine_not_built_here_is_rebuilt_not_deserialized(fake_state, artifact, caplog):
    """A forged cache file (consistent header and checksum) in the artifact's cache/ never reaches TensorRT."""
    import hashlib

    from ebai.tensorrt._cache import _LEN

    _load(artifact, "fp32").close()
    (path,) = _cache_files(artifact[0])
    data = path.read_bytes()
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    header = json.loads(data[start : start + hlen])
    plan = b"FORGED PLAN" * 10
    header.update(engine_bytes=len(plan), engine_sha256=hashlib.sha256(plan).hexdigest())
    head = json.dumps(header).encode()
    path.write_bytes(MAGIC + _LEN.pack(len(head)) + head + plan)
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "built"
    assert "it was not built on this machine" in caplog.text and "could not be deserialized" not in caplog.text
    assert fake_state.builds == 2


def test_build_options_change_the_key(fake_state, artifact):
    _load(artifact, "fp32").close()
    _load(artifact, "fp32", max_batch=16).close()
    assert fake_state.builds == 2 and len(_cache_files(artifact[0])) == 2


def test_layer_report_shows_silent_fallbacks(fake_state, artifact):
    fake_state.fallback_ops = {"ConvTranspose"}
    with _load(artifact, "int8") as engine:
        report = engine.layer_report
    assert fake_state.inspected_with_context  # input shapes were set, so formats were reported
    assert isinstance(report, LayerReport) and report.detailed
    assert report.counts == {"int8": 11, "fp32": 2}
    assert len(report.fallbacks) == 2 and all("+ Relu" in name for name in report.fallbacks)
    assert "2 not in int8" in report.summary()


def test_layer_report_of_a_clean_int8_engine(fake_state, artifact):
    with _load(artifact, "int8") as engine:
        assert engine.layer_report.counts == {"int8": 13} and engine.layer_report.fallbacks == ()


def test_unwritable_artifact_cache_falls_back_to_the_user_cache(fake_state, artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("EBAI_CACHE_DIR", str(tmp_path / "user-cache"))
    (artifact[0] / "cache").write_text("not a folder")  # the artifact's cache/ cannot be created
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["cache_file"].startswith(str(tmp_path / "user-cache" / "tensorrt"))
    with _load(artifact, "fp32") as engine:
        assert engine.build_info["source"] == "cache"
    assert fake_state.builds == 1


def test_cache_dir_option(fake_state, artifact, tmp_path):
    with _load(artifact, "fp32", cache_dir=tmp_path / "mine") as engine:
        assert Path(engine.build_info["cache_file"]).parent == tmp_path / "mine"
    assert not (artifact[0] / "cache").exists()


# -- errors ---------------------------------------------------------------------------------------


def test_no_tensorrt_names_the_install_line(monkeypatch, artifact):
    fake_gpu.install(monkeypatch, fake_gpu.FakeState(), tensorrt=False)
    with pytest.raises(
        MissingDependencyError, match=r"TensorRT is not installed .*pip install 'ebai-tensorrt\[cu12\]'"
    ):
        _load(artifact)


def test_no_cuda_bindings_names_the_install_line(monkeypatch, artifact):
    fake_gpu.install(monkeypatch, fake_gpu.FakeState(), cuda=False)
    with pytest.raises(MissingDependencyError, match=r"cuda-python.*pip install 'ebai-tensorrt\[cu12\]'"):
        _load(artifact)


def test_old_tensorrt_is_refused(fake_state, artifact):
    _set_trt_version(fake_state, "8.6.1")
    with pytest.raises(MissingDependencyError, match="TensorRT 8.6.1 is too old"):
        _load(artifact)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("cudaErrorNoDevice", "no usable NVIDIA GPU is visible"),
        ("cudaErrorInsufficientDriver", "NVIDIA driver is too old"),
    ],
)
def test_no_gpu_or_old_driver_is_one_clear_line(fake_state, artifact, error, message):
    fake_state.device_error = error
    with pytest.raises(BackendUnavailableError, match=message) as info:
        _load(artifact)
    assert "\n" not in str(info.value)


def test_second_gpu(fake_state, artifact, held_out):
    fake_state.device_count = 2
    with _load(artifact, "fp32", device=1) as engine:
        engine.infer(held_out[0][:1])
        assert engine.build_info["cuda_driver"] == "12.4"


def test_missing_device_index(fake_state, artifact):
    with pytest.raises(BackendUnavailableError, match="GPU 3 was asked for but CUDA sees 1"):
        _load(artifact, device=3)


def test_parse_and_build_failures_carry_tensorrt_s_message(fake_state, artifact):
    fake_state.parse_fails = True
    with pytest.raises(
        BackendUnavailableError, match="cannot parse model.fp32.onnx .fake: unsupported operator FancyOp"
    ):
        _load(artifact)
    fake_state.parse_fails, fake_state.build_fails = False, True
    with pytest.raises(BackendUnavailableError, match="failed to build an engine .*fake: out of workspace memory"):
        _load(artifact)
    assert _cache_files(artifact[0]) == []


def test_load_option_and_artifact_errors(fake_state, artifact):
    with pytest.raises(InputError, match="unknown TensorRT load option"):
        _load(artifact, workspace=1)
    directory, lowering = artifact[1]["fp32"]
    (directory / lowering.entry).unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        _load(artifact)


def test_fixed_batch_model_runs_in_chunks_of_its_batch(fake_state, tmp_path, unet_onnx, spec, held_out):
    import onnx

    model = onnx.load(str(unet_onnx))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2  # exported with a fixed batch of 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    target = tmp_path / "m.ebai" / "tensorrt-fp32"
    lowering = TensorRTBackend().lower(fixed, target, precision="fp32", input_spec=spec, calibration=[])
    x = held_out[0][:3]
    with TensorRTBackend().load(target, lowering) as engine:
        assert (engine.min_batch, engine.max_batch) == (2, 2)
        y = engine.infer(x)
    assert fake_state.last_build["profiles"] == [{"input": ((2, 1, 16, 32, 32),) * 3}]
    assert fake_state.executions[-2:] == [(2, 1, 16, 32, 32), (2, 1, 16, 32, 32)]
    np.testing.assert_allclose(y, run_onnx(unet_onnx, x), rtol=1e-5, atol=1e-5)


@pytest.fixture
def fake_trt11(monkeypatch) -> fake_gpu.FakeState:
    """A fake TensorRT 11: STRONGLY_TYPED is 0 (deprecated, ignored) and the inspector splits Format/DataType."""
    state = fake_gpu.FakeState(trt_version="11.1.0")
    fake_gpu.install(monkeypatch, state)
    return state


def test_tensorrt_11_gets_no_deprecated_strongly_typed_flag(fake_trt11, artifact):
    assert int(sys.modules["tensorrt"].NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    with _load(artifact, "fp32"):
        pass
    assert fake_trt11.last_build["flags"] == 0  # every TensorRT 11 network is strongly typed


@pytest.mark.parametrize("version", ["10.99.1", "11.1.0"])
def test_layer_report_reads_both_inspector_layouts(monkeypatch, artifact, version):
    state = fake_gpu.FakeState(trt_version=version, fallback_ops={"ConvTranspose"}, weightless_ops={"ConvTranspose"})
    fake_gpu.install(monkeypatch, state)
    with _load(artifact, "int8") as engine:
        report = engine.layer_report
    text = json.dumps(report.to_dict())
    assert "unknown" not in text  # every input/output format was read
    # the transposed convolutions list no weights: only their fp32 inputs/outputs reveal the fallback
    assert report.counts == {"int8": 11, "fp32": 2} and len(report.fallbacks) == 2


@pytest.mark.parametrize("native", [True, False])
def test_stream_goes_to_tensorrt_through_the_native_handle_where_it_exists(monkeypatch, artifact, held_out, native):
    state = fake_gpu.FakeState(native_handle=native)
    fake_gpu.install(monkeypatch, state)
    with _load(artifact, "fp32") as engine:
        engine.infer(held_out[0][:1])
    assert state.stream_conversions == (["native"] if native else ["int"])


def test_a_failed_build_reports_its_own_error_not_an_older_one(fake_state, artifact, caplog):
    _load(artifact, "fp32").close()
    (path,) = _cache_files(artifact[0])
    _replace_plan(path, b"NOT A PLAN" * 10)  # TensorRT logs an error when it refuses the cached plan
    fake_state.build_fails = True
    with pytest.raises(BackendUnavailableError) as info:
        _load(artifact, "fp32")
    assert "out of workspace memory" in str(info.value)
    assert "serialization assertion" not in str(info.value)  # the cached engine's error was logged before the build


def test_per_channel_int8_transposed_convolutions_need_tensorrt_10_2(fake_state, artifact):
    _set_trt_version(fake_state, "10.1.0")
    with pytest.raises(
        BackendUnavailableError, match=r"TensorRT 10.1.0 cannot build int8 transposed convolutions .*2 in this model"
    ):
        _load(artifact, "int8")
    assert fake_state.builds == 0
    with _load(artifact, "fp32"):  # no int8 scales: any TensorRT 10 builds it
        pass
    _set_trt_version(fake_state, "10.2.0")
    with _load(artifact, "int8"):
        pass


def test_comparison_rows_are_fp32_with_tf32_off_and_the_default_build(fake_state, artifact):
    variants = TensorRTBackend().comparison_variants()
    assert [v.key for v in variants] == ["f32", "default"]
    cleared = []
    for variant in variants:
        with _load(artifact, "fp32", **variant.options) as engine:
            assert engine.build_info["source"] == "built"
            cleared.append(fake_state.last_build["cleared"])
    # TF32 is cleared for the exact-fp32 row only; the default row is what TensorRT builds unasked
    assert cleared[0] != [] and cleared[1] == []
