"""Wall-clock latency of a call, as robust statistics over repeated runs.

Benchmarks compare engines by the median of several timed calls after a few untimed warm-up calls
(first calls compile kernels, fill caches and allocate memory); the 95th percentile shows jitter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ebai.core.errors import InputError

__all__ = ["LatencyStats", "measure_latency"]


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of the timed calls, in seconds per call.

    Attributes
    ----------
    median_s
        Median duration: the figure to compare engines by.
    p95_s
        95th percentile (linear interpolation between samples), a measure of jitter.
    min_s, mean_s, max_s
        Fastest, mean and slowest call.
    repeats
        Number of timed calls (warm-up calls excluded).
    """

    median_s: float
    p95_s: float
    min_s: float
    mean_s: float
    max_s: float
    repeats: int

    @classmethod
    def from_samples(cls, samples: list[float] | np.ndarray) -> LatencyStats:
        """Summarise durations in seconds (at least one)."""
        t = np.asarray(samples, dtype=np.float64)
        if t.size == 0:
            msg = "latency statistics need at least one timed call"
            raise InputError(msg)
        return cls(
            median_s=float(np.median(t)),
            p95_s=float(np.percentile(t, 95)),
            min_s=float(t.min()),
            mean_s=float(t.mean()),
            max_s=float(t.max()),
            repeats=int(t.size),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form used in reports."""
        return asdict(self)


def measure_latency(
    fn: Callable[[], Any],
    *,
    warmup: int = 2,
    repeats: int = 10,
    timer: Callable[[], float] = time.perf_counter,
) -> LatencyStats:
    """Time ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls.

    Parameters
    ----------
    fn
        The work to time, without arguments (wrap it: ``lambda: engine(batch)``). It must finish its
        work before returning: asynchronous engines must wait for their results.
    warmup
        Untimed calls made first.
    repeats
        Timed calls, at least 1.
    timer
        Monotonic clock in seconds; ``time.perf_counter`` unless testing.

    Returns
    -------
    LatencyStats
        Median, 95th percentile, minimum, mean and maximum seconds per call.
    """
    if repeats < 1 or warmup < 0:
        msg = f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats} and warmup={warmup}"
        raise InputError(msg)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = timer()
        fn()
        samples.append(timer() - start)
    return LatencyStats.from_samples(samples)
