"""The CUDA calls the engine needs, through NVIDIA's cuda-python runtime bindings.

Why cuda-python and not PyCUDA: cuda-python (``cuda.bindings.runtime``) is NVIDIA's own binding,
published as wheels for each CUDA major (``cuda-python`` 12.x and 13.x), so it installs with pip next to
``tensorrt-cu12``/``-cu13`` without a compiler or a CUDA toolkit; it uses the runtime API's primary
context, the same one TensorRT uses, so there is no context juggling. PyCUDA is built from source
against a local toolkit when no wheel fits and makes its own context (``pycuda.autoinit``).

Every call of the bindings returns ``(error, *values)``; :meth:`CudaRuntime.call` turns an error into
one sentence for biologists (no GPU, driver too old) instead of a bare enum.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ebai.core.errors import BackendUnavailableError, MissingDependencyError
from ebai.tensorrt._plugin import INSTALL

__all__ = ["CudaRuntime", "DeviceInfo", "host_array", "import_cudart"]


def import_cudart() -> ModuleType:
    """Return cuda-python's runtime module, or raise :class:`MissingDependencyError` with the pip line."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        try:  # cuda-python before 12.6.1 exposed the same module as cuda.cudart
            from cuda import cudart as runtime
        except ImportError:
            msg = f"the TensorRT engine needs NVIDIA's CUDA bindings (cuda-python), which are not installed ({exc}): {INSTALL}"
            raise MissingDependencyError(msg) from exc
    return runtime


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for: what makes an engine file valid on it."""

    index: int
    name: str
    compute_capability: str
    total_memory: int

    def describe(self) -> str:
        """``NVIDIA H100 80GB HBM3 (compute 9.0)``."""
        return f"{self.name} (compute {self.compute_capability})"


def host_array(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Return a writable numpy view of ``prod(shape)`` items of ``dtype`` at host address ``ptr``."""
    count = math.prod(shape)
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def _error_name(err: Any) -> str:
    return getattr(err, "name", None) or str(err)


class CudaRuntime:
    """Thin, checked wrapper of the cuda-python runtime module (injected for tests)."""

    def __init__(self, cudart: ModuleType, native_handle: Any = None) -> None:
        self.rt = cudart
        self._success = cudart.cudaError_t.cudaSuccess
        self._native_handle = native_handle

    @classmethod
    def load(cls) -> CudaRuntime:
        """Import the bindings (see :func:`import_cudart`) and wrap them.

        ``cuda.bindings.utils.get_cuda_native_handle`` (cuda-python >= 12.8) is used to hand
        streams to TensorRT where it exists: ``int(stream)`` is deprecated in cuda-bindings 13.
        """
        runtime = import_cudart()
        try:
            from cuda.bindings.utils import get_cuda_native_handle
        except ImportError:
            get_cuda_native_handle = None
        return cls(runtime, get_cuda_native_handle)

    def stream_handle(self, stream: Any) -> int:
        """Return the address of ``stream`` as an int, for ``execute_async_v3``."""
        if self._native_handle is not None:
            return int(self._native_handle(stream))
        return int(stream)

    def _message(self, err: Any) -> str:
        try:
            res = self.rt.cudaGetErrorString(err)
            text = res[1] if isinstance(res, tuple) else res
            return text.decode() if isinstance(text, bytes) else str(text)
        except Exception:
            return _error_name(err)

    def call(self, what: str, result: Any) -> Any:
        """Check the ``(error, *values)`` tuple of one binding call; return the value(s)."""
        if isinstance(result, tuple):
            err, values = result[0], result[1:]
        else:
            err, values = result, ()
        if err != self._success:
            name = _error_name(err)
            text = self._message(err)
            if "InsufficientDriver" in name:
                msg = (
                    f"the NVIDIA driver is too old for the CUDA version TensorRT was installed for ({text}): "
                    f"update the driver, or for older drivers {INSTALL.split('#')[0].strip()}"
                )
            elif "NoDevice" in name or "InvalidDevice" in name:
                msg = (
                    f"no usable NVIDIA GPU is visible to CUDA ({text}): run on a machine with an NVIDIA GPU "
                    "(check CUDA_VISIBLE_DEVICES), or use the openvino backend"
                )
            elif "MemoryAllocation" in name:
                msg = f"the GPU ran out of memory during {what} ({text}): lower max_batch or free the GPU"
            else:
                msg = f"CUDA call {what} failed with {name} ({text}): check the GPU with nvidia-smi"
            raise BackendUnavailableError(msg)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    # -- devices ---------------------------------------------------------------------------

    def device(self, index: int = 0) -> DeviceInfo:
        """Select GPU ``index`` for this thread and describe it; raises when there is none."""
        count = int(self.call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount()))
        if count < 1 or not 0 <= index < count:
            msg = (
                f"GPU {index} was asked for but CUDA sees {count} GPU(s): pick a device from 0 to {count - 1}"
                if count
                else "no NVIDIA GPU is visible to CUDA: run on a machine with an NVIDIA GPU, or use the openvino backend"
            )
            raise BackendUnavailableError(msg)
        self.set_device(index)
        prop = self.call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(
            index=index,
            name=name.split("\x00", 1)[0].strip(),
            compute_capability=f"{int(prop.major)}.{int(prop.minor)}",
            total_memory=int(getattr(prop, "totalGlobalMem", 0)),
        )

    def set_device(self, index: int) -> None:
        """Make GPU ``index`` current for the calling thread."""
        self.call("cudaSetDevice", self.rt.cudaSetDevice(index))

    def driver_version(self) -> int:
        """CUDA version the driver supports, as CUDA encodes it (12040 for 12.4)."""
        return int(self.call("cudaDriverGetVersion", self.rt.cudaDriverGetVersion()))

    # -- memory and streams ----------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        """Device memory of ``nbytes``; returns its address."""
        return int(self.call("cudaMalloc", self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        """Release device memory from :meth:`malloc`."""
        self.call("cudaFree", self.rt.cudaFree(ptr))

    def malloc_host(self, nbytes: int) -> int:
        """Pinned (page-locked) host memory of ``nbytes``, for asynchronous copies; returns its address."""
        return int(self.call("cudaMallocHost", self.rt.cudaMallocHost(max(int(nbytes), 1))))

    def free_host(self, ptr: int) -> None:
        """Release pinned memory from :meth:`malloc_host`."""
        self.call("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def stream_create(self) -> Any:
        """Create a CUDA stream (pass :meth:`stream_handle` of it to TensorRT)."""
        return self.call("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_destroy(self, stream: Any) -> None:
        """Destroy a stream from :meth:`stream_create`."""
        self.call("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def synchronize(self, stream: Any) -> None:
        """Wait until everything queued on ``stream`` has finished."""
        self.call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        """Queue a host-to-device copy on ``stream``."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        """Queue a device-to-host copy on ``stream``."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))
