"""Per-layer profile of a compiled OpenVINO model from its ``PERF_COUNT`` counters.

OpenVINO's CPU plugin names the kernel each layer ran with, the precision last
(``brgconv_avx512_amx_I8``, ``jit_avx512_BF16``, ``ref_any_FP32``), and its real time per call.
The model is compiled a second time with ``PERF_COUNT`` on (counting is off in the engine that
serves predictions) and run ``calls`` times; each layer keeps its median call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ebai.core.profiling import LayerProfile

__all__ = ["executed_precision", "profile_model"]

_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16", "i8": "i8", "u8": "i8"}


def executed_precision(exec_type: str) -> str:
    """Return the precision a kernel ran in, from its name's last part (``jit_avx512_amx_I8`` -> ``i8``).

    Kernels of integer tensors (``I32``, ``I64``, shapes and indices) and unknown names keep their
    lower-cased suffix; ``undef`` when the name has none.
    """
    tail = exec_type.rsplit("_", 1)[-1].lower() if "_" in exec_type else ""
    return _PRECISIONS.get(tail, tail or "undef")


def profile_model(
    model: Any, device: str, config: Mapping[str, Any], batch: np.ndarray, calls: int = 5
) -> LayerProfile:
    """Compile ``model`` with ``config`` plus ``PERF_COUNT``, run ``batch`` ``calls`` times, group the counters.

    One untimed call first (kernels are built then). Each layer's time is its median over the
    calls. Layers reported as not run or optimised out (fused into a neighbour) are left out:
    their time is inside the layer they were fused into.
    """
    import openvino as ov
    import openvino.properties as props

    compiled = ov.Core().compile_model(model, device, {**config, props.enable_profiling(): True})
    request = compiled.create_infer_request()
    arr = np.ascontiguousarray(batch, dtype=np.float32)
    request.infer({0: arr})
    times: dict[str, tuple[str, str, list[float]]] = {}
    calls = max(1, int(calls))
    for _ in range(calls):
        request.infer({0: arr})
        for info in request.get_profiling_info():
            if info.status == ov.ProfilingInfo.Status.EXECUTED:
                times.setdefault(info.node_name, (info.node_type, info.exec_type, []))[2].append(
                    info.real_time.total_seconds()
                )
    del request, compiled
    # the median call of each layer: a neighbour's burst on a shared CPU inflates single calls
    records = [
        (name, node_type, executed_precision(exec_type), exec_type, float(np.median(seconds)) * calls)
        for name, (node_type, exec_type, seconds) in times.items()
    ]
    return LayerProfile.from_layers(records, calls)
