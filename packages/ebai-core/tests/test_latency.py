"""Latency statistics on a fake clock and on a real call."""

from __future__ import annotations

import numpy as np
import pytest

from ebai.core.errors import InputError
from ebai.core.latency import LatencyStats, measure_interleaved, measure_latency


def test_stats_on_a_fake_clock() -> None:
    durations = [0.5, 0.1, 0.3, 0.2, 0.4]
    ticks: list[float] = []
    now = 0.0
    for d in durations:
        ticks += [now, now + d]
        now += d + 1.0
    clock = iter(ticks)
    calls = []
    stats = measure_latency(lambda: calls.append(1), warmup=3, repeats=5, timer=lambda: next(clock))
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
