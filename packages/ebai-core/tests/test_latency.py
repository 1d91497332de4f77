"""Latency statistics on a fake clock and on a real call."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ebai.core.errors import InputError
from ebai.core.latency import LatencyStats, measure_interleaved, measure_latency, paired_speedup


def _clocked(durations: list[float]) -> Callable[[], float]:
    """A fake clock whose successive calls last ``durations`` seconds, in order."""
    ticks: list[float] = []
    now = 0.0
    for d in durations:
        ticks += [now, now + d]
        now += d + 1.0
    clock = iter(ticks)
    return lambda: next(clock)


def test_stats_on_a_fake_clock() -> None:
    calls = []
    stats = measure_latency(lambda: calls.append(1), warmup=3, repeats=5, timer=_clocked([0.5, 0.1, 0.3, 0.2, 0.4]))
    assert len(calls) == 8  # warm-up calls are made but not timed
    assert stats.repeats == 5
    assert stats.median_s == pytest.approx(0.3)
    assert stats.min_s == pytest.approx(0.1)
    assert stats.max_s == pytest.approx(0.5)
    assert stats.mean_s == pytest.approx(0.3)
    assert stats.p95_s == pytest.approx(0.48)  # linear interpolation between 0.4 and 0.5
    assert stats.to_dict()["median_s"] == stats.median_s


def test_stats_on_a_real_call() -> None:
    a = np.random.default_rng(0).random((64, 64))
    stats = measure_latency(lambda: a @ a, warmup=1, repeats=7)
    assert stats.repeats == 7
    assert 0 < stats.min_s <= stats.median_s <= stats.p95_s <= stats.max_s
    assert stats.min_s <= stats.mean_s <= stats.max_s


def test_invalid_arguments() -> None:
    with pytest.raises(InputError):
        measure_latency(lambda: None, repeats=0)
    with pytest.raises(InputError):
        LatencyStats.from_samples([])


def test_interleaved_rounds_alternate_the_calls() -> None:
    order: list[str] = []
    clock = iter(float(i) for i in range(1000))
    stats = measure_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        rounds=3,
        repeats=2,
        warmup=1,
        timer=lambda: next(clock),
    )
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up once each, then round by round
    assert list(stats) == ["a", "b"] and stats["a"].repeats == stats["b"].repeats == 6
    assert stats["a"].median_s == pytest.approx(1.0)  # each fake call lasts one tick


def test_interleaved_refuses_empty_rounds() -> None:
    with pytest.raises(InputError, match="rounds >= 1"):
        measure_interleaved({"a": lambda: None}, rounds=0)


def test_paired_speedup_is_immune_to_a_machine_that_switches_speed() -> None:
    # 'fast' really runs 1.5x faster. The machine runs 2.4x slower for a stretch of rounds, and
    # switched in the middle of round 3, after the default's calls and before those of 'fast':
    # five of the default's rounds fell in the slow state and four of the other's, so the ratio
    # of medians says 3.6; the paired ratio keeps 1.5
    default_state = [1.0, 1.0, 1.0, 2.4, 2.4, 2.4, 2.4, 2.4, 1.0]
    fast_state = [1.0, 1.0, 1.0, 1.0, 2.4, 2.4, 2.4, 2.4, 1.0]
    durations = []
    for a, b in zip(default_state, fast_state, strict=True):
        durations += [12.0 * a, 8.0 * b]
    stats = measure_interleaved(
        {"default": lambda: None, "fast": lambda: None}, rounds=9, warmup=0, timer=_clocked(durations)
    )
    assert stats["default"].round_min_s[2:4] == pytest.approx((12.0, 28.8))
    assert stats["default"].median_s / stats["fast"].median_s == pytest.approx(3.6)
    assert paired_speedup(stats["default"], stats["fast"]) == pytest.approx(1.5)
    assert "round_min_s" not in stats["fast"].to_dict()


def test_paired_speedup_takes_each_rounds_fastest_call() -> None:
    # two calls per round: the slower one of each round (a neighbour's burst) is left out
    durations = [10.0, 30.0, 5.0, 5.0, 10.0, 10.0, 9.0, 5.0]
    stats = measure_interleaved(
        {"a": lambda: None, "b": lambda: None}, rounds=2, repeats=2, warmup=0, timer=_clocked(durations)
    )
    assert stats["a"].round_min_s == (10.0, 10.0)
    assert stats["b"].round_min_s == (5.0, 5.0)
    assert paired_speedup(stats["a"], stats["b"]) == pytest.approx(2.0)


def test_paired_speedup_refuses_timings_from_different_runs() -> None:
    one = measure_interleaved({"a": lambda: None}, rounds=2, warmup=0)["a"]
    two = measure_interleaved({"a": lambda: None}, rounds=3, warmup=0)["a"]
    with pytest.raises(InputError, match="same interleaved rounds"):
        paired_speedup(one, two)
    with pytest.raises(InputError, match="same interleaved rounds"):
        paired_speedup(LatencyStats.from_samples([1.0]), LatencyStats.from_samples([1.0]))


def test_paired_speedup_of_rounds_kept_as_plain_sequences() -> None:
    # a report keeps each row's round minima as a list: the same pairing, the same refusal
    assert paired_speedup([10.0, 30.0, 10.0], (5.0, 15.0, 2.0)) == pytest.approx(2.0)
    with pytest.raises(InputError, match="same interleaved rounds"):
        paired_speedup([1.0, 1.0], [1.0])
