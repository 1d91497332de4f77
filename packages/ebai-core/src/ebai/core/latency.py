"""Wall-clock latency of a call, as robust statistics over repeated runs.

Benchmarks compare engines by the median of several timed calls after a few untimed warm-up calls
(first calls compile kernels, fill caches and allocate memory); the 95th percentile shows jitter.
:func:`measure_interleaved` is the one timing loop every comparison in ebai uses (``ebai benchmark``,
``ebai demo``, ``ebai report``, ``ebai sweep``): it times several calls round by round, so a change in
the machine's load during the measurement slows every call alike instead of favouring one, and
:func:`paired_speedup` compares two of them round by round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ebai.core.errors import InputError

__all__ = ["LatencyStats", "interleave", "measure_interleaved", "measure_latency", "paired_speedup"]


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
    round_min_s
        Fastest call of each interleaved round, in round order (empty where the calls were not
        timed in rounds); what :func:`paired_speedup` compares. Not part of :meth:`to_dict`.
    """

    median_s: float
    p95_s: float
    min_s: float
    mean_s: float
    max_s: float
    repeats: int
    round_min_s: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def from_samples(
        cls, samples: list[float] | np.ndarray, rounds: Sequence[Sequence[float]] | None = None
    ) -> LatencyStats:
        """Summarise durations in seconds (at least one); ``rounds`` groups them by interleaved round."""
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
            round_min_s=tuple(float(min(r)) for r in rounds or () if len(r)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form used in reports."""
        out = asdict(self)
        out.pop("round_min_s")
        return out


def paired_speedup(reference: LatencyStats | Sequence[float], other: LatencyStats | Sequence[float]) -> float:
    """How many times faster ``other`` ran than ``reference``: the median over rounds of their ratio.

    Why: a machine whose speed switches between states for seconds at a time (a virtual CPU whose
    sibling core another tenant loads ran this project's networks 2-2.4x slower for seconds at a
    time, at random) makes a comparison of two medians depend on how many of each one's calls fell
    into the slow state. Within one round the two ran moments apart, in the same state, so the ratio
    of their fastest calls in that round is a fair comparison, and the median over rounds discards
    the rounds a switch cut through. Both must come from the same :func:`measure_interleaved` call:
    its :class:`LatencyStats`, or their ``round_min_s`` as kept elsewhere (a report's table rows).
    """
    a = reference.round_min_s if isinstance(reference, LatencyStats) else tuple(reference)
    b = other.round_min_s if isinstance(other, LatencyStats) else tuple(other)
    if not a or len(a) != len(b):
        msg = (
            f"a paired speed-up needs two timings from the same interleaved rounds, got {len(a)} and {len(b)} "
            "rounds: time both in one measure_interleaved call"
        )
        raise InputError(msg)
    return float(np.median(np.asarray(a) / np.asarray(b)))


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
    return measure_interleaved({"call": fn}, rounds=repeats, warmup=warmup, timer=timer)["call"]


def measure_interleaved(
    calls: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    repeats: int = 1,
    warmup: int = 1,
    desc: str | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, LatencyStats]:
    """Time several calls in interleaved rounds: every call runs ``repeats`` times per round, in turn.

    Parameters
    ----------
    calls
        Name -> the work to time, without arguments (each must finish its work before returning).
    rounds
        Rounds over all calls, at least 1. More rounds spread each call's samples over a longer
        time, which is what makes the comparison fair on a shared machine.
    repeats
        Timed calls of each entry per round, at least 1.
    warmup
        Untimed calls of each entry before the first round.
    desc
        Label of a progress bar over the rounds; ``None`` shows none.
    timer
        Monotonic clock in seconds; ``time.perf_counter`` unless testing.

    Returns
    -------
    dict of str to LatencyStats
        For each name (in the order given), the statistics of its ``rounds * repeats`` timed calls.
    """
    if rounds < 1 or repeats < 1 or warmup < 0:
        msg = f"interleaved timing needs rounds >= 1, repeats >= 1 and warmup >= 0, got {rounds}, {repeats}, {warmup}"
        raise InputError(msg)
    per_round: dict[str, list[list[float]]] = {name: [] for name in calls}
    for name, fn in interleave(calls, rounds=rounds, warmup=warmup, desc=desc):
        times = []
        for _ in range(repeats):
            start = timer()
            fn()
            times.append(timer() - start)
        per_round[name].append(times)
    return {name: LatencyStats.from_samples([t for r in rs for t in r], rs) for name, rs in per_round.items()}


def interleave(
    calls: Mapping[str, Callable[[], Any]], *, rounds: int, warmup: int = 1, desc: str | None = None
) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Yield ``(name, fn)`` for every call in turn, ``rounds`` times, after ``warmup`` untimed calls of each.

    The order every interleaved measurement (time here, energy in :mod:`ebai.core.energy`) follows;
    ``desc`` labels a progress bar over the rounds.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    steps: Any = range(rounds)
    if desc is not None:
        from ebai.core.progress import progress

        steps = progress(steps, desc=desc, total=rounds, unit="round")
    for _ in steps:
        yield from calls.items()
