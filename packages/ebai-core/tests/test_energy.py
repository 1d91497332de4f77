"""Energy through codecarbon: offline, file-less, labelled measured or estimated."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from ebai.core.energy import EnergyResult, _describe, measure_energy
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
    assert str(info.value) == "pip install codecarbon"


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
