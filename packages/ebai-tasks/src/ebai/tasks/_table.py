"""The measured Table 1 of one task: its rows and the ratios between them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["BASELINES", "Row", "TaskTable"]

#: Row keys the speed-up and energy-saving columns compare against, with their column names.
BASELINES = {"torch": "PyTorch", "openvino-f32": "OV f32", "openvino-default": "OV default"}


@dataclass(frozen=True)
class Row:
    """One line of the table: a model variant on one engine, measured.

    Attributes
    ----------
    key
        Stable identifier (``torch``, ``openvino-f32``, ``openvino-default``, ``openvino-int8``,
        ``openvino-pruned-int8``, ``tensorrt-...``).
    label
        What the row is, for people.
    device
        ``"CPU"`` or ``"GPU"``.
    precision
        The stored precision and what the hardware computes in, e.g. ``"fp32 IR, runs bf16"``.
    latency_s, latency_p95_s
        Median and 95th percentile seconds per tile.
    energy_j
        Joules per tile, or ``None`` when not measured.
    accuracy
        Task metric against the ground truth, mean over the held-out volumes.
    fidelity
        Pearson of the network output with PyTorch's fp32 output on the held-out volumes.
    volume_s
        Seconds for one tiled pass over the held-out volume(s) (preprocessing and tiling included).
    parameters
        Network parameters (after pruning), when known.
    energy_low_j, energy_high_j
        Least and greatest joules per tile over the interleaved energy windows (the spread).
    energy_same_as
        A letter shared with the other rows whose energies lie within each other's spread (the
        measurement does not tell them apart); empty when the row stands apart.
    round_latency_s
        The fastest call of each interleaved latency round, in round order: speed-ups between
        rows are paired round by round (:func:`ebai.core.latency.paired_speedup`); empty for
        rows made without them, whose speed-ups fall back to the ratio of medians.
    """

    key: str
    label: str
    device: str
    precision: str
    latency_s: float
    latency_p95_s: float
    energy_j: float | None
    accuracy: float
    fidelity: float
    volume_s: float
    parameters: int | None = None
    energy_low_j: float | None = None
    energy_high_j: float | None = None
    energy_same_as: str = ""
    round_latency_s: tuple[float, ...] = ()


@dataclass
class TaskTable:
    """The measured table of one task, with what is needed to redraw it.

    Attributes
    ----------
    task, title, metric
        The task measured.
    tile, volume
        Tile the networks run on and the held-out volume shape.
    rows
        Measured rows, CPU first.
    energy_label, energy_source
        Whether energy was ``measured`` or ``estimated``, and how.
    settings
        The :class:`BenchSettings` used.
    machine
        CPU model, cores and features, GPU names.
    compression
        Records of the compressed artifacts (pruning, distillation, guard verdicts).
    seconds
        Wall time of the whole measurement.
    slices
        Central slices for the figure: ``input``, ``ground truth`` and one per row key.
    """

    task: str
    title: str
    metric: str
    tile: tuple[int, ...]
    volume: tuple[int, ...]
    rows: list[Row]
    energy_label: str
    energy_source: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    compression: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    slices: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def row(self, key: str) -> Row | None:
        """Return the row called ``key``, or ``None``."""
        return next((r for r in self.rows if r.key == key), None)

    def baseline_for(self, row: Row, base: str) -> Row | None:
        """Return the row that ``row`` is compared with for baseline ``base`` (same device where it exists)."""
        if base == "torch" and row.device != "CPU":
            return self.row(f"torch-{row.device.lower()}") or self.row("torch")
        if base != "torch" and row.device != "CPU":
            return None
        return self.row(base)

    def speedup(self, row: Row, base: str) -> float | None:
        """How many times faster than the baseline row, or ``None``.

        Paired round by round where both rows kept their rounds (timed together, as
        :func:`~ebai.tasks._benchmark.measure_task` does): a machine that changes speed for seconds at
        a time then cannot favour either row. Otherwise the ratio of the two medians.
        """
        from ebai.core.latency import paired_speedup

        ref = self.baseline_for(row, base)
        if ref is None or row.latency_s <= 0:
            return None
        if ref.round_latency_s and len(ref.round_latency_s) == len(row.round_latency_s):
            return paired_speedup(ref.round_latency_s, row.round_latency_s)
        return ref.latency_s / row.latency_s

    def energy_saving(self, row: Row, base: str) -> float | None:
        """How many times less energy per tile than the baseline row, or ``None``."""
        ref = self.baseline_for(row, base)
        if ref is None or ref.energy_j is None or not row.energy_j:
            return None
        return ref.energy_j / row.energy_j

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the slices are left out), with every ratio spelled out."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["speedup"] = {b: self.speedup(r, b) for b in BASELINES}
            d["energy_saving"] = {b: self.energy_saving(r, b) for b in BASELINES}
            rows.append(d)
        return {
            "task": self.task,
            "title": self.title,
            "metric": self.metric,
            "tile": list(self.tile),
            "volume": list(self.volume),
            "energy_label": self.energy_label,
            "energy_source": self.energy_source,
            "settings": self.settings,
            "machine": self.machine,
            "compression": self.compression,
            "seconds": round(self.seconds, 1),
            "rows": rows,
        }
