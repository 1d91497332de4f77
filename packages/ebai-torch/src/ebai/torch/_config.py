"""How a program is run: precision, cast mode, memory layout, ``torch.compile`` and CUDA graphs.

A :class:`RunConfig` names one way of running the exported network; :func:`build_runner` turns it
into a function from a float32 batch on the device to a float32 batch. The precision comes from
the artifact (what the accuracy guard checked); the rest is chosen by measuring
(:mod:`ebai.torch._choice`) or given by the caller.

- ``fp32``: TF32 off for convolutions and matrix products (true fp32, as eager PyTorch is
  measured in the issue's table); ``tf32``: TF32 on (CUDA GPUs with compute >= 8.0; elsewhere fp32).
- ``fp16`` and ``bf16``: ``autocast`` (weights stay fp32, convolutions run in the low precision,
  reductions in fp32) or ``cast`` (weights and activations cast once); the guard picks the mode.
- ``channels_last``: NDHWC/NHWC memory layout, which cuDNN's tensor-core kernels prefer.
- ``compile``: ``torch.compile`` (Inductor; ``mode="reduce-overhead"`` when CUDA graphs are also on).
- ``cuda_graph``: the whole call captured once per batch size and replayed, which removes the
  kernel-launch cost that dominates small networks at batch 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from ebai.core.errors import BackendUnavailableError, InputError

__all__ = ["MODES", "PRECISIONS", "RunConfig", "build_runner", "check_mode", "check_precision", "torch_dtype"]

#: Precisions of the torch target.
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
#: How fp16/bf16 are applied.
MODES = ("autocast", "cast")


def check_precision(precision: str) -> str:
    """Return ``precision`` if the torch target makes it, else raise a one-line :class:`InputError`."""
    if precision not in PRECISIONS:
        msg = f"the torch target knows precisions {', '.join(PRECISIONS)}, not {precision!r}: pick one of those"
        raise InputError(msg)
    return precision


def check_mode(precision: str, mode: str | None) -> str:
    """Return the cast mode for ``precision`` (``"none"`` for fp32/tf32); refuse unknown modes in one line."""
    if precision in ("fp32", "tf32"):
        if mode not in (None, "none"):
            msg = f"mode {mode!r} applies to fp16/bf16 only, not {precision}: leave it out"
            raise InputError(msg)
        return "none"
    if mode is None:
        return "autocast"
    if mode not in MODES:
        msg = f"unknown torch target mode {mode!r}: use one of {', '.join(MODES)}"
        raise InputError(msg)
    return mode


def torch_dtype(precision: str) -> Any:
    """Return the torch dtype computed in at ``precision`` (fp32 and tf32 store fp32)."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


@dataclass(frozen=True)
class RunConfig:
    """One way of running the program; JSON-ready through :meth:`as_dict`."""

    precision: str = "fp32"
    mode: str = "none"
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`as_dict` output (unknown keys are an error)."""
        return cls(**data)

    def describe(self, device: str) -> str:
        """Short text for reports: ``fp16 autocast, channels-last, compiled, CUDA graph (cuda:0)``."""
        parts = [self.precision if self.mode == "none" else f"{self.precision} {self.mode}"]
        if self.precision == "tf32" and not device.startswith("cuda"):
            parts[0] = "fp32 (TF32 needs a CUDA GPU)"
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("torch.compile")
        if self.cuda_graph:
            parts.append("CUDA graph")
        return f"{', '.join(parts)} ({device})"


def _memory_format(ndim: int) -> Any:
    import torch

    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


@contextlib.contextmanager
def precision_context(config: RunConfig, device_type: str) -> Iterator[None]:
    """Set TF32 and autocast for one call, restoring the process-wide TF32 flags afterwards."""
    import torch

    tf32 = config.precision == "tf32"
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        if config.mode == "autocast":
            # no weight-cast cache: a captured CUDA graph must not depend on cached casts
            with torch.autocast(device_type, dtype=torch_dtype(config.precision), cache_enabled=False):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_device_support(config: RunConfig, device: Any) -> None:
    """Refuse, in one line, a precision the device cannot compute (bf16 before Ampere)."""
    import torch

    if device.type == "cuda" and config.precision == "bf16" and torch.cuda.get_device_capability(device) < (8, 0):
        name = torch.cuda.get_device_name(device)
        msg = f"{name} cannot compute in bf16 (needs compute capability >= 8.0): use the artifact's fp16 or fp32 torch target"
        raise BackendUnavailableError(msg)


def build_runner(module: Any, config: RunConfig, device: Any, sample_ndim: int) -> Callable[[Any], Any]:
    """Return ``run(x)`` for float32 batches ``x`` already on ``device``; results are float32 on ``device``.

    ``module`` is a fresh unlifted program (``ExportedProgram.module()``) on the CPU, which this
    function moves and casts (it is not copied). CUDA graphs are captured lazily, once per batch size.
    """
    import torch

    check_device_support(config, device)
    net = module.to(device)
    if config.mode == "cast":
        net = net.to(torch_dtype(config.precision))
    fmt = _memory_format(sample_ndim + 1) if config.channels_last else None
    if fmt is not None:
        net = net.to(memory_format=fmt)
    in_dtype = torch_dtype(config.precision) if config.mode == "cast" else torch.float32
    if config.compile:
        mode = "reduce-overhead" if config.cuda_graph and device.type == "cuda" else None
        net = torch.compile(net, mode=mode, dynamic=False)

    def plain(x: Any) -> Any:
        x = x.to(in_dtype)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        with precision_context(config, device.type):
            return net(x).float()

    if not config.cuda_graph or device.type != "cuda" or config.compile:
        # compile + graph: Inductor's "reduce-overhead" mode captures the graphs itself
        if config.compile and config.cuda_graph and device.type == "cuda":
            return lambda x: plain(x).clone()  # reduce-overhead outputs are overwritten by the next replay
        return plain
    return _GraphedRunner(plain, device)


class _GraphedRunner:
    """Replays one captured CUDA graph per batch size (``torch.cuda.graph``, as torch documents it)."""

    def __init__(self, fn: Callable[[Any], Any], device: Any) -> None:
        self.fn, self.device = fn, device
        self.graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _capture(self, x: Any) -> tuple[Any, Any, Any]:
        import torch

        static_in = x.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the capture, on a side stream
            for _ in range(3):
                self.fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return graph, static_in, static_out

    def __call__(self, x: Any) -> Any:
        key = tuple(x.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()
