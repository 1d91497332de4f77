"""Cache keys and cache files, without any GPU: what makes an engine valid, and what refuses it."""

from __future__ import annotations

import dataclasses

import pytest

from ebai.tensorrt import DeviceIdentity, EngineStore, cache_key
from ebai.tensorrt._cache import default_cache_dirs, user_cache_dir

A100 = DeviceIdentity("NVIDIA A100-SXM4-40GB", "8.0", "10.13.0.35")
BUILD = {
    "input_shape": [1, 16, 32, 32],
    "min_batch": 1,
    "opt_batch": 4,
    "max_batch": 8,
    "workspace_mb": 2048,
    "tf32": True,
    "optimization_level": None,
}


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(A100, gpu_name="NVIDIA L4"),
        dataclasses.replace(A100, compute_capability="8.6"),
        dataclasses.replace(A100, tensorrt_version="10.13.3.9"),
        dataclasses.replace(A100, tensorrt_version="11.0.0.1"),
    ],
    ids=["gpu-name", "compute-capability", "trt-patch", "trt-major"],
)
def test_key_changes_with_gpu_compute_capability_and_tensorrt(other):
    assert cache_key(other, "abc", BUILD) != cache_key(A100, "abc", BUILD)
    assert EngineStore.file_name("tensorrt-int8", other, cache_key(other, "abc", BUILD)) != EngineStore.file_name(
        "tensorrt-int8", A100, cache_key(A100, "abc", BUILD)
    )


def test_key_changes_with_the_onnx_and_the_build_settings_only():
    base = cache_key(A100, "abc", BUILD)
    assert cache_key(DeviceIdentity(*dataclasses.astuple(A100)), "abc", dict(BUILD)) == base
    assert cache_key(A100, "abd", BUILD) != base
    assert cache_key(A100, "abc", {**BUILD, "max_batch": 16}) != base
    assert cache_key(A100, "abc", {**BUILD, "workspace_mb": 1024}) != base


def test_file_name_is_readable():
    name = EngineStore.file_name("tensorrt-fp16", A100, "0123456789abcdef0123")
    assert name == "tensorrt-fp16__NVIDIA-A100-SXM4-40GB_sm80_trt10.13.0.35__0123456789abcdef.engine"


def test_write_then_read_roundtrip_and_field_checks(tmp_path):
    store = EngineStore([tmp_path])
    expected = store.expected_header(A100, "abc", BUILD)
    path = store.write("e.engine", {**expected, "layer_report": {"target": "int8"}}, b"PLAN" * 100)
    assert path == tmp_path / "e.engine"
    engine, header, reason = store.read(path, expected)
    assert (engine, reason) == (b"PLAN" * 100, "") and header["layer_report"] == {"target": "int8"}
    for field, value in [
        ("gpu_name", "NVIDIA L4"),
        ("compute_capability", "9.0"),
        ("tensorrt_version", "10.14"),
        ("onnx_sha256", "x"),
    ]:
        engine, _, reason = store.read(path, {**expected, field: value})
        assert engine is None and reason.startswith(f"built for {field}=")
    engine, _, reason = store.read(path, {**expected, "build": {**BUILD, "max_batch": 2}})
    assert engine is None and "build=" in reason


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: b"", "not an ebai engine cache file"),
        (lambda d: b"PLAN" + d, "not an ebai engine cache file"),
        (lambda d: d[:30], "truncated header"),
        (lambda d: d[:-1], "damaged"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "damaged"),
        (lambda d: d + b"x", "damaged"),
    ],
    ids=["empty", "bad-magic", "short", "truncated-engine", "flipped-byte", "extra-byte"],
)
def test_damaged_files_are_refused(tmp_path, mangle, reason):
    store = EngineStore([tmp_path])
    expected = store.expected_header(A100, "abc", BUILD)
    path = store.write("e.engine", expected, b"PLAN" * 100)
    path.write_bytes(mangle(path.read_bytes()))
    engine, _, why = store.read(path, expected)
    assert engine is None and reason in why


def test_find_skips_invalid_files_and_logs_why(tmp_path, caplog):
    first, second = tmp_path / "a", tmp_path / "b"
    store = EngineStore([first, second])
    expected = store.expected_header(A100, "abc", BUILD)
    EngineStore([second]).write("e.engine", expected, b"GOOD")
    first.mkdir()
    (first / "e.engine").write_bytes(b"junk")
    engine, _, path = store.find("e.engine", expected)
    assert engine == b"GOOD" and path == second / "e.engine"
    assert "not an ebai engine cache file" in caplog.text
    assert store.find("missing.engine", expected) is None


def test_write_goes_to_the_first_writable_folder(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    store = EngineStore([blocked / "cache", tmp_path / "ok"])
    assert store.write("e.engine", {}, b"x") == tmp_path / "ok" / "e.engine"
    assert EngineStore([blocked / "cache"]).write("e.engine", {}, b"x") is None


def test_timing_cache_roundtrip(tmp_path):
    store = EngineStore([tmp_path])
    assert store.read_timing(A100) == b""
    store.write_timing(A100, b"TIMINGS")
    assert store.read_timing(A100) == b"TIMINGS"
    assert store.read_timing(dataclasses.replace(A100, gpu_name="NVIDIA L4")) == b""


def test_default_cache_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("EBAI_CACHE_DIR", str(tmp_path / "u"))
    target = tmp_path / "m.ebai" / "tensorrt-int8"
    assert default_cache_dirs(target) == [tmp_path / "m.ebai" / "cache" / "tensorrt", tmp_path / "u" / "tensorrt"]
    assert default_cache_dirs(target, tmp_path / "x") == [tmp_path / "x"]
    monkeypatch.delenv("EBAI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "ebai"


def test_engine_not_built_here_is_never_handed_to_tensorrt(tmp_path):
    """A cache file with a valid header and matching sha256, shipped in an artifact's cache/, is rebuilt."""
    expected = EngineStore.expected_header(A100, "abc", BUILD)
    shipped = EngineStore([tmp_path / "artifact-cache"], ledger=tmp_path / "sender-ledger")
    shipped.write("e.engine", expected, b"FORGED-PLAN" * 10)  # recorded in the sender's ledger, not ours
    store = EngineStore([tmp_path / "artifact-cache"], ledger=tmp_path / "our-ledger")
    engine, _, reason = store.read(tmp_path / "artifact-cache" / "e.engine", expected)
    assert engine is not None and reason == ""  # header and bytes are self-consistent: a forger can do that
    assert store.find("e.engine", expected) is None  # but this machine did not build it
    store.write("e.engine", expected, b"OUR-PLAN" * 10)
    found = store.find("e.engine", expected)
    assert found is not None and found[0] == b"OUR-PLAN" * 10
