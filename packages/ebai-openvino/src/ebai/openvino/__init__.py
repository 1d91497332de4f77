"""ebai.openvino: lower ONNX to OpenVINO IR (fp32, fp16, int8 through NNCF) and run it on the CPU.

Works without torch: it takes an fp32 ONNX plus calibration arrays and gives an engine that maps
numpy batches to numpy batches. OpenVINO and NNCF are imported when first used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebai-openvino")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from ebai.openvino._backend import LOAD_OPTIONS, OpenVINOBackend
from ebai.openvino._engine import HINTS, INFERENCE_PRECISIONS, OpenVINOEngine

__all__ = ["HINTS", "INFERENCE_PRECISIONS", "LOAD_OPTIONS", "OpenVINOBackend", "OpenVINOEngine", "__version__"]
