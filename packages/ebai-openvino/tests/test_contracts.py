"""The OpenVINO backend keeps the Backend contract, checked with the helper plugin authors use."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from ebai.core.testing import check_backend
from ebai.openvino import OpenVINOBackend


def test_openvino_keeps_the_backend_contract(plain_unet, spec_3d, calibration_3d, onnx_file, tmp_path):
    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    outputs = check_backend(
        OpenVINOBackend(), onnx_path, spec_3d, tmp_path, precisions=("fp32", "int8"), calibration=calibration_3d
    )
    fp32, int8 = outputs["fp32"], outputs["int8"]
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.95
    assert [v.key for v in OpenVINOBackend().comparison_variants()] == ["f32", "default"]


def test_the_contract_check_catches_a_broken_engine(plain_unet, spec_3d, calibration_3d, onnx_file, tmp_path):
    class BatchMixing(OpenVINOBackend):
        def load(self, directory, lowering, **options):
            engine = super().load(directory, lowering, **options)
            real = engine.infer
            engine.infer = lambda batch: real(batch) + batch.mean()  # results depend on the other tiles
            return engine

    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    with pytest.raises(AssertionError, match="batch axis is not independent"):
        check_backend(BatchMixing(), onnx_path, spec_3d, tmp_path)
