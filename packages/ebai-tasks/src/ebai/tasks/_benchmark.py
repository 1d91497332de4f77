"""Table 1 of the EfficientBioAI paper, measured here: one task, before and after compression.

For a reference task this compresses the shipped network through the product path
(:mod:`ebai.tasks._variants`), then runs every variant on a held-out synthetic volume larger than
one tile and measures, side by side:

- accuracy against the ground truth (the task metric), on the whole tiled volume;
- latency per tile (:func:`ebai.core.latency.measure_interleaved`: calls of all variants
  interleaved round by round, so a load change on a shared machine hits every variant alike);
- energy per tile (:func:`ebai.core.energy.measure_energy_interleaved`: interleaved windows,
  labelled measured or estimated, with their spread; rows within each other's spread are marked).

CPU rows: PyTorch eager fp32; the OpenVINO backend's own baselines (forced f32, and its default
precision: bf16 on CPUs with AVX-512 BF16 or AMX, which is what a user gets without ebai); OpenVINO
int8 (NNCF); pruned + distilled + OpenVINO int8. GPU rows are added when the TensorRT backend is
available. The settings are in :mod:`ebai.tasks._settings`, the table in :mod:`ebai.tasks._table`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebai.core.energy import indistinct_groups
from ebai.core.latency import measure_interleaved
from ebai.core.progress import progress
from ebai.tasks._adapter import TaskAdapter
from ebai.tasks._settings import BenchSettings, held_out_volume
from ebai.tasks._table import Row, TaskTable
from ebai.tasks._task import TEST_SEED, Task
from ebai.tasks._variants import Variant, open_variants, require_compression

if TYPE_CHECKING:
    from ebai.core.energy import EnergySpread

__all__ = ["accuracy_pass", "machine", "measure_task"]

logger = logging.getLogger("ebai")


def machine() -> dict[str, Any]:
    """CPU model, logical cores, inference-relevant features and GPUs of this machine."""
    from ebai.core.hardware import cpu_info, nvidia_gpus

    cpu = cpu_info()
    return {"cpu": cpu.model, "cores": cpu.cores, "features": list(cpu.features), "gpus": nvidia_gpus()}


def _center_slice(volume: np.ndarray) -> np.ndarray:
    """Return the central Z slice of a ``(Z, Y, X)`` volume (a 2D image as it is)."""
    arr = np.asarray(volume)
    return arr[arr.shape[0] // 2] if arr.ndim == 3 else arr


def accuracy_pass(
    task: Task,
    adapter: TaskAdapter,
    variant: Variant,
    inputs: np.ndarray,
    targets: np.ndarray,
) -> tuple[float, list[np.ndarray], list[np.ndarray], float]:
    """Run the variant over every held-out volume: metric, raw outputs, results, seconds."""
    raw_outputs, results, scores = [], [], []
    started = time.perf_counter()
    for x, y in zip(inputs, targets, strict=True):
        out = adapter.run_tiled(adapter.preprocess(x), variant.infer, batch_size=1)
        result = adapter.postprocess(out)
        raw_outputs.append(out)
        results.append(result)
        scores.append(task.score(result, y))
    return float(np.mean(scores)), raw_outputs, results, time.perf_counter() - started


def measure_task(
    task: Task,
    settings: BenchSettings | None = None,
    *,
    workdir: Path | None = None,
    energy: bool = True,
    status: Callable[[str], None] | None = None,
) -> TaskTable:
    """Compress ``task``'s shipped network and measure the Table-1 rows for it.

    Parameters
    ----------
    task
        The reference task.
    settings
        Work presets (:meth:`BenchSettings.full` by default).
    workdir
        Folder for the compressed artifacts (a temporary folder, removed afterwards, by default).
    energy
        Measure energy (codecarbon); without it the energy columns stay empty.
    status
        Called with a line saying what is being done (the CLI prints it); logged by default.

    Returns
    -------
    TaskTable
        Every row with latency, energy and accuracy, and the slices for the figure.
    """
    require_compression()
    task.check_available()
    settings = settings or BenchSettings.full()
    status = status or logger.info
    started = time.perf_counter()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=f"ebai-{task.name}-") as tmp:
            return _measure(task, settings, Path(tmp), energy, started, status)
    return _measure(task, settings, Path(workdir), energy, started, status)


def _measure(
    task: Task, settings: BenchSettings, workdir: Path, energy: bool, started: float, status: Callable[[str], None]
) -> TaskTable:
    from ebai.core.metrics import pearson

    adapter = TaskAdapter(task.name)
    volume = held_out_volume(task, settings)
    inputs, targets = task.make_samples(settings.volumes, TEST_SEED, volume)
    record: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        variants = open_variants(task, adapter, settings, workdir, record, status, stack)
        # accuracy on the whole held-out volume(s), through the tiler
        accuracy: dict[str, tuple[float, float, float]] = {}
        slices: dict[str, np.ndarray] = {
            "input": _center_slice(np.asarray(inputs[0])[0]),
            "ground truth": _center_slice(_target_image(targets[0])),
        }
        reference: list[np.ndarray] = []
        for v in progress(variants, desc=f"{task.name}: accuracy on the held-out volume", unit="model"):
            status(
                f"[{task.name}] running {v.label} ({v.precision}) on the held-out volume {'x'.join(map(str, volume))}"
            )
            score, raw, results, seconds = accuracy_pass(task, adapter, v, inputs, targets)
            if not reference:
                reference = raw
            fidelity = float(np.mean([pearson(a, b) for a, b in zip(raw, reference, strict=True)]))
            accuracy[v.key] = (score, fidelity, seconds)
            slices[v.key] = _center_slice(_target_image(results[0]))

        tile = adapter.preprocess(np.asarray(inputs[0]))[(slice(None), *_central_window(volume, task.tile))]
        batch = np.ascontiguousarray(tile[np.newaxis], dtype=np.float32)
        calls = {v.key: (lambda v=v: v.infer(batch)) for v in variants}
        status(f"[{task.name}] timing one {'x'.join(map(str, task.tile))} tile, {settings.rounds} interleaved rounds")
        latency = measure_interleaved(calls, rounds=settings.rounds, warmup=2, desc=f"{task.name}: latency rounds")
        energy_per_tile, label, source = _energy(task, calls, settings, energy, status)

    same = indistinct_groups(energy_per_tile)
    rows = []
    for v in variants:
        spread = energy_per_tile.get(v.key)
        rows.append(
            Row(
                key=v.key,
                label=v.label,
                device=v.device,
                precision=v.precision,
                latency_s=latency[v.key].median_s,
                latency_p95_s=latency[v.key].p95_s,
                energy_j=None if spread is None else spread.joules_per_call,
                accuracy=accuracy[v.key][0],
                fidelity=accuracy[v.key][1],
                volume_s=accuracy[v.key][2],
                parameters=v.parameters,
                energy_low_j=None if spread is None else spread.low,
                energy_high_j=None if spread is None else spread.high,
                energy_same_as=same.get(v.key, ""),
                round_latency_s=latency[v.key].round_min_s,
            )
        )
    return TaskTable(
        task=task.name,
        title=task.title,
        metric=task.metric,
        tile=tuple(task.tile),
        volume=tuple(volume),
        rows=rows,
        energy_label=label,
        energy_source=source,
        settings=asdict(settings),
        machine=machine(),
        compression=record,
        seconds=time.perf_counter() - started,
        slices=slices,
    )


def _energy(
    task: Task,
    calls: dict[str, Callable[[], Any]],
    settings: BenchSettings,
    energy: bool,
    status: Callable[[str], None],
) -> tuple[dict[str, EnergySpread | None], str, str]:
    """Energy per tile of every variant over interleaved windows, or why it was not measured."""
    from ebai.core.energy import NOT_MEASURED, energy_available, measure_energy_interleaved

    if not energy:
        return {}, "not measured", "energy measurement switched off"
    if not energy_available():
        return {}, "not measured", NOT_MEASURED.removeprefix("not measured: ")
    status(
        f"[{task.name}] measuring energy per tile (codecarbon, offline): {settings.energy_rounds} interleaved "
        f"windows of at least {settings.energy_seconds:g} s per model"
    )
    spreads = measure_energy_interleaved(
        calls,
        rounds=settings.energy_rounds,
        min_duration_s=settings.energy_seconds,
        warmup=0,
        desc=f"{task.name}: energy rounds",
    )
    first = next(iter(spreads.values()))
    return dict(spreads), first.label, first.source


def _target_image(target: np.ndarray) -> np.ndarray:
    """Return a ground truth or result as one image: the single channel of ``(1, ...)``, labels as they are."""
    arr = np.asarray(target)
    return arr[0] if arr.ndim >= 3 and arr.shape[0] == 1 else arr


def _central_window(shape: Sequence[int], tile: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(shape, tile, strict=True))
