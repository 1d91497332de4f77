"""Table 1 of the EfficientBioAI paper, measured here: one task, before and after compression.

For a reference task this compresses the shipped network through the product path
(:func:`ebai.compress.compress` with the installed backends), then runs every variant on a
held-out synthetic volume larger than one tile and measures, side by side:

- accuracy against the ground truth (the task metric), on the whole tiled volume;
- latency per tile (:func:`ebai.core.latency.measure_latency`, calls of all variants interleaved
  round by round, so a load change on a shared machine hits every variant alike);
- energy per tile (:func:`ebai.core.energy.measure_energy`, labelled measured or estimated).

CPU rows: PyTorch eager fp32; OpenVINO forced to f32 (``INFERENCE_PRECISION_HINT=f32``); OpenVINO
at its default precision (bf16 on CPUs with AVX-512 BF16 or AMX, which is what a user gets
without ebai); OpenVINO int8 (NNCF); pruned + distilled + OpenVINO int8. GPU rows are added when
the TensorRT backend is available. ebai-compress and ebai-openvino are imported only here, when a
table is asked for.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.errors import MissingDependencyError
from ebai.core.progress import progress
from ebai.tasks._adapter import TaskAdapter
from ebai.tasks._task import CALIBRATION_SEED, TEST_SEED, Task

__all__ = ["BASELINES", "BenchSettings", "Row", "TaskTable", "distill_steps", "measure_task", "require_compression"]

logger = logging.getLogger("ebai")

_INSTALL = "pip install ebai-compress ebai-openvino"
#: Row keys the speed-up and energy-saving columns compare against, with their column names.
BASELINES = {"torch": "PyTorch", "openvino-f32": "OV f32", "openvino-default": "OV default"}


@dataclass(frozen=True)
class BenchSettings:
    """How much work a table takes; :meth:`full` and :meth:`quick` are the two presets.

    Attributes
    ----------
    volume
        Spatial shape of the held-out volume, or ``None`` for twice the task's tile (capped) so
        that it is larger than one tile.
    volumes
        Number of held-out volumes the accuracy is averaged over.
    user_images
        Synthetic "own images" (calibration seed) given to compression: some are held out by the
        accuracy guard, the rest calibrate int8 and feed distillation.
    calibration
        Tiles int8 is calibrated on.
    guard_tiles
        Held-out tiles the accuracy guard scores.
    distill_steps
        Distillation budget of the pruned network.
    prune_method, prune_ratio
        Pruning criterion and fraction of channels removed.
    rounds
        Interleaved latency rounds (one timed call of every variant per round).
    energy_seconds
        Least duration of each energy window.
    gpu
        Add TensorRT rows: ``None`` when the backend is available, ``True``/``False`` to force.
    """

    volume: tuple[int, ...] | None = None
    volumes: int = 1
    user_images: int = 6
    calibration: int = 16
    guard_tiles: int = 4
    distill_steps: int = 150
    prune_method: str = "l1"
    prune_ratio: float = 0.5
    rounds: int = 10
    energy_seconds: float = 2.0
    gpu: bool | None = None

    @classmethod
    def full(cls, **changes: Any) -> BenchSettings:
        """Return the settings ``ebai demo`` and ``ebai report`` use by default."""
        return cls(**changes)

    @classmethod
    def quick(cls, **changes: Any) -> BenchSettings:
        """Fewer images, steps and rounds, for CI (the numbers are noisier, the checks the same)."""
        base = {
            "user_images": 4,
            "calibration": 8,
            "guard_tiles": 2,
            "distill_steps": 40,
            "rounds": 4,
            "energy_seconds": 0.5,
        }
        return cls(**{**base, **changes})


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
        """How many times faster than the baseline row (latency ratio), or ``None``."""
        ref = self.baseline_for(row, base)
        if ref is None or row.latency_s <= 0:
            return None
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


def require_compression() -> None:
    """Raise :class:`MissingDependencyError` unless ebai-compress and the OpenVINO backend can run."""
    from ebai.core.plugins import BACKENDS, get_plugin

    try:
        import ebai.compress  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL) from exc
    try:
        spec = get_plugin(BACKENDS, "openvino")
    except Exception as exc:
        raise MissingDependencyError(_INSTALL) from exc
    avail = spec.is_available()
    if not avail:
        msg = f"the OpenVINO backend cannot run here ({avail.reason}): {_INSTALL}"
        raise MissingDependencyError(msg)


def gpu_available() -> bool:
    """Whether the TensorRT backend is installed and can run here."""
    from ebai.core.plugins import BACKENDS, get_plugin

    try:
        return bool(get_plugin(BACKENDS, "tensorrt").is_available())
    except Exception:  # not installed, or broken: no GPU rows
        return False


def machine() -> dict[str, Any]:
    """CPU model, logical cores, inference-relevant features and GPUs of this machine."""
    from ebai.core.hardware import cpu_info, nvidia_gpus

    cpu = cpu_info()
    return {"cpu": cpu.model, "cores": cpu.cores, "features": list(cpu.features), "gpus": nvidia_gpus()}


def held_out_volume(task: Task, settings: BenchSettings) -> tuple[int, ...]:
    """Return the held-out volume shape: the settings' or, by default, one larger than a tile."""
    if settings.volume is not None:
        return tuple(int(v) for v in settings.volume)
    return task.test_shape if np.prod(task.test_shape) > np.prod(task.tile) else tuple(2 * t for t in task.tile)


