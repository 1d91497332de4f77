"""The EfficientBioAI paper's Fig. 2: pruning criteria and ratios against accuracy, energy and speed.

Every point prunes the task's shipped network with one criterion (Torch-Pruning's L1, L2 or FPGM
channel importance) at one ratio, distils it from the original, quantizes it to int8 and runs it
in OpenVINO: the full ``ebai compress`` path. Its speed-up and energy saving are measured against
the unpruned network in OpenVINO at f32, paired with it call by call, so the ratio of each point is
fair even when the machine's load changes during the sweep; its accuracy drop is against the fp32
network's accuracy on the same held-out volume.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.files import atomic_dir
from ebai.core.install_hints import install_line
from ebai.core.progress import progress
from ebai.tasks._adapter import TaskAdapter
from ebai.tasks._benchmark import accuracy_pass, machine
from ebai.tasks._settings import BenchSettings, distill_steps, held_out_volume
from ebai.tasks._task import CALIBRATION_SEED, TEST_SEED, Task
from ebai.tasks._variants import Variant, recipe, require_compression

__all__ = ["SweepPoint", "SweepResult", "SweepSettings", "format_sweep", "run_sweep", "write_sweep"]

#: The guard still runs in a sweep, with a low bar: the point is to see how accuracy falls.
_SWEEP_GUARD = 0.5


@dataclass(frozen=True)
class SweepSettings:
    """How much work each point of the sweep takes."""

    user_images: int = 6
    calibration: int = 16
    guard_tiles: int = 4
    distill_steps: int = 150
    rounds: int = 6
    energy_seconds: float = 1.0
    volume: tuple[int, ...] | None = None

    @classmethod
    def full(cls, **changes: Any) -> SweepSettings:
        """Default settings of ``ebai sweep``."""
        return cls(**changes)

    @classmethod
    def quick(cls, **changes: Any) -> SweepSettings:
        """Fewer steps and rounds, for a first look."""
        base = {
            "user_images": 4,
            "calibration": 8,
            "guard_tiles": 2,
            "distill_steps": 40,
            "rounds": 3,
            "energy_seconds": 0.3,
        }
        return cls(**{**base, **changes})


@dataclass(frozen=True)
class SweepPoint:
    """One pruning criterion at one ratio (ratio 0: int8 without pruning).

    ``speedup`` and ``energy_saving`` are against the unpruned network in OpenVINO at f32;
    ``accuracy_drop`` is the fp32 network's accuracy minus this point's. ``error`` holds the
    reason when compression refused the point (the accuracy guard), and then the numbers are NaN.
    """

    method: str
    ratio: float
    parameters: int | None
    mac_reduction: float | None
    accuracy: float
    accuracy_drop: float
    latency_s: float
    speedup: float
    energy_j: float | None
    energy_saving: float | None
    distill_pearson: float | None
    error: str = ""


@dataclass
class SweepResult:
    """Every point of a sweep with the baselines they were measured against."""

    task: str
    title: str
    metric: str
    volume: tuple[int, ...]
    fp32_accuracy: float
    points: list[SweepPoint]
    energy_label: str
    energy_source: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["volume"] = list(self.volume)
        return d


def _paired(
    base: Callable[[], Any], point: Callable[[], Any], rounds: int, energy: bool, seconds: float
) -> tuple[float, float, float | None, float | None, str, str]:
    """Latency (baseline, point) interleaved call by call, and energies in interleaved windows.

    Returns the point's median latency, its speed-up over the baseline paired round by round
    (:func:`ebai.core.latency.paired_speedup`: a machine changing speed between rounds favours
    neither), the two energies, and the energy label and source.
    """
    from ebai.core.energy import NOT_MEASURED, energy_available, measure_energy_interleaved
    from ebai.core.latency import measure_interleaved, paired_speedup

    calls = {"base": base, "point": point}
    latency = measure_interleaved(calls, rounds=rounds, warmup=1)
    lp, speedup = latency["point"].median_s, paired_speedup(latency["base"], latency["point"])
    if not energy:
        return lp, speedup, None, None, "not measured", "energy measurement switched off"
    if not energy_available():
        return lp, speedup, None, None, "not measured", NOT_MEASURED.removeprefix("not measured: ")
    spreads = measure_energy_interleaved(calls, rounds=2, min_duration_s=seconds, warmup=0)
    eb, ep = spreads["base"], spreads["point"]
    return lp, speedup, eb.joules_per_call, ep.joules_per_call, ep.label, ep.source


def run_sweep(
    task: Task,
    methods: Sequence[str],
    ratios: Sequence[float],
    settings: SweepSettings | None = None,
    *,
    energy: bool = True,
    status: Callable[[str], None] | None = None,
) -> SweepResult:
    """Prune, distil and quantize ``task``'s network for every criterion and ratio, and measure each.

    Parameters
    ----------
    task
        The reference task.
    methods
        Pruning criteria: ``"l1"``, ``"l2"``, ``"fpgm"``.
    ratios
        Fractions of channels removed, each in (0, 1).
    settings
        Work per point (:meth:`SweepSettings.full` by default).
    energy
        Measure energy per tile.
    status
        Called with a line saying what is being done.
    """
    from ebai.compress import compress
    from ebai.core.comparison import baseline_engines
    from ebai.core.data import ArraySource
    from ebai.core.errors import FidelityError

    require_compression()
    settings = settings or SweepSettings.full()
    say = status or (lambda _m: None)
    started = time.perf_counter()
    adapter = TaskAdapter(task.name)
    bench = BenchSettings(volume=settings.volume)
    volume = held_out_volume(task, bench)
    inputs, targets = task.make_samples(1, TEST_SEED, volume)
    images, _ = task.make_samples(settings.user_images, CALIBRATION_SEED, task.shape)
    data = ArraySource(list(images))
    module = adapter.load_module()
    fp32_acc, _, _, _ = accuracy_pass(
        task, adapter, Variant("torch", "", "CPU", "fp32", adapter.torch_infer(module)), inputs, targets
    )
    tile = adapter.preprocess(np.asarray(inputs[0]))[(slice(None), *[slice(0, t) for t in task.tile])]
    batch = np.ascontiguousarray(tile[np.newaxis], dtype=np.float32)
    points: list[SweepPoint] = []
    label, source = "not measured", "energy measurement switched off"
    grid = [("int8", 0.0)] + [(m, r) for m in methods for r in ratios]
    with tempfile.TemporaryDirectory(prefix=f"ebai-sweep-{task.name}-") as tmp:
        work = Path(tmp)
        say(f"[{task.name}] compressing: int8 without pruning (the sweep's reference)")
        base_settings = BenchSettings(
            user_images=settings.user_images, calibration=settings.calibration, guard_tiles=settings.guard_tiles
        )
        art = compress(
            adapter, data, recipe(task, base_settings, pruned=False, targets={"openvino": "int8"}), work / "int8.ebai"
        )
        reference = art.file(art.manifest.reference)
        with baseline_engines(reference, adapter.input_spec, ["openvino"]) as baselines:
            f32 = next(b.engine for b in baselines if b.variant.key == "f32")
            for method, ratio in progress(grid, desc=f"{task.name}: sweep", unit="point"):
                point_settings = BenchSettings(
                    user_images=settings.user_images,
                    calibration=settings.calibration,
                    guard_tiles=settings.guard_tiles,
                    distill_steps=settings.distill_steps,
                    prune_method=method if ratio > 0 else "l1",
                    prune_ratio=ratio if ratio > 0 else 0.5,
                )
                folder = work / f"{method}-{ratio:g}.ebai"
                if ratio > 0:
                    say(
                        f"[{task.name}] {method.upper()} {ratio:.0%}: prune, distil {distill_steps(task, point_settings)} steps, int8"
                    )
                    point_recipe = recipe(task, point_settings, pruned=True, targets={"openvino": "int8"})
                    point_recipe = point_recipe.updated({"fidelity": {"threshold": _SWEEP_GUARD}})
                    try:
                        point_art = compress(adapter, data, point_recipe, folder)
                    except FidelityError as exc:
                        nan = float("nan")
                        points.append(
                            SweepPoint(method, ratio, None, None, nan, nan, nan, nan, None, None, None, str(exc))
                        )
                        continue
                else:
                    point_art = art
                pruning = point_art.manifest.pruning or {}
                tuning = point_art.manifest.fine_tuning or {}
                with point_art.load_engine("openvino", "int8") as engine:
                    variant = Variant(f"{method}-{ratio:g}", method, "CPU", "int8", engine.infer)
                    acc, _, _, _ = accuracy_pass(task, adapter, variant, inputs, targets)
                    lp, speedup, eb, ep, label, source = _paired(
                        lambda: f32.infer(batch),
                        lambda: engine.infer(batch),
                        settings.rounds,
                        energy,
                        settings.energy_seconds,
                    )
                points.append(
                    SweepPoint(
                        method=method,
                        ratio=ratio,
                        parameters=pruning.get("params_after"),
                        mac_reduction=pruning.get("mac_reduction"),
                        accuracy=acc,
                        accuracy_drop=fp32_acc - acc,
                        latency_s=lp,
                        speedup=speedup,
                        energy_j=ep,
                        energy_saving=(eb / ep) if eb and ep else None,
                        distill_pearson=tuning.get("pearson_after"),
                    )
                )
                if ratio > 0:
                    shutil.rmtree(folder, ignore_errors=True)
    return SweepResult(
        task=task.name,
        title=task.title,
        metric=task.metric,
        volume=tuple(volume),
        fp32_accuracy=fp32_acc,
        points=points,
        energy_label=label,
        energy_source=source,
        settings={**asdict(settings), "methods": list(methods), "ratios": list(ratios)},
        machine=machine(),
        seconds=time.perf_counter() - started,
    )


def format_sweep(result: SweepResult) -> str:
    """Format the sweep as an aligned markdown table."""
    head = [
        "pruner",
        "ratio",
        "params",
        "MACs cut",
        f"{result.metric} vs GT",
        "drop",
        "latency/tile",
        "speed-up",
        f"energy ({result.energy_label})",
        "saving",
    ]
    body = []
    for p in result.points:
        if p.error:
            body.append([p.method.upper(), f"{p.ratio:.1f}", "-", "-", "refused", "-", "-", "-", "-", "-"])
            continue
        body.append(
            [
                "none (int8)" if p.ratio == 0 else p.method.upper(),
                f"{p.ratio:.1f}",
                "-" if p.parameters is None else f"{p.parameters / 1e6:.2f} M",
                "-" if p.mac_reduction is None else f"{p.mac_reduction:.1f}x",
                f"{p.accuracy:.4f}",
                f"{p.accuracy_drop:+.4f}",
                f"{p.latency_s * 1000:.1f} ms",
                f"{p.speedup:.1f}x",
                "-" if p.energy_j is None else f"{p.energy_j:.2f} J",
                "-" if p.energy_saving is None else f"{p.energy_saving:.1f}x",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    title = (
        f"{result.title}: pruning sweep, every point distilled and int8 in OpenVINO; speed-up and saving vs the "
        f"unpruned network in OpenVINO f32; drop vs the fp32 network's {result.metric} {result.fp32_accuracy:.4f}"
    )
    return "\n".join([title, "", line(head), rule, *(line(b) for b in body)])


def _plot(result: SweepResult, path: Path) -> bool:
    from ebai.core.plotting import figure

    fig = figure(13.0, 3.8)
    if fig is None:
        return False
    axes = fig.subplots(1, 3)
    base = next((p for p in result.points if p.ratio == 0 and not p.error), None)
    methods = sorted({p.method for p in result.points if p.ratio > 0})
    panels = (
        ("accuracy_drop", f"{result.metric} drop vs fp32"),
        ("energy_saving", "energy saving vs OV f32 (x)"),
        ("speedup", "speed-up vs OV f32 (x)"),
    )
    for ax, (attr, name) in zip(axes, panels, strict=True):
        for method in methods:
            pts = sorted((p for p in result.points if p.method == method and not p.error), key=lambda p: p.ratio)
            if base is not None:
                pts = [base, *pts]
            xs = [p.ratio for p in pts]
            ys = [getattr(p, attr) if getattr(p, attr) is not None else np.nan for p in pts]
            ax.plot(xs, ys, marker="o", label=method.upper())
        ax.set_xlabel("pruning ratio (0 = int8 only)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result.title}: pruning criterion and ratio (prune + distil + int8, OpenVINO)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return True


def write_sweep(
    out: Path | str, result: SweepResult, *, command: str, overwrite: bool = False
) -> tuple[Path, list[str]]:
    """Write the sweep's ``README.md``, ``results.json`` and ``sweep.png`` atomically into ``out``."""
    import json

    out = Path(out)
    images: list[str] = []
    with atomic_dir(out, overwrite) as tmp:
        if _plot(result, tmp / "sweep.png"):
            images.append("sweep.png")
        lines = [
            f"# ebai sweep: {result.title}",
            "",
            f"Made by `{command}`; held-out volume {'x'.join(map(str, result.volume))}, "
            f"CPU {result.machine.get('cpu')} ({result.machine.get('cores')} cores).",
            "",
            format_sweep(result),
            "",
            f"Energy: {result.energy_label} ({result.energy_source}). Latency: {result.settings.get('rounds')} "
            "calls interleaved with the baseline's; speed-up: the median of the per-round ratios.",
            "",
        ]
        lines += [f"![{name}]({name})" for name in images]
        if not images:
            lines.append(f"The plot was not made because matplotlib is missing: {install_line('tasks-report')}")
        errors = [p for p in result.points if p.error]
        for p in errors:
            lines.append(f"- {p.method.upper()} {p.ratio}: {p.error}")
        (tmp / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "results.json").write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    return out, images
