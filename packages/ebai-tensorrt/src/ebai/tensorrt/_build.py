"""Building a TensorRT engine from the lowered ONNX, with the TensorRT >= 10 Python API.

The network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on TensorRT 10;
always on, the flag deprecated and ignored, from TensorRT 11): every layer runs in the type the ONNX gives it, so no precision
builder flag is set (TensorRT 11 removed INT8 and FP16 flags; "use explicit quantization with
strong typing, precision-control build flags are not required and should not be specified").
One optimization profile covers the dynamic batch (min/opt/max batch over the tile shape), the
workspace is capped through ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``, and a timing
cache shortens rebuilds on the same GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ebai.core.errors import BackendUnavailableError, InputError, MissingDependencyError
from ebai.tensorrt._inspect import LayerReport, parse_engine_information
from ebai.tensorrt._plugin import INSTALL

__all__ = [
    "BUILD_OPTIONS",
    "BuildSettings",
    "build_serialized",
    "deserialize",
    "import_tensorrt",
    "inspect_engine",
    "make_logger",
]

logger = logging.getLogger("ebai")

#: Load/lower options that change the engine (and therefore its cache key), with defaults.
BUILD_OPTIONS: Mapping[str, Any] = {
    "min_batch": 1,
    "opt_batch": 4,
    "max_batch": 8,
    "workspace_mb": 2048,
    "tf32": True,
    "optimization_level": None,
}


def import_tensorrt() -> ModuleType:
    """Import ``tensorrt`` (>= 10), or raise :class:`MissingDependencyError` with the pip line."""
    try:
        import tensorrt
    except ImportError as exc:
        msg = f"TensorRT is not installed ({exc}): {INSTALL}"
        raise MissingDependencyError(msg) from exc
    version = str(getattr(tensorrt, "__version__", "0"))
    if tensorrt_major(tensorrt) < 10:
        msg = f"TensorRT {version} is too old (ebai needs TensorRT >= 10 for strongly typed explicit quantization): {INSTALL}"
        raise MissingDependencyError(msg)
    return tensorrt


def make_logger(trt: ModuleType) -> Any:
    """Make a TensorRT logger that forwards to the ``ebai`` logger and keeps errors for messages."""
    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.ERROR,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
        sev.INFO: logging.DEBUG,
        sev.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity, logging.DEBUG)
            if level >= logging.ERROR:
                self.errors.append(str(msg))
            logger.log(level, "TensorRT: %s", msg)

    return _Logger()


@dataclass(frozen=True)
class BuildSettings:
    """Everything besides the ONNX, GPU and TensorRT version that decides the engine.

    Attributes
    ----------
    input_shape
        Shape of one sample, ``(C, *tile)``: the profile's non-batch dimensions.
    min_batch, opt_batch, max_batch
        The optimization profile over the batch; ``opt_batch`` is the batch tuned for (the tiler's
        batch size), batches above ``max_batch`` are split by the engine.
    workspace_mb
        Cap of TensorRT's scratch memory pool (MiB).
    tf32
        Allow TF32 for fp32 layers (TensorRT's default).
    optimization_level
        ``builder_optimization_level`` (0-5, TensorRT's default 3 when ``None``).
    """

    input_shape: tuple[int, ...]
    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    workspace_mb: int = 2048
    tf32: bool = True
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            msg = (
                f"TensorRT batch profile must satisfy 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}: fix the load options"
            )
            raise InputError(msg)
        if self.workspace_mb < 16:
            msg = f"workspace_mb={self.workspace_mb} is too small for TensorRT: give at least 16 (MiB)"
            raise InputError(msg)
        if not self.input_shape or any(int(d) < 1 for d in self.input_shape):
            msg = f"input shape {self.input_shape} is not a valid (C, *tile): re-lower the model"
            raise InputError(msg)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], input_shape: Sequence[int]) -> BuildSettings:
        """Read the settings from lowering/load options (unknown keys are the caller's concern)."""
        values = {k: options.get(k, default) for k, default in BUILD_OPTIONS.items()}
        level = values["optimization_level"]
        return cls(
            input_shape=tuple(int(d) for d in input_shape),
            min_batch=int(values["min_batch"]),
            opt_batch=int(values["opt_batch"]),
            max_batch=int(values["max_batch"]),
            workspace_mb=int(values["workspace_mb"]),
            tf32=bool(values["tf32"]),
            optimization_level=None if level is None else int(level),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-stable form (lists, not tuples): part of the cache key and header."""
        return {
            "input_shape": list(self.input_shape),
            "min_batch": self.min_batch,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
            "workspace_mb": self.workspace_mb,
            "tf32": self.tf32,
            "optimization_level": self.optimization_level,
        }

    def profile(
        self, name: str, network_shape: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of input ``name`` whose network shape is ``network_shape`` (-1 = dynamic)."""
        dims = [int(d) for d in network_shape]
        if len(dims) != len(self.input_shape) + 1:
            msg = f"TensorRT sees input {name!r} with shape {tuple(dims)} but the lowering recorded (N, {self.input_shape}): re-lower the model"
            raise InputError(msg)
        tail = []
        for have, want in zip(dims[1:], self.input_shape, strict=True):
            if have not in (-1, want):
                msg = f"input {name!r} has fixed shape {tuple(dims)} which does not hold samples of {self.input_shape}: re-export the model"
                raise InputError(msg)
            tail.append(want)
        if dims[0] != -1:  # a fixed batch: the profile can only be that batch
            return (dims[0], *tail), (dims[0], *tail), (dims[0], *tail)
        return (self.min_batch, *tail), (self.opt_batch, *tail), (self.max_batch, *tail)


def network_flags(trt: ModuleType) -> int:
    """Network creation flags: strongly typed on TensorRT 10 (``1 << STRONGLY_TYPED``, which is 2).

    TensorRT 11 builds every network strongly typed and keeps the flag (value 0) only for API
    compatibility, ignored and deprecated, so nothing is passed there.
    """
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strong is None or tensorrt_major(trt) >= 11:
        return 0
    return 1 << int(strong)


def tensorrt_major(trt: ModuleType) -> int:
    """Major version of the imported TensorRT (0 when it cannot be read)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def _first_error(trt_logger: Any, default: str) -> str:
    errors = getattr(trt_logger, "errors", [])
    return errors[0] if errors else default


def build_serialized(
    trt: ModuleType,
    trt_logger: Any,
    onnx_path: Path,
    settings: BuildSettings,
    timing_cache: bytes = b"",
) -> tuple[bytes, bytes]:
    """Parse ``onnx_path`` and build a serialized engine; return ``(engine, timing_cache)`` bytes.

    Raises :class:`BackendUnavailableError` with TensorRT's first error when parsing or building fails.
    """
    errors = getattr(trt_logger, "errors", None)
    if isinstance(errors, list):  # only this build's errors explain its failure (not a cached engine's)
        errors.clear()
    builder = trt.Builder(trt_logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0] if errors else _first_error(trt_logger, "no error message")
        msg = f"TensorRT {trt.__version__} cannot parse {onnx_path.name} ({first}): check the ONNX opset and operators TensorRT supports"
        raise BackendUnavailableError(msg)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not settings.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = settings.profile(tensor.name, tuple(tensor.shape))
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache)
    if not config.set_timing_cache(cache, False):
        logger.info("stored TensorRT timing cache does not match this GPU/TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        first = _first_error(trt_logger, "see the log with --debug")
        msg = f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name} ({first}): try a larger workspace_mb or a smaller max_batch"
        raise BackendUnavailableError(msg)
    logger.info("TensorRT engine for %s built in %.1f s", onnx_path.name, seconds)
    new_cache = config.get_timing_cache()
    blob = bytes(new_cache.serialize()) if new_cache is not None else b""
    return bytes(serialized), blob


def deserialize(runtime: Any, engine_bytes: bytes) -> Any | None:
    """Deserialize an engine; ``None`` when TensorRT refuses it (it logs why)."""
    try:
        return runtime.deserialize_cuda_engine(engine_bytes)
    except Exception as exc:  # some TensorRT versions raise instead of returning None
        logger.warning("TensorRT could not deserialize the engine: %s", exc)
        return None


def inspect_engine(trt: ModuleType, engine: Any, context: Any, target: str) -> LayerReport:
    """Per-layer precision of ``engine`` (``context`` must have its input shapes set)."""
    try:
        inspector = engine.create_engine_inspector()
        inspector.execution_context = context
        text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    except Exception as exc:  # a report must never stop the engine from running
        logger.warning("TensorRT engine inspector failed (%s); layer precisions are not reported", exc)
        return LayerReport(target=target, detailed=False)
    report = parse_engine_information(str(text), target)
    if report.fallbacks:
        logger.warning(
            "TensorRT runs %d compute layer(s) above %s: %s",
            len(report.fallbacks),
            target,
            ", ".join(report.fallbacks[:5]),
        )
    return report
