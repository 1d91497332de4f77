"""On a real NVIDIA GPU with TensorRT: build, run, cache and inspect engines for the test U-Net.

Marked ``gpu``; each test skips with the reason (no TensorRT, no cuda-python, no GPU, driver too
old) when this machine cannot run TensorRT.
"""

from __future__ import annotations

import numpy as np
import pytest

from ebai.tensorrt import TensorRTBackend
from ebai.tensorrt._accuracy import run_onnx

pytestmark = pytest.mark.gpu


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


@pytest.fixture(scope="session")
def real_gpu():
    from ebai.tensorrt._plugin import backend

    avail = backend.is_available()
    if not avail:
        pytest.skip(f"TensorRT cannot run here: {avail.reason}")
    return True


@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.999), ("fp16", 0.99), ("int8", 0.98)])
def test_engine_matches_onnxruntime_and_torch(
    real_gpu, tmp_path, unet_onnx, spec, calibration, held_out, precision, floor
):
    target = tmp_path / "m.ebai" / f"tensorrt-{precision}"
    backend = TensorRTBackend()
    lowering = backend.lower(unet_onnx, target, precision=precision, input_spec=spec, calibration=calibration)
    x, y_torch = held_out
    with backend.load(target, lowering, max_batch=4) as engine:
        y = engine.infer(x)
        report = engine.layer_report
        assert engine.build_info["source"] == "built"
    assert y.shape == y_torch.shape and y.dtype == np.float32
    assert pearson(y, run_onnx(target / lowering.entry, x)) >= floor
    assert pearson(y, y_torch) >= floor
    assert report.detailed and report.layers
    print(f"{precision}: {report.summary()}")  # the layer precisions, for the record (pytest -s)
    with backend.load(target, lowering, max_batch=4) as engine:
        assert engine.build_info["source"] == "cache"
        np.testing.assert_allclose(engine.infer(x), y, rtol=1e-3, atol=1e-3)


def test_int8_engine_runs_its_convolutions_in_int8(real_gpu, tmp_path, unet_onnx, spec, calibration):
    target = tmp_path / "m.ebai" / "tensorrt-int8"
    backend = TensorRTBackend()
    lowering = backend.lower(unet_onnx, target, precision="int8", input_spec=spec, calibration=calibration)
    with backend.load(target, lowering) as engine:
        report = engine.layer_report
    assert report.counts.get("int8", 0) >= 1, report.summary()
