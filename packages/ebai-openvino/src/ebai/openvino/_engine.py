"""The OpenVINO engine: one compiled model, a sync request for one batch, an async queue for many.

Execution precision is not the stored precision: an fp32 IR runs in bf16 by default on CPUs with
AVX-512 BF16 or AMX (OpenVINO's choice), and an int8 IR runs its quantized layers in int8 and the
rest at that same default. :attr:`OpenVINOEngine.execution_precision` says what the CPU actually
computes in; pass ``inference_precision="f32"`` to force full precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebai.core.errors import EbaiError, InputError
from ebai.core.interfaces import Engine
from ebai.core.profiling import LayerProfile
from ebai.openvino._conversion import first_line, read_ir
from ebai.openvino._deps import require_openvino

if TYPE_CHECKING:
    from ebai.openvino._profile import ModelProfiler

__all__ = ["HINTS", "INFERENCE_PRECISIONS", "OpenVINOEngine"]

#: ``performance_hint`` values: latency (one request as fast as possible) or throughput (several
#: requests in parallel streams, better for many tiles through :meth:`OpenVINOEngine.infer_many`).
HINTS = ("latency", "throughput")
#: ``inference_precision`` values (OpenVINO's names); ``None`` lets OpenVINO choose.
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
_ALIASES = {"fp32": "f32", "fp16": "f16", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


class OpenVINOEngine(Engine):
    """A model compiled once for the CPU, taking any batch size.

    Parameters
    ----------
    model
        Path of an IR ``.xml`` (its ``.bin`` beside it) or an ``openvino.Model``.
    precision
        Stored precision of the model (``fp32``, ``fp16``, ``int8``), for reports.
    performance_hint
        ``"latency"`` (default) or ``"throughput"``; see :data:`HINTS`.
    num_threads
        CPU threads OpenVINO may use (``INFERENCE_NUM_THREADS``); ``None`` uses all cores.
    inference_precision
        ``"f32"`` forces full-precision arithmetic (``INFERENCE_PRECISION_HINT=f32``); ``None``
        (default) lets OpenVINO choose, which is bf16 on CPUs that have it.
    num_requests
        Parallel requests of :meth:`infer_many`'s async queue; 0 asks OpenVINO for its optimum.
    device
        OpenVINO device name; ebai uses ``"CPU"``.

    Notes
    -----
    One engine is not meant to be called from several threads at once: :meth:`infer` reuses one
    infer request. Close it (or use ``with``) to free the compiled model.
    """

    backend = "openvino"

    def __init__(
        self,
        model: str | Path | Any,
        *,
        precision: str = "",
        performance_hint: str = "latency",
        num_threads: int | None = None,
        inference_precision: str | None = None,
        num_requests: int = 0,
        device: str = "CPU",
    ) -> None:
        ov = require_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        hint = str(performance_hint).lower()
        if hint not in HINTS:
            msg = f"unknown performance hint {performance_hint!r}: use one of {', '.join(HINTS)}"
            raise InputError(msg)
        config: dict[str, Any] = {
            hints.performance_mode(): hints.PerformanceMode.LATENCY
            if hint == "latency"
            else hints.PerformanceMode.THROUGHPUT
        }
        if num_threads is not None:
            if int(num_threads) < 1:
                msg = f"num_threads must be at least 1, got {num_threads}"
                raise InputError(msg)
            config[props.inference_num_threads()] = int(num_threads)
        if inference_precision is not None:
            wanted = _ALIASES.get(str(inference_precision).lower(), str(inference_precision).lower())
            if wanted not in INFERENCE_PRECISIONS:
                msg = f"unknown inference precision {inference_precision!r}: use one of {', '.join(INFERENCE_PRECISIONS)}, or none to let OpenVINO choose"
                raise InputError(msg)
            config[hints.inference_precision()] = getattr(ov.Type, wanted)
        if int(num_requests) < 0:
            msg = f"num_requests must be 0 (automatic) or more, got {num_requests}"
            raise InputError(msg)

        self.precision = precision
        self.source = str(model) if isinstance(model, (str, Path)) else "in-memory model"
        if isinstance(model, (str, Path)):
            model = read_ir(Path(model))
        self._model, self._config, self._device = model, config, device
        self._profiler: ModelProfiler | None = None  # compiled at the first profile
        #: FakeQuantize operations in the model: 0 for an int8 target whose measured lowering found
        #: that no layer ran faster in int8 on the machine that made it (reports say so).
        self.quantized_layers: int = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
        try:
            self._compiled = ov.Core().compile_model(model, device, config)
        except Exception as exc:
            msg = f"OpenVINO cannot compile {self.source} for {device} ({first_line(exc)}): the model files may be damaged, recreate the artifact"
            raise EbaiError(msg) from exc
        self._input = self._compiled.input(0)
        self._output = self._compiled.output(0)
        self._shape = self._input.get_partial_shape()
        self._request: Any = self._compiled.create_infer_request()
        self._num_requests = int(num_requests)
        self.performance_hint = hint
        self.execution_precision: str = self._compiled.get_property(hints.inference_precision()).to_string()
        self.num_threads: int = int(self._compiled.get_property(props.inference_num_threads()))

    def __repr__(self) -> str:
        return (
            f"OpenVINOEngine({self.source!r}, precision={self.precision!r}, "
            f"execution_precision={self.execution_precision!r}, hint={self.performance_hint!r})"
        )

    @property
    def input_shape(self) -> str:
        """The compiled model's input shape, ``?`` marking dynamic axes (e.g. ``[?,1,32,128,128]``)."""
        return str(self._shape)

    def _require_open(self) -> None:
        if self._request is None:
            msg = "this OpenVINO engine was closed: load the artifact again"
            raise EbaiError(msg)

    def _check(self, batch: np.ndarray) -> np.ndarray:
        self._require_open()
        arr = np.ascontiguousarray(batch, dtype=np.float32)
        if arr.ndim != self._shape.rank.get_length() or not all(
            d.is_dynamic or d.get_length() == s for d, s in zip(self._shape, arr.shape, strict=False)
        ):
            msg = f"batch has shape {tuple(arr.shape)} but the model takes {self._shape} (batch, channels, tile): tile or reshape the input"
            raise InputError(msg)
        return arr

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch ``(N, C, *tile)`` and return ``(N, C_out, *tile)`` float32 (a fresh array)."""
        arr = self._check(batch)
        result = self._request.infer({0: arr})
        return np.array(result[self._output], dtype=np.float32, copy=True)

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run many batches through an ``openvino.AsyncInferQueue``, yielding results in input order.

        Batches are read lazily and at most one result per request waits in memory, so this suits
        long tile streams. Use ``performance_hint="throughput"`` to run requests in parallel.

        Notes
        -----
        No Python callback is registered on the queue: a request's result is collected when the
        request is next handed out (it is idle then, hence finished) or after ``wait_all``. A Python
        callback would run on OpenVINO's worker threads and need the GIL, which can deadlock when
        the compiled model is released from Python.
        """
        ov = require_openvino()
        self._require_open()
        queue = ov.AsyncInferQueue(self._compiled, self._num_requests)
        busy: set[int] = set()  # requests holding a result not collected yet
        done: dict[int, np.ndarray] = {}
        submitted = emitted = 0

        def collect(request_id: int) -> None:
            job = queue.userdata[request_id]
            done[job] = np.array(queue[request_id].get_output_tensor(0).data, dtype=np.float32, copy=True)
            busy.discard(request_id)

        try:
            for batch in batches:
                arr = self._check(batch)
                request_id = queue.get_idle_request_id()  # blocks while every request is busy
                if request_id in busy:
                    collect(request_id)
                queue.start_async({0: arr}, userdata=submitted)  # runs on that idle request
                busy.add(request_id)
                submitted += 1
                while emitted in done:
                    yield done.pop(emitted)
                    emitted += 1
            queue.wait_all()
            for request_id in sorted(busy):
                collect(request_id)
            while emitted < submitted:
                yield done.pop(emitted)
                emitted += 1
        finally:
            queue.wait_all()

    def profile(self, batch: np.ndarray, calls: int = 5) -> LayerProfile:
        """Per-layer time (OpenVINO ``PERF_COUNT``) over ``calls`` runs of ``batch``, by layer type and precision.

        A second copy of the model is compiled with the same properties plus counting, so this
        engine's own timings are not disturbed. It is compiled at the first profile and kept until
        :meth:`close`, so profiles of several engines can be taken in turns call by call.
        """
        from ebai.openvino._profile import ModelProfiler

        arr = self._check(batch)
        if self._profiler is None:
            self._profiler = ModelProfiler(self._model, self._device, self._config)
        return self._profiler.profile(arr, calls)

    def close(self) -> None:
        """Free the compiled model, its requests and its profiling copy; later calls raise a clear error."""
        if self._profiler is not None:
            self._profiler.close()
            self._profiler = None
        self._request = None
        self._compiled = None
        self._model = None
