"""``ebai benchmark``: latency, throughput and energy of an artifact's targets, side by side.

Every row names the precision the hardware computes in, not only the stored one: OpenVINO runs an
fp32 model in bf16 by default on CPUs that have it, so the table shows the reference model forced
to f32 and at OpenVINO's default beside the artifact's targets, and, with ``--against-torch``, the
original model in PyTorch eager mode (what a user runs without ebai).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from ebai.core.artifact import Artifact
from ebai.core.commands._run_setup import engine_option, engine_options, load_adapter
from ebai.core.errors import EbaiError, InputError
from ebai.core.specs import InputSpec

logger = logging.getLogger("ebai")

__all__ = ["benchmark", "benchmark_table", "measure_artifact"]


@dataclass
class _Row:
    name: str
    precision: str
    fn: Callable[[], np.ndarray]
    output: np.ndarray | None = None
    medians: list[float] = field(default_factory=list)
    p95s: list[float] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


def _smooth_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Image-like synthetic batch: white noise box-filtered along each spatial axis, then scaled."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for axis in range(2, len(shape)):
        x = sum(np.roll(x, k, axis=axis) for k in range(-2, 3)) / 5.0
    return (x / x.std()).astype(np.float32)


def _input_batch(spec: InputSpec, batch: int, image: Path | None, seed: int) -> tuple[np.ndarray, str]:
    if image is None:
        return _smooth_noise(spec.batch_shape(batch), seed), f"synthetic smoothed noise, seed {seed}"
    from ebai.core.imageio import read_image, to_sample

    sample = spec.normalization.apply(to_sample(read_image(image), spec))
    pads = [(0, 0)] + [
        (max(0, t - s) // 2, max(0, t - s) - max(0, t - s) // 2)
        for s, t in zip(sample.shape[1:], spec.tile, strict=True)
    ]
    sample = np.pad(sample, pads, mode="reflect")
    starts = [(s - t) // 2 for s, t in zip(sample.shape[1:], spec.tile, strict=True)]
    crop = sample[(slice(None), *(slice(a, a + t) for a, t in zip(starts, spec.tile, strict=True)))]
    return np.repeat(crop[None], batch, axis=0).astype(np.float32), f"centre tile of {image.name}"


def _precision_label(stored: str, runs: str, default: bool) -> str:
    if not runs:
        return stored
    if stored == "int8":
        return f"int8 (other layers {runs})"
    how = "backend default" if default else "forced"
    return runs if runs == "f32" and not default else f"{runs} ({stored} model, {how})"


@contextlib.contextmanager
def _rows(
    art: Artifact, x: np.ndarray, opts: dict[str, Any], against_torch: bool, notes: list[str]
) -> Iterator[list[_Row]]:
    from ebai.core.plugins import get_backend

    rows: list[_Row] = []
    with contextlib.ExitStack() as stack:
        if against_torch:
            row = _torch_row(art, x, notes)
            if row is not None:
                rows.append(row)
        if art.manifest.reference:
            try:
                ov = get_backend("openvino")
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ebai-bench-")))
                lowering = ov.lower(
                    art.file(art.manifest.reference),
                    tmp,
                    precision="fp32",
                    input_spec=art.manifest.input,
                    calibration=[],
                )
                for forced in ("f32", None):
                    engine = stack.enter_context(ov.load(tmp, lowering, **{**opts, "inference_precision": forced}))
                    runs = getattr(engine, "execution_precision", "")
                    label = "f32 (INFERENCE_PRECISION_HINT=f32)" if forced else f"{runs} (OpenVINO default for fp32)"
                    rows.append(
                        _Row(f"openvino {'f32' if forced else 'default'} (reference.onnx)", label, _bind(engine, x))
                    )
            except EbaiError as exc:
                notes.append(f"OpenVINO rows from reference.onnx skipped: {exc}")
        for target in art.manifest.targets:
            try:
                engine = stack.enter_context(art.load_engine(target.backend, target.precision, **opts))
            except EbaiError as exc:
                notes.append(f"{target.key} skipped: {exc}")
                continue
            runs = getattr(engine, "execution_precision", "")
            rows.append(
                _Row(
                    target.key,
                    _precision_label(target.precision, runs, "inference_precision" not in opts),
                    _bind(engine, x),
                )
            )
        yield rows


def _bind(engine: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: engine(x)


def _torch_row(art: Artifact, x: np.ndarray, notes: list[str]) -> _Row | None:
    adapter, why = load_adapter(art.manifest.source)
    if adapter is None:
        notes.append(f"PyTorch eager row skipped: {why}")
        return None
    try:
        import torch

        module = adapter.load_module()
    except (ImportError, EbaiError) as exc:
        notes.append(f"PyTorch eager row skipped: the original model cannot be built here ({exc})")
        return None
    tensor = torch.from_numpy(x)

    def call() -> np.ndarray:
        with torch.inference_mode():
            return module(tensor).numpy()

    return _Row("pytorch eager (original model)", "fp32", call)


def _measure(rows: list[_Row], rounds: int, warmup: int, repeats: int) -> None:
    from ebai.core.latency import measure_latency

    for r in range(rounds):  # interleaved: a busy neighbour slows every row alike
        for row in rows:
            stats = measure_latency(row.fn, warmup=warmup if r == 0 else 0, repeats=repeats)
            row.medians.append(stats.median_s)
            row.p95s.append(stats.p95_s)


def benchmark_table(result: dict[str, Any]) -> str:
    """Plain-text table of a :func:`measure_artifact` result, one row per engine with its precision."""
    head = (
        "row",
        "precision",
        "median ms",
        "p95 ms",
        "images/s",
        "J/image",
        "speed-up",
        f"pearson vs {result['baseline']}",
    )
    lines = []
    for r in result["rows"]:
        energy = f"{r['joules_per_image']:.3g} {r['energy_label']}" if r.get("joules_per_image") is not None else "-"
        lines.append(
            (
                r["name"],
                r["precision"],
                f"{r['median_s'] * 1e3:.1f}",
                f"{r['p95_s'] * 1e3:.1f}",
                f"{r['images_per_s']:.2f}",
                energy,
                f"{r['speedup']:.2f}x",
                f"{r['pearson']:.4f}",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line).rstrip() for line in lines]
    return "\n".join(out)


def measure_artifact(
    artifact: Path,
    *,
    against_torch: bool = False,
    batch_size: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    rounds: int = 1,
    energy: bool = True,
    image: Path | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Latency, throughput, energy and Pearson of every engine of an artifact, as ``ebai benchmark`` prints them.

    Returns the JSON-ready result ``ebai benchmark --json`` prints (rows with name, precision,
    median/p95 seconds, images/s, joules per image, speed-up and Pearson against the first row);
    :func:`benchmark_table` formats it. Parameters are those of the command.
    """
    from ebai.core.hardware import cpu_info
    from ebai.core.metrics import pearson

    art = Artifact.open(artifact)
    opts = dict(options or {})
    x, what = _input_batch(art.manifest.input, batch_size, image, seed)
    notes: list[str] = []
    with _rows(art, x, opts, against_torch, notes) as rows:
        if not rows:
            msg = f"nothing to benchmark in {str(artifact)!r}: {'; '.join(notes) or 'it holds no targets'}"
            raise InputError(msg)
        for row in rows:
            row.output = np.asarray(row.fn())
        _measure(rows, rounds, warmup, repeats)
        base = rows[0]  # torch when present, then openvino f32 (reference.onnx), then targets
        base_median = float(np.median(base.medians))
        for row in rows:
            median = float(np.median(row.medians))
            row.result = {
                "name": row.name,
                "precision": row.precision,
                "median_s": median,
                "p95_s": float(max(row.p95s)),
                "images_per_s": batch_size / median,
                "speedup": base_median / median,
                "pearson": float(pearson(row.output, base.output)),
            }
            if energy:
                from ebai.core.energy import measure_energy

                e = measure_energy(row.fn, repeats=max(1, min(repeats, 5)), warmup=0)
                row.result.update(
                    joules_per_image=e.joules_per_call / batch_size, energy_label=e.label, energy_source=e.source
                )
    cpu = cpu_info()
    result = {
        "artifact": str(artifact),
        "input": {"shape": list(x.shape), "what": what},
        "baseline": base.name,
        "rounds": rounds,
        "repeats": repeats,
        "rows": [row.result for row in rows],
        "notes": notes,
        "cpu": {"model": cpu.model, "cores": cpu.cores, "features": list(cpu.features)},
    }
    return result


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--against-torch", is_flag=True, help="Add PyTorch eager on the original model (needs torch and the adapter)."
)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1), help="Tiles per call.")
@click.option(
    "--repeats", default=10, show_default=True, type=click.IntRange(min=1), help="Timed calls per row and round."
)
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed calls per row first.")
@click.option(
    "--rounds", default=1, show_default=True, type=click.IntRange(min=1), help="Interleaved rounds over all rows."
)
@click.option("--energy/--no-energy", default=True, show_default=True, help="Measure energy per image (codecarbon).")
@click.option(
    "--input",
    "image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Image whose centre tile is fed (default: synthetic).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic input.")
