"""The sweep's timing of a point against its baseline."""

from __future__ import annotations

import time

import pytest


def test_sweep_timing_pairs_the_point_with_its_baseline_round_by_round() -> None:
    from ebai.tasks._sweep import _paired

    latency, speedup, base_j, point_j, label, source = _paired(
        lambda: time.sleep(0.004), lambda: time.sleep(0.002), rounds=5, energy=False, seconds=0.0
    )
    assert latency == pytest.approx(0.002, rel=0.5)
    assert 1.4 < speedup < 2.2  # twice as fast, less the timer's overhead
    assert base_j is None and point_j is None and label == "not measured" and "switched off" in source