def _center_slice(volume: np.ndarray) -> np.ndarray:
    """Return the central Z slice of a ``(Z, Y, X)`` volume (a 2D image as it is)."""
    arr = np.asarray(volume)
    return arr[arr.shape[0] // 2] if arr.ndim == 3 else arr


@dataclass
class _Variant:
    key: str
    label: str
    device: str
    precision: str
    infer: Callable[[np.ndarray], np.ndarray]
    parameters: int | None = None
    close: Callable[[], None] = lambda: None


def distill_steps(task: Task, settings: BenchSettings) -> int:
    """Distillation budget for ``task``: the settings' steps, never fewer than the task needs."""
    return max(int(settings.distill_steps), int(task.min_distill_steps))


def _recipe(task: Task, settings: BenchSettings, *, pruned: bool, targets: dict[str, str]) -> Any:
    from ebai.compress import CalibrationSettings, FidelitySettings, FineTuneSettings, PruneSettings, Recipe

    if pruned:
        prune = PruneSettings(method=settings.prune_method, ratio=settings.prune_ratio)
        fine_tune = FineTuneSettings(method="distill", steps=distill_steps(task, settings), eval_every=10, patience=6)
    else:
        prune = PruneSettings(method="none")
        fine_tune = FineTuneSettings(method="none", steps=0)
    return Recipe(
        prune=prune,
        fine_tune=fine_tune,
        calibration=CalibrationSettings(samples=settings.calibration),
        fidelity=FidelitySettings(
            metric=task.guard_metric, threshold=task.guard_threshold(pruned), held_out=1, tiles=settings.guard_tiles
        ),
        targets=tuple(targets),
        precision=dict(targets),
    )


def _compression_record(artifact: Any) -> dict[str, Any]:
    m = artifact.manifest
    targets = {}
    for t in m.targets:
        fid = t.fidelity.to_dict() if t.fidelity else None
        targets[t.key] = {"fidelity_vs_original": fid, "options": dict(t.options)}
    return {"pruning": _short_pruning(m.pruning), "fine_tuning": m.fine_tuning, "targets": targets}


def _short_pruning(pruning: Any) -> Any:
    if not pruning:
        return pruning
    keep = (
        "method",
        "ratio",
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "mac_reduction",
        "fidelity",
    )
    return {k: pruning[k] for k in keep if k in pruning}


def _count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _variants(
    task: Task,
    adapter: TaskAdapter,
    settings: BenchSettings,
    workdir: Path,
    record: dict[str, Any],
    status: Callable[[str], None],
) -> list[_Variant]:
    """Compress the task's network and open every variant the table measures."""
    from ebai.compress import compress
    from ebai.core.data import ArraySource
    from ebai.core.plugins import get_backend

    gpu = gpu_available() if settings.gpu is None else settings.gpu
    images, _ = task.make_samples(settings.user_images, CALIBRATION_SEED, task.shape)
    data = ArraySource(list(images))
    int8_targets = {"openvino": "int8", **({"tensorrt": "int8"} if gpu else {})}
    variants: list[_Variant] = []

    module = adapter.load_module()
    params = _count_parameters(module)
    variants.append(_Variant("torch", "PyTorch eager", "CPU", "fp32", adapter.torch_infer(module), params))

    status(f"[{task.name}] compressing: int8 (NNCF post-training quantization, accuracy guard)")
    art_int8 = compress(
        adapter, data, _recipe(task, settings, pruned=False, targets=int8_targets), workdir / "int8.ebai"
    )
    record["int8"] = _compression_record(art_int8)

    # OpenVINO fp32: the artifact's reference ONNX (the unpruned fp32 network) lowered as is.
    backend = get_backend("openvino")
    fp32_dir = workdir / "openvino-fp32"
    fp32_dir.mkdir()
    lowering = backend.lower(
        art_int8.file(art_int8.manifest.reference),
        fp32_dir,
        precision="fp32",
        input_spec=adapter.input_spec,
        calibration=[],
    )
    f32 = backend.load(fp32_dir, lowering, inference_precision="f32")
    default = backend.load(fp32_dir, lowering)
    variants.append(
        _Variant(
            "openvino-f32", "OpenVINO", "CPU", f"fp32, runs {f32.execution_precision}", f32.infer, params, f32.close
        )
    )
    variants.append(
        _Variant(
            "openvino-default",
            "OpenVINO, default precision",
            "CPU",
            f"fp32 IR, runs {default.execution_precision}",
            default.infer,
            params,
            default.close,
        )
    )
    int8 = art_int8.load_engine("openvino", "int8")
    variants.append(_Variant("openvino-int8", "OpenVINO + NNCF", "CPU", "int8", int8.infer, params, int8.close))

    ratio = f"{settings.prune_ratio:.0%}"
    status(
        f"[{task.name}] compressing: prune {ratio} of channels ({settings.prune_method.upper()}), "
        f"distil up to {distill_steps(task, settings)} steps, int8"
    )
    art_pruned = compress(
        adapter, data, _recipe(task, settings, pruned=True, targets=int8_targets), workdir / "pruned.ebai"
    )
    record["pruned-int8"] = _compression_record(art_pruned)
    pruned_params = (art_pruned.manifest.pruning or {}).get("params_after")
    pruned = art_pruned.load_engine("openvino", "int8")
    label = f"pruned {ratio} ({settings.prune_method.upper()}) + distilled + OpenVINO int8"
    variants.append(_Variant("openvino-pruned-int8", label, "CPU", "int8", pruned.infer, pruned_params, pruned.close))

    if gpu:
        variants.extend(
            _gpu_variants(
                task, adapter, settings, data, workdir, art_int8, art_pruned, params, pruned_params, record, status
            )
        )
    return variants


def _gpu_variants(
    task: Task,
    adapter: TaskAdapter,
    settings: BenchSettings,
    data: Any,
    workdir: Path,
    art_int8: Any,
    art_pruned: Any,
    params: int,
    pruned_params: int | None,
    record: dict[str, Any],
    status: Callable[[str], None],
) -> list[_Variant]:
    """TensorRT rows: fp16 and int8 of the network, int8 of the pruned one, PyTorch on the GPU."""
    from ebai.compress import compress

    out: list[_Variant] = []
    try:
        import torch

        if torch.cuda.is_available():
            module = adapter.load_module().cuda()

            def torch_gpu(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    y = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda())
                    return y.float().cpu().numpy()

            out.append(_Variant("torch-gpu", "PyTorch eager", "GPU", "fp32", torch_gpu, params))
    except Exception:  # a CPU-only torch: no PyTorch GPU row
        logger.debug("no PyTorch GPU row", exc_info=True)
    status(f"[{task.name}] compressing: TensorRT fp16")
    art_fp16 = compress(
        adapter, data, _recipe(task, settings, pruned=False, targets={"tensorrt": "fp16"}), workdir / "trt-fp16.ebai"
    )
    record["tensorrt-fp16"] = _compression_record(art_fp16)
    for key, label, art, precision, n in (
        ("tensorrt-fp16", "TensorRT", art_fp16, "fp16", params),
        ("tensorrt-int8", "TensorRT", art_int8, "int8", params),
        ("tensorrt-pruned-int8", "pruned + distilled + TensorRT", art_pruned, "int8", pruned_params),
    ):
        engine = art.load_engine("tensorrt", precision)
        out.append(_Variant(key, label, "GPU", precision, engine.infer, n, engine.close))
    return out


def _accuracy_pass(
    task: Task,
    adapter: TaskAdapter,
    variant: _Variant,
    inputs: np.ndarray,
    targets: np.ndarray,
) -> tuple[float, list[np.ndarray], list[np.ndarray], float]:
    """Run the variant over every held-out volume: metric, raw outputs, results, seconds."""
    from ebai.core.tiling import predict_tiled

    spec = adapter.input_spec
    raw_outputs, results, scores = [], [], []
    started = time.perf_counter()
    for x, y in zip(inputs, targets, strict=True):
        out = predict_tiled(
            adapter.preprocess(x), variant.infer, spec.tile, overlap=spec.overlap, batch_size=1, divisor=spec.divisor
        )
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
    from ebai.core.energy import measure_energy
    from ebai.core.latency import LatencyStats, measure_latency
    from ebai.core.metrics import pearson

    adapter = TaskAdapter(task.name)
    volume = held_out_volume(task, settings)
    inputs, targets = task.make_samples(settings.volumes, TEST_SEED, volume)
    record: dict[str, Any] = {}
    variants = _variants(task, adapter, settings, workdir, record, status)
    try:
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
            score, raw, results, seconds = _accuracy_pass(task, adapter, v, inputs, targets)
            if not reference:
                reference = raw
            fidelity = float(np.mean([pearson(a, b) for a, b in zip(raw, reference, strict=True)]))
            accuracy[v.key] = (score, fidelity, seconds)
            slices[v.key] = _center_slice(_target_image(results[0]))

        # latency per tile, interleaved
        tile = adapter.preprocess(np.asarray(inputs[0]))[(slice(None), *_central_window(volume, task.tile))]
        batch = np.ascontiguousarray(tile[np.newaxis], dtype=np.float32)
        samples: dict[str, list[float]] = {v.key: [] for v in variants}
        status(f"[{task.name}] timing one {'x'.join(map(str, task.tile))} tile, {settings.rounds} interleaved rounds")
        for v in variants:
            measure_latency(lambda v=v: v.infer(batch), warmup=2, repeats=1)
        for _ in progress(
            range(settings.rounds), desc=f"{task.name}: latency rounds", total=settings.rounds, unit="round"
        ):
            for v in variants:
                samples[v.key].append(measure_latency(lambda v=v: v.infer(batch), warmup=0, repeats=1).median_s)
        latency = {k: LatencyStats.from_samples(s) for k, s in samples.items()}

        joules: dict[str, float | None] = {v.key: None for v in variants}
        label, source = "not measured", "energy measurement switched off"
        if energy:
            status(f"[{task.name}] measuring energy per tile (codecarbon, offline)")
            for v in progress(variants, desc=f"{task.name}: energy", unit="model"):
                result = measure_energy(
                    lambda v=v: v.infer(batch), repeats=3, warmup=1, min_duration_s=settings.energy_seconds
                )
                joules[v.key] = result.joules_per_call
                label, source = result.label, result.source
    finally:
        for v in variants:
            v.close()

    rows = [
        Row(
            key=v.key,
            label=v.label,
            device=v.device,
            precision=v.precision,
            latency_s=latency[v.key].median_s,
            latency_p95_s=latency[v.key].p95_s,
            energy_j=joules[v.key],
            accuracy=accuracy[v.key][0],
            fidelity=accuracy[v.key][1],
            volume_s=accuracy[v.key][2],
            parameters=v.parameters,
        )
        for v in variants
    ]
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


def _target_image(target: np.ndarray) -> np.ndarray:
    """Return a ground truth or result as one image: the single channel of ``(1, ...)``, labels as they are."""
    arr = np.asarray(target)
    return arr[0] if arr.ndim >= 3 and arr.shape[0] == 1 else arr


def _central_window(shape: Sequence[int], tile: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(shape, tile, strict=True))
