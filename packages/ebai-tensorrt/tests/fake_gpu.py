"""A fake ``tensorrt`` module and a fake ``cuda.bindings.runtime`` for CPU tests.

They implement the subset of the TensorRT >= 10 Python API and of cuda-python's runtime API that
ebai.tensorrt calls, with the same names, signatures and return conventions, so the real build,
cache, inspection and runner code runs unchanged. The "GPU" is host memory (ctypes buffers); an
"engine" is the ONNX bytes behind a header naming the GPU, compute capability and TensorRT version
it was built for, and it executes with ONNX Runtime on the CPU. Everything the code under test did
is recorded on a :class:`FakeState` for the tests to check.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import math
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PLAN_MAGIC = b"FAKEPLAN"


@dataclass
class FakeState:
    gpu_name: str = "NVIDIA Fake A100-SXM4-40GB"
    major: int = 8
    minor: int = 0
    device_count: int = 1
    device_error: str | None = None  # e.g. "cudaErrorNoDevice", "cudaErrorInsufficientDriver"
    trt_version: str = "10.99.1"
    build_fails: bool = False
    parse_fails: bool = False
    fallback_ops: set[str] = field(default_factory=set)
    builds: int = 0
    deserialized: int = 0
    foreign_deserialize_attempts: int = 0
    last_build: dict[str, Any] = field(default_factory=dict)
    timing_cache_in: list[bytes] = field(default_factory=list)
    executions: list[tuple[int, ...]] = field(default_factory=list)
    allocations: dict[int, Any] = field(default_factory=dict)
    host_allocations: dict[int, Any] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    inspected_with_context: bool = False
    weightless_ops: set[str] = field(default_factory=set)  # layers the inspector lists without "Weights"
    native_handle: bool = True  # cuda.bindings.utils.get_cuda_native_handle exists (cuda-python >= 12.8)
    stream_conversions: list[str] = field(default_factory=list)  # "native" or "int", per stream handed over

    @property
    def cc(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def trt_major(self) -> int:
        return int(self.trt_version.split(".")[0])

    def live(self) -> int:
        return len(self.allocations) + len(self.host_allocations) + len(self.streams)


# -- tensorrt ------------------------------------------------------------------------------------


def make_tensorrt(state: FakeState) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = state.trt_version

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            pass

    class Logger(ILogger):
        WARNING = ILogger.Severity.WARNING

        def __init__(self, min_severity: Any = None) -> None:
            super().__init__()

    if state.trt_major >= 11:  # EXPLICIT_BATCH is gone; STRONGLY_TYPED (0) is kept but ignored

        class NetworkDefinitionCreationFlag(enum.IntEnum):
            STRONGLY_TYPED = 0
            PREFER_AOT_PYTHON_PLUGINS = 1
    else:

        class NetworkDefinitionCreationFlag(enum.IntEnum):
            EXPLICIT_BATCH = 0
            STRONGLY_TYPED = 1

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class ProfilingVerbosity(enum.IntEnum):
        LAYER_NAMES_ONLY = 0
        NONE = 1
        DETAILED = 2

    class LayerInformationFormat(enum.IntEnum):
        ONELINE = 0
        JSON = 1

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1

    class BuilderFlag(enum.IntEnum):
        TF32 = 0

    def nptype(dtype: Any) -> type:
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dtype]

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.onnx: bytes = b""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            if state.parse_fails:
                self.errors.append("fake: unsupported operator FancyOp")
                return False
            try:
                model = onnx.load(path)
            except Exception as exc:
                self.errors.append(f"fake: cannot read {path}: {exc}")
                return False
            dims = lambda v: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)  # noqa: E731
            inits = {i.name for i in model.graph.initializer}
            self.network.inputs = [Tensor(v.name, dims(v)) for v in model.graph.input if v.name not in inits]
            self.network.outputs = [Tensor(v.name, dims(v)) for v in model.graph.output]
            self.network.onnx = model.SerializeToString()
            return True

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> bytes:
            return self.blob

    class Config:
        def __init__(self) -> None:
            self.pool: dict[Any, int] = {}
            self.profiles: list[Profile] = []
            self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
            self.cleared: list[Any] = []
            self.builder_optimization_level = 3
            self.timing: TimingCache | None = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pool[pool] = size

        def clear_flag(self, flag: Any) -> None:
            self.cleared.append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            state.timing_cache_in.append(bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            ok = not cache.blob or cache.blob.startswith(f"FAKETIMING:{state.gpu_name}".encode())
            if ok:
                self.timing = cache
            return ok

        def get_timing_cache(self) -> TimingCache | None:
            return self.timing

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            state.last_build = {
                "flags": network.flags,
                "workspace": config.pool.get(MemoryPoolType.WORKSPACE),
                "profiles": [p.shapes for p in config.profiles],
                "verbosity": config.profiling_verbosity,
                "cleared": list(config.cleared),
                "optimization_level": config.builder_optimization_level,
            }
            if state.build_fails:
                self.logger.log(ILogger.Severity.ERROR, "fake: out of workspace memory")
                return None
            state.builds += 1
            if config.timing is not None:
                config.timing = TimingCache(f"FAKETIMING:{state.gpu_name}:{state.builds}".encode())
            header = {
                "gpu": state.gpu_name,
                "cc": state.cc,
                "trt": state.trt_version,
                "profile": {k: [list(s) for s in v] for k, v in config.profiles[0].shapes.items()},
                "outputs": {t.name: list(t.shape) for t in network.outputs},
            }
            return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            blob = bytes(blob)
            if not blob.startswith(PLAN_MAGIC):
                self.logger.log(ILogger.Severity.ERROR, "fake: serialization assertion failed (magic)")
                return None
            head, _, onnx_bytes = blob[len(PLAN_MAGIC) :].partition(b"\n")
            try:
                header = json.loads(head)
            except json.JSONDecodeError:
                self.logger.log(ILogger.Severity.ERROR, "fake: corrupt plan")
                return None
            if (header["gpu"], header["cc"], header["trt"]) != (state.gpu_name, state.cc, state.trt_version):
                state.foreign_deserialize_attempts += 1
                self.logger.log(ILogger.Severity.ERROR, "fake: engine plan built for another device/version")
                return None
            state.deserialized += 1
            return Engine(header, onnx_bytes)

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes) -> None:
            import onnx

            self.header, self.onnx_bytes = header, onnx_bytes
            self.model = onnx.load_from_string(onnx_bytes)
            self.input = next(iter(header["profile"]))
            self.output = next(iter(header["outputs"]))
            self._session = None

        @property
        def num_io_tensors(self) -> int:
            return 2

        def get_tensor_name(self, i: int) -> str:
            return [self.input, self.output][i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name == self.input else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.header["profile"][name]]

        def create_execution_context(self) -> Context:
            return Context(self)

        def create_engine_inspector(self) -> Inspector:
            return Inspector(self)

        def session(self) -> Any:
            if self._session is None:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                self._session = ort.InferenceSession(self.onnx_bytes, so, providers=["CPUExecutionProvider"])
            return self._session

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            lo, _, hi = self.engine.header["profile"][name]
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name == self.engine.input:
                return self.shapes.get(name, tuple(-1 for _ in self.engine.header["profile"][name][0]))
            out = self.engine.header["outputs"][name]
            batch = self.shapes.get(self.engine.input, (-1,))[0]
            return (batch, *out[1:])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int) or stream_handle not in state.streams:
                raise TypeError(f"execute_async_v3 needs a live stream handle as int, got {stream_handle!r}")
            shape = self.shapes[self.engine.input]
            n = math.prod(shape)
            src = (ctypes.c_float * n).from_address(self.addresses[self.engine.input])
            x = np.frombuffer(src, dtype=np.float32, count=n).reshape(shape).copy()
            sess = self.engine.session()
            y = np.ascontiguousarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], dtype=np.float32)
            ctypes.memmove(self.addresses[self.engine.output], y.ctypes.data, y.nbytes)
            state.executions.append(shape)
            return True

    class Inspector:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.execution_context: Context | None = None

        def get_engine_information(self, fmt: Any) -> str:
            assert fmt == LayerInformationFormat.JSON
            with_formats = self.execution_context is not None and self.engine.input in self.execution_context.shapes
            state.inspected_with_context = with_formats
            graph = self.engine.model.graph
            producer = {o: n for n in graph.node for o in n.output}
            inits = {i.name: i for i in graph.initializer}
            split = state.trt_major >= 11  # TensorRT 11 splits "Format/Datatype" into "Format" + "DataType"

            def tensor(name: str, fmt: str, layout: str, short: str) -> dict[str, Any]:
                if not with_formats:
                    return {"Name": name}
                if split:
                    return {"Name": name, "Format": layout, "DataType": short}
                return {"Name": name, "Format/Datatype": fmt}

            layers: list[dict[str, Any]] = [
                {
                    "Name": "Reformatting CopyNode for Input Tensor 0",
                    "LayerType": "Reformat",
                    "Inputs": [tensor("input", "Row major linear FP32", "Row major linear format (kLINEAR)", "Float")],
                }
            ]
            for node in graph.node:
                if node.op_type not in ("Conv", "ConvTranspose"):
                    continue
                w = producer.get(node.input[1])
                if node.op_type in state.fallback_ops:
                    dtype, layout, short = "Row major linear FP32", "Row major linear format (kLINEAR)", "Float"
                elif w is not None and w.op_type == "DequantizeLinear":
                    dtype = "Thirty-two wide channel vectorized row major Int8 format"
                    layout, short = "Thirty-two wide channel vectorized row major format (kCHW32)", "Int8"
                elif (node.input[1] in inits and inits[node.input[1]].data_type == 10) or (
                    w is not None and w.op_type == "Cast"
                ):
                    dtype = "Channel major FP16 format where channel % 8 == 0"
                    layout, short = "Channel major format where channel % 8 == 0 (kHWC8)", "Half"
                else:
                    dtype, layout, short = "Row major linear FP32", "Row major linear format (kLINEAR)", "Float"
                layer = {
                    "Name": f"{node.name} + Relu",
                    "LayerType": "CaskDeconvolution" if node.op_type == "ConvTranspose" else "CaskConvolution",
                    "Inputs": [tensor(node.input[0], dtype, layout, short)],
                    "Outputs": [tensor(node.output[0], dtype, layout, short)],
                    "ParameterType": "Deconvolution" if node.op_type == "ConvTranspose" else "Convolution",
                    "Weights": {"Type": short, "Count": 1},
                    "TacticName": "fake_kernel",
                }
                if node.op_type in state.weightless_ops:
                    del layer["Weights"]
                layers.append(layer)
            if split:
                io_tensors = [{"Name": n, "DataType": "Float"} for n in (self.engine.input, self.engine.output)]
                return json.dumps({"Layers": layers, "I/O Tensors": io_tensors})
            return json.dumps({"Layers": layers, "Bindings": [self.engine.input, self.engine.output]})

    for obj in (
        ILogger,
        Logger,
        NetworkDefinitionCreationFlag,
        MemoryPoolType,
        ProfilingVerbosity,
        LayerInformationFormat,
        TensorIOMode,
        DataType,
        BuilderFlag,
        Builder,
        OnnxParser,
        Runtime,
    ):
        setattr(trt, obj.__name__, obj)
    trt.nptype = nptype
    return trt


# -- cuda.bindings.runtime -----------------------------------------------------------------------


def make_cudart(state: FakeState) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings.runtime", None)

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2
        cudaErrorInsufficientDriver = 35
        cudaErrorNoDevice = 100
        cudaErrorInvalidDevice = 101

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:
        def __init__(self, handle: int) -> None:
            self.handle = handle

        def __int__(self) -> int:  # deprecated in cuda-bindings 13; recorded so tests see which path ran
            state.stream_conversions.append("int")
            return self.handle

    ok = cudaError_t.cudaSuccess
    messages = {
        cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
        cudaError_t.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
        cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    }

    def cudaGetErrorString(err):
        return ok, messages.get(err, b"unknown error")

    def cudaGetDeviceCount():
        if state.device_error:
            return cudaError_t[state.device_error], 0
        return ok, state.device_count

    def cudaSetDevice(i):
        return (ok,) if 0 <= i < state.device_count else (cudaError_t.cudaErrorInvalidDevice,)

    def cudaGetDeviceProperties(i):
        name = state.gpu_name.encode() + b"\x00" * 8
        return ok, types.SimpleNamespace(name=name, major=state.major, minor=state.minor, totalGlobalMem=40 << 30)

    def cudaDriverGetVersion():
        return ok, 12040

    def _alloc(table: dict, n: int) -> tuple:
        buf = ctypes.create_string_buffer(n)
        ptr = ctypes.addressof(buf)
        table[ptr] = buf
        return ok, ptr

    def cudaMalloc(n):
        return _alloc(state.allocations, n)

    def cudaMallocHost(n):
        return _alloc(state.host_allocations, n)

    def cudaFree(ptr):
        state.allocations.pop(ptr)
        return (ok,)

    def cudaFreeHost(ptr):
        state.host_allocations.pop(ptr)
        return (ok,)

    def cudaStreamCreate():
        handle = 0x5000 + len(state.streams) + 1
        state.streams.add(handle)
        return ok, cudaStream_t(handle)

    def cudaStreamDestroy(stream):
        state.streams.remove(stream.handle)
        return (ok,)

    def cudaStreamSynchronize(stream):
        assert stream.handle in state.streams
        return (ok,)

    def _owned(ptr: int, n: int) -> bool:
        for table in (state.allocations, state.host_allocations):
            for base, buf in table.items():
                if base <= ptr and ptr + n <= base + len(buf):
                    return True
        return False

    def cudaMemcpyAsync(dst, src, n, kind, stream):
        assert stream.handle in state.streams
        assert _owned(dst, n) and _owned(src, n), "copy outside allocated memory"
        want = (
            (dst in state.allocations) if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else (src in state.allocations)
        )
        assert want, "copy direction does not match the device buffer"
        ctypes.memmove(dst, src, n)
        return (ok,)

    for name, obj in list(locals().items()):
        if name.startswith("cuda"):
            setattr(rt, name, obj)
    return rt


def install(monkeypatch: Any, state: FakeState, *, tensorrt: bool = True, cuda: bool = True) -> None:
    """Put the fakes in ``sys.modules`` (``None`` entries make the import fail like a missing package)."""
    if tensorrt:
        monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(state))
    else:
        monkeypatch.setitem(sys.modules, "tensorrt", None)
    if cuda:
        rt = make_cudart(state)
        pkg = types.ModuleType("cuda")
        pkg.__path__ = []
        pkg.__spec__ = importlib.machinery.ModuleSpec("cuda", None, is_package=True)
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings", None, is_package=True)
        bindings.runtime = rt
        pkg.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda", pkg)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
        if state.native_handle:
            utils = types.ModuleType("cuda.bindings.utils")
            utils.__spec__ = importlib.machinery.ModuleSpec("cuda.bindings.utils", None)

            def get_cuda_native_handle(obj: Any) -> int:
                state.stream_conversions.append("native")
                return obj.handle

            utils.get_cuda_native_handle = get_cuda_native_handle
            bindings.utils = utils
            monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
        else:
            monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)
    else:
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.bindings.utils", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)
