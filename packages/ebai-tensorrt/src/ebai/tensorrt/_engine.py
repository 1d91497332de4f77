"""The TensorRT runner: numpy batches in and out through pinned host memory, device buffers, one stream.

Buffers are allocated once, for the profile's ``max_batch``; a batch is copied into pinned host
memory, sent to the GPU asynchronously, run with ``execute_async_v3`` on the engine's stream and
copied back, then the stream is synchronised. Larger batches are split into ``max_batch`` chunks;
a chunk smaller than the profile's ``min_batch`` is padded with zeros and the padding dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ebai.core.errors import BackendUnavailableError, InputError
from ebai.core.interfaces import Engine
from ebai.tensorrt._build import inspect_engine
from ebai.tensorrt._cuda import CudaRuntime, host_array
from ebai.tensorrt._inspect import LayerReport

__all__ = ["TensorRTEngine"]

logger = logging.getLogger("ebai")


class TensorRTEngine(Engine):
    """A built TensorRT engine run from numpy (see :class:`ebai.core.Engine`).

    Built by :meth:`ebai.tensorrt.TensorRTBackend.load`; use as a context manager or call
    :meth:`close` to free GPU memory.

    Attributes
    ----------
    layer_report
        Per-layer precision (:class:`~ebai.tensorrt.LayerReport`); ``layer_report.summary()`` is the
        line ``ebai benchmark`` prints, ``layer_report.fallbacks`` the compute layers not running at
        the target precision.
    build_info
        Where the engine came from: ``"built"`` or ``"cache"``, the cache file, the GPU, TensorRT
        version, build seconds, the optimization profile.
    """

    backend = "tensorrt"

    def __init__(
        self,
        *,
        trt: ModuleType,
        cuda: CudaRuntime,
        runtime: Any,
        engine: Any,
        precision: str,
        min_batch: int,
        max_batch: int,
        sample_shape: tuple[int, ...],
        build_info: Mapping[str, Any] | None = None,
        layer_report: LayerReport | None = None,
        device_index: int = 0,
        keep_alive: Sequence[Any] = (),
    ) -> None:
        self.precision = precision
        self._device_index = int(device_index)
        self._keep_alive = list(keep_alive)  # e.g. the TensorRT logger, which must outlive the runtime
        self.build_info = dict(build_info or {})
        self._trt, self._cuda, self._runtime, self._engine = trt, cuda, runtime, engine
        self._closed = False
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []
        self._stream: Any = None
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            msg = f"the TensorRT engine has inputs {inputs} and outputs {outputs}; ebai runs models with one of each: re-export the model"
            raise InputError(msg)
        self._in, self._out = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out)))
        self.sample_shape = tuple(int(d) for d in sample_shape)
        try:  # the engine's own profile is the truth (a model exported with a fixed batch has min = max)
            lo, _, hi = engine.get_tensor_profile_shape(self._in, 0)
            min_batch, max_batch = int(lo[0]), int(hi[0])
        except Exception as exc:
            logger.debug("TensorRT profile of %s not readable (%s); using the build settings", self._in, exc)
        self.min_batch, self.max_batch = int(min_batch), int(max_batch)
        try:
            self._context = engine.create_execution_context()
            if self._context is None:
                msg = (
                    "TensorRT could not create an execution context (GPU memory full?): free the GPU or lower max_batch"
                )
                raise BackendUnavailableError(msg)
            self._set_batch(self.max_batch)
            out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self._out))
            if any(d < 0 for d in out_shape):
                msg = f"TensorRT cannot tell the output shape {out_shape} of {self._out!r}: export the model with a static output shape besides the batch"
                raise InputError(msg)
            self.output_sample_shape = out_shape[1:]
            self._in_item = math.prod(self.sample_shape) * self._in_dtype.itemsize
            self._out_item = math.prod(self.output_sample_shape) * self._out_dtype.itemsize
            self._stream = cuda.stream_create()
            self._d_in = self._device(self._in_item * self.max_batch)
            self._d_out = self._device(self._out_item * self.max_batch)
            self._h_in = host_array(
                self._host(self._in_item * self.max_batch), (self.max_batch, *self.sample_shape), self._in_dtype
            )
            self._h_out = host_array(
                self._host(self._out_item * self.max_batch),
                (self.max_batch, *self.output_sample_shape),
                self._out_dtype,
            )
            self._bind()
            if layer_report is None:
                self._set_batch(self._opt_batch())
                layer_report = inspect_engine(trt, engine, self._context, precision)
            self.layer_report = layer_report
        except BaseException:
            self.close()
            raise

    # -- resources ---------------------------------------------------------------------------

    def _device(self, nbytes: int) -> int:
        ptr = self._cuda.malloc(nbytes)
        self._device_ptrs.append(ptr)
        return ptr

    def _host(self, nbytes: int) -> int:
        ptr = self._cuda.malloc_host(nbytes)
        self._host_ptrs.append(ptr)
        return ptr

    def _opt_batch(self) -> int:
        try:
            shapes = self._engine.get_tensor_profile_shape(self._in, 0)
            return int(shapes[1][0])
        except Exception:
            return self.min_batch

    def _bind(self) -> None:
        if not self._context.set_tensor_address(self._in, self._d_in) or not self._context.set_tensor_address(
            self._out, self._d_out
        ):
            msg = "TensorRT refused the device buffers of the engine: report this to ebai-tensorrt"
            raise BackendUnavailableError(msg)

    def _set_batch(self, batch: int) -> None:
        if not self._context.set_input_shape(self._in, (batch, *self.sample_shape)):
            msg = f"TensorRT refused input shape {(batch, *self.sample_shape)} for {self._in!r}: it is outside the engine's profile"
            raise InputError(msg)

    def close(self) -> None:
        """Free the device buffers, pinned memory and stream; the engine cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        cuda = self._cuda
        for ptr in self._device_ptrs:
            try:
                cuda.free(ptr)
            except Exception as exc:  # keep freeing the rest
                logger.debug("cudaFree failed: %s", exc)
        for ptr in self._host_ptrs:
            try:
                cuda.free_host(ptr)
            except Exception as exc:
                logger.debug("cudaFreeHost failed: %s", exc)
        self._device_ptrs, self._host_ptrs = [], []
        if self._stream is not None:
            try:
                cuda.stream_destroy(self._stream)
            except Exception as exc:
                logger.debug("cudaStreamDestroy failed: %s", exc)
            self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._keep_alive = []

    # -- inference ---------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run ``(N, C, *tile)`` float32 through the engine and return ``(N, C_out, *tile)`` float32."""
        if self._closed:
            msg = "this TensorRT engine was closed: load the artifact again"
            raise InputError(msg)
        arr = np.asarray(batch)
        if arr.ndim != len(self.sample_shape) + 1 or tuple(arr.shape[1:]) != self.sample_shape:
            msg = (
                f"batch has shape {tuple(arr.shape)} but the TensorRT engine takes (N, {', '.join(map(str, self.sample_shape))}): "
                "tile the image to the model's tile shape"
            )
            raise InputError(msg)
        if self._device_index:  # CUDA's current device is per thread
            self._cuda.set_device(self._device_index)
        n = int(arr.shape[0])
        out = np.empty((n, *self.output_sample_shape), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            chunk = arr[start : start + self.max_batch]
            out[start : start + chunk.shape[0]] = self._run_chunk(chunk)
        return out

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        b = int(chunk.shape[0])
        run = max(b, self.min_batch)
        self._h_in[:b] = chunk
        if run > b:
            self._h_in[b:run] = 0
        self._set_batch(run)
        self._bind()
        cuda, stream = self._cuda, self._stream
        cuda.copy_to_device(self._d_in, self._h_in.ctypes.data, run * self._in_item, stream)
        if not self._context.execute_async_v3(cuda.stream_handle(stream)):
            msg = "TensorRT failed to run the batch (see the log with --debug): check GPU memory with nvidia-smi"
            raise BackendUnavailableError(msg)
        cuda.copy_to_host(self._h_out.ctypes.data, self._d_out, run * self._out_item, stream)
        cuda.synchronize(stream)
        return np.array(self._h_out[:b], dtype=np.float32, copy=True)