@engine_option("Backend engine option for every row, repeatable (e.g. num_threads=2).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of the table.")
def benchmark(
    artifact: Path,
    against_torch: bool,
    batch_size: int,
    repeats: int,
    warmup: int,
    rounds: int,
    energy: bool,
    image: Path | None,
    seed: int,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure ARTIFACT's targets side by side: latency (median, p95), throughput, energy, fidelity.

    Rows: the reference model in OpenVINO at f32 and at OpenVINO's default precision, each target
    of the artifact, and (``--against-torch``) PyTorch eager on the original model. Speed-ups and
    Pearson correlations are against PyTorch eager when present, else the OpenVINO f32 row.
    """
    result = measure_artifact(
        artifact,
        against_torch=against_torch,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        rounds=rounds,
        energy=energy,
        image=image,
        seed=seed,
        options=engine_options(options),
    )
    art = Artifact.open(artifact)
    notes, rows = result["notes"], result["rows"]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"{art.manifest.name}: input {tuple(result['input']['shape'])} ({result['input']['what']}); "
        f"{rounds} round(s) x {repeats} call(s) per row"
    )
    cpu = result["cpu"]
    click.echo(
        f"cpu: {cpu['model']}, {cpu['cores']} logical cores; {', '.join(cpu['features']) or 'no AVX-512/VNNI/AMX'}"
    )
    click.echo(benchmark_table(result))
    for note in notes:
        click.echo(f"note: {note}")
    if energy and rows:
        click.echo(f"energy: {rows[0].get('energy_source', '')}")
