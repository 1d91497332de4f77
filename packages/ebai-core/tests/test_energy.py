"""Energy through codecarbon: offline, file-less, labelled measured or estimated."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from ebai.core.energy import (
    NOT_MEASURED,
    EnergyResult,
    EnergySpread,
    _describe,
    _spread,
    indistinct_groups,
    measure_energy,
    measure_energy_interleaved,
)
from ebai.core.errors import InputError, MissingDependencyError


class CPU:  # named like codecarbon's hardware classes, which _describe reads
    def __init__(self, mode: str, tdp: float | None = 65.0) -> None:
        self._mode = mode
        self._tdp = tdp


class GPU:
    pass


class RAM:
    pass


def test_describe_rapl_is_measured() -> None:
    label, source = _describe([RAM(), CPU("intel_rapl")], "process")
    assert label == "measured"
    assert "CPU: measured with RAPL energy counters" in source and "RAM: estimated" in source


def test_describe_load_mode_is_estimated() -> None:
    label, source = _describe([RAM(), CPU("cpu_load", 120.0)], "process")
    assert label == "estimated"
    assert "CPU: estimated from TDP and load (TDP 120 W, this process's CPU load)" in source
    label, source = _describe([CPU("constant", None)], "machine")
    assert label == "estimated" and "TDP unknown" in source


def test_describe_nvml_gpu_is_measured() -> None:
    label, source = _describe([RAM(), CPU("cpu_load"), GPU()], "machine")
    assert label == "measured"
    assert "GPU: measured with NVML" in source and "CPU: estimated from TDP and load" in source


def test_missing_codecarbon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # makes `import codecarbon` fail
    with pytest.raises(MissingDependencyError) as info:
        measure_energy(lambda: None)
    assert (
        str(info.value) == "energy is measured with codecarbon, which is not installed: pip install 'ebai-core[energy]'"
    )
    with pytest.raises(MissingDependencyError, match=r"ebai-core\[energy\]"):
        measure_energy_interleaved({"a": lambda: None}, rounds=2)
    assert NOT_MEASURED == "not measured: pip install 'ebai-core[energy]'"


def test_invalid_arguments() -> None:
    with pytest.raises(InputError):
        measure_energy(lambda: None, repeats=0)
    with pytest.raises(InputError):
        measure_energy(lambda: None, tracking_mode="cluster")


def test_measure_energy_offline_and_fileless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real measurement (about 2 s: codecarbon's hardware probe plus a 0.3 s window)."""
    pytest.importorskip("codecarbon", reason="codecarbon is not installed")
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network use is not allowed in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.chdir(tmp_path)
    calls = []

    def work() -> None:
        calls.append(sum(i * i for i in range(20000)))

    result = measure_energy(work, repeats=3, warmup=2, min_duration_s=0.3)
    assert isinstance(result, EnergyResult)
    assert result.joules_per_call > 0
    assert result.label in ("measured", "estimated")
    assert result.source and "codecarbon" in result.source
    if result.label == "estimated":
        assert "estimated" in result.source
    assert result.calls >= 3 and len(calls) == result.calls + 2
    assert result.duration_s >= 0.3
    assert result.watts > 0
    assert attempts == []
    assert list(tmp_path.iterdir()) == []  # no emissions.csv, no lock file


def _window(joules: float) -> EnergyResult:
    return EnergyResult(joules_per_call=joules, duration_s=1.0, label="estimated", source="test", calls=1)


def test_spread_is_the_range_of_the_windows() -> None:
    spread = _spread([_window(j) for j in (0.40, 0.30, 0.50)])
    assert (spread.joules_per_call, spread.low, spread.high, spread.windows) == (0.40, 0.30, 0.50, 3)
    assert spread.relative_spread == pytest.approx(0.5)
    assert spread.to_dict()["label"] == "estimated"


def test_overlapping_spreads_cannot_be_told_apart() -> None:
    # the case: 0.59 J and 0.35 J per tile, each from one short window, with windows that vary
    default = EnergySpread(0.59, 0.30, 0.70, 3, "estimated", "")
    f32 = EnergySpread(0.35, 0.33, 0.62, 3, "estimated", "")
    int8 = EnergySpread(0.10, 0.09, 0.12, 3, "estimated", "")
    assert default.overlaps(f32) and f32.overlaps(default)
    assert not int8.overlaps(f32) and not f32.overlaps(int8)


def test_interleaved_energy_takes_one_window_per_call_per_round(monkeypatch: pytest.MonkeyPatch) -> None:
    import ebai.core.energy as energy

    order: list[str] = []

    def fake_measure(fn, **kwargs):  # records the order of the windows; the real tracker is tested above
        fn()
        return _window(float(len(order)))

    monkeypatch.setattr(energy, "measure_energy", fake_measure)
    out = measure_energy_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, warmup=1
    )
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert out["a"].windows == out["b"].windows == 3
    assert (out["a"].low, out["a"].high) == (3.0, 7.0)  # windows measured after calls 3, 5, 7


def test_rows_within_each_others_spread_share_a_letter() -> None:
    def spread(low: float, high: float) -> EnergySpread:
        return EnergySpread((low + high) / 2, low, high, 3, "estimated", "")

    rows = {
        "torch": spread(1.0, 1.2),
        "openvino-f32": spread(0.33, 0.62),
        "openvino-default": spread(0.30, 0.70),  # the contradiction: within the f32 row's spread
        "openvino-int8": spread(0.10, 0.12),
        "pruned": spread(0.11, 0.13),  # overlaps int8 only
        "gpu": None,  # not measured
    }
    assert indistinct_groups(rows) == {
        "openvino-f32": "A",
        "openvino-default": "A",
        "openvino-int8": "B",
        "pruned": "B",
    }
    assert indistinct_groups({"a": spread(0.1, 0.2), "b": spread(0.3, 0.4)}) == {}


def test_energy_available_follows_codecarbon(monkeypatch: pytest.MonkeyPatch) -> None:
    from ebai.core.energy import energy_available

    monkeypatch.setitem(sys.modules, "codecarbon", None)
    assert energy_available() is False
