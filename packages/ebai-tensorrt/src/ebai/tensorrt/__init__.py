"""ebai.tensorrt: NVIDIA GPU lowering and engines for ebai artifacts.

Lowering writes ONNX files and needs neither a GPU nor TensorRT: ``model.int8.qdq.onnx`` (explicit
symmetric int8 quantization, per-channel weights, per-tensor activations), ``model.fp16.onnx``
(fp16 with fp32 input/output) or ``model.fp32.onnx``. On the target GPU, :meth:`TensorRTBackend.load`
builds a strongly typed TensorRT (>= 10) engine from that file, caches it keyed by GPU model, compute
capability and TensorRT version, reports each layer's precision, and returns a
:class:`TensorRTEngine`. TensorRT and the CUDA bindings come with ``pip install 'ebai-tensorrt[cu12]'``
(or ``[cu13]``) and are imported only when an engine is loaded.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebai-tensorrt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from ebai.tensorrt._backend import ENTRY_FILES, TensorRTBackend
from ebai.tensorrt._cache import DeviceIdentity, EngineStore, cache_key
from ebai.tensorrt._engine import TensorRTEngine
from ebai.tensorrt._fp16 import convert_fp16
from ebai.tensorrt._inspect import LayerInfo, LayerReport, parse_engine_information
from ebai.tensorrt._qdq import describe_qdq, quantize_int8, tensorrt_qdq_problems

__all__ = [
    "ENTRY_FILES",
    "DeviceIdentity",
    "EngineStore",
    "LayerInfo",
    "LayerReport",
    "TensorRTBackend",
    "TensorRTEngine",
    "__version__",
    "cache_key",
    "convert_fp16",
    "describe_qdq",
    "parse_engine_information",
    "quantize_int8",
    "tensorrt_qdq_problems",
]
