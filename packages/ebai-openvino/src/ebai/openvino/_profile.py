"""Per-layer profile of a compiled OpenVINO model from its ``PERF_COUNT`` counters.

OpenVINO's CPU plugin names the kernel each layer ran with, the precision last
(``brgconv_avx512_amx_I8``, ``jit_avx512_BF16``, ``ref_any_FP32``), and its real time per call.
The model is compiled a second time with ``PERF_COUNT`` on (counting is off in the engine that
serves predictions), once per engine, and run ``calls`` times per profile; each layer keeps its
median call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ebai.core.profiling import LayerProfile

__all__ = ["ModelProfiler", "executed_precision"]

_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16", "i8": "i8", "u8": "i8"}


def executed_precision(exec_type: str) -> str:
    """Return the precision a kernel ran in, from its name's last part (``jit_avx512_amx_I8`` -> ``i8``).

    Kernels of integer tensors (``I32``, ``I64``, shapes and indices) and unknown names keep their
    lower-cased suffix; ``undef`` when the name has none.
    """
    tail = exec_type.rsplit("_", 1)[-1].lower() if "_" in exec_type else ""
    return _PRECISIONS.get(tail, tail or "undef")


class ModelProfiler:
    """A model compiled once more with ``PERF_COUNT`` on, kept for profile after profile.

    Why kept: compiling takes seconds, and this project's machine switches speed for seconds at a
    time; compiled once, two models' profilers can be called in turns one call apart
    (:func:`ebai.core.profiling.profiles_in_turns` with ``calls=1``), so both see the same state.
    Counting stays off in the engine that serves predictions.
    """

    def __init__(self, model: Any, device: str, config: Mapping[str, Any]) -> None:
        import openvino as ov
        import openvino.properties as props

        self._compiled: Any = ov.Core().compile_model(model, device, {**config, props.enable_profiling(): True})
        self._request: Any = self._compiled.create_infer_request()
        self._warm_shape: tuple[int, ...] | None = None

    def profile(self, batch: np.ndarray, calls: int = 5) -> LayerProfile:
        """Run ``batch`` ``calls`` times and group the counters; each layer keeps its median call.

        One untimed call first whenever the batch shape is new (kernels are built then). Layers
        reported as not run or optimised out (fused into a neighbour) are left out: their time is
        inside the layer they were fused into.
        """
        import openvino as ov

        if self._request is None:
            msg = "this profiler was closed: profile the engine again"
            raise RuntimeError(msg)
        arr = np.ascontiguousarray(batch, dtype=np.float32)
        if arr.shape != self._warm_shape:
            self._request.infer({0: arr})
            self._warm_shape = arr.shape
        times: dict[str, tuple[str, str, list[float]]] = {}
        calls = max(1, int(calls))
        for _ in range(calls):
            self._request.infer({0: arr})
            for info in self._request.get_profiling_info():
                if info.status == ov.ProfilingInfo.Status.EXECUTED:
                    times.setdefault(info.node_name, (info.node_type, info.exec_type, []))[2].append(
                        info.real_time.total_seconds()
                    )
        # the median call of each layer: a neighbour's burst on a shared CPU inflates single calls
        records = [
            (name, node_type, executed_precision(exec_type), exec_type, float(np.median(seconds)) * calls)
            for name, (node_type, exec_type, seconds) in times.items()
        ]
        return LayerProfile.from_layers(records, calls)

    def close(self) -> None:
        """Free the compiled copy and its request."""
        self._request = None
        self._compiled = None
