"""Regression: int8 for OpenVINO is NNCF applied to the OpenVINO model, not a QDQ ONNX run through OpenVINO.

The case that set the rule: on one 3D U-Net (BatchNorm, ReLU, transposed convolutions, skip
concatenations, dynamic batch) a QDQ ONNX kept Pearson 0.998 in ONNX Runtime but fell to 0.60 in
OpenVINO, while NNCF on the OpenVINO model kept 0.999. This test pins the NNCF route on a net of
that kind, and measures the QDQ-through-OpenVINO route beside it (reported as test properties and
printed with ``-s``). With this small net the QDQ drop does NOT reproduce (measured: Pearson ~0.998
in both ONNX Runtime and OpenVINO, see the package README), so it is measured, not asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
from openvino_nets import pearson, run_torch

from ebai.openvino import OpenVINOBackend, OpenVINOEngine


@pytest.mark.parametrize("deconv_to_conv", [True, False])
def test_nncf_on_openvino_int8_keeps_pearson(
    plain_unet, spec_3d, calibration_3d, held_out_3d, onnx_file, tmp_path, deconv_to_conv
) -> None:
    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    backend = OpenVINOBackend()
    lowering = backend.lower(
        onnx_path,
        tmp_path,
        precision="int8",
        input_spec=spec_3d,
        calibration=calibration_3d,
        options={"deconv_to_conv": deconv_to_conv},
    )
    assert lowering.record["deconvolutions_rewritten"] == (2 if deconv_to_conv else 0)
    reference = run_torch(plain_unet, held_out_3d)
    with backend.load(tmp_path, lowering) as engine:
        batch = engine.infer(held_out_3d)
        singles = np.concatenate([engine.infer(held_out_3d[i : i + 1]) for i in range(len(held_out_3d))])
    assert pearson(batch, reference) >= 0.99
    assert pearson(singles, reference) >= 0.99  # dynamic batch: same fidelity one tile at a time


def test_qdq_through_openvino_is_measured(
    plain_unet, calibration_3d, held_out_3d, onnx_file, tmp_path, record_property
) -> None:
    ort = pytest.importorskip("onnxruntime")
    quantization = pytest.importorskip("onnxruntime.quantization")
    import openvino as ov

    onnx_path = onnx_file(plain_unet, "plain", calibration_3d[0])
    samples = [batch[i : i + 1] for batch in calibration_3d for i in range(len(batch))]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"input": s} for s in samples])

        def get_next(self) -> dict | None:
            return next(self._items, None)

    qdq = tmp_path / "qdq.onnx"
    quantization.quantize_static(
        str(onnx_path),
        str(qdq),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
    )
    reference = run_torch(plain_unet, held_out_3d)
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    in_ort = pearson(session.run(None, {session.get_inputs()[0].name: held_out_3d})[0], reference)
    with OpenVINOEngine(ov.convert_model(str(qdq))) as engine:
        in_openvino = pearson(engine.infer(held_out_3d), reference)
    record_property("qdq_pearson_onnxruntime", round(in_ort, 4))
    record_property("qdq_pearson_openvino", round(in_openvino, 4))
    print(f"QDQ ONNX, Pearson vs torch: ONNX Runtime {in_ort:.4f}, OpenVINO {in_openvino:.4f}")
    assert in_ort >= 0.99  # the QDQ file itself is sound; what OpenVINO makes of it is the measured part
    assert np.isfinite(in_openvino)
