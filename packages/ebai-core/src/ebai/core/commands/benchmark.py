"""``ebai benchmark``: latency, throughput and energy of an artifact's targets, side by side.

Every row names the precision the hardware computes in, not only the stored one. Beside the
artifact's targets, each of their backends runs the uncompressed reference model the ways it
offers (:meth:`~ebai.core.interfaces.Backend.comparison_variants`; for OpenVINO forced to f32 and
at its default precision, bf16 on CPUs that have it), and, with ``--against-torch``, the original
model runs in PyTorch eager mode (what a user runs without ebai). Latency and energy are measured
in interleaved rounds; energies within each other's spread are marked as not told apart.

An artifact is data: the model its manifest names (a ``file.py:factory``, a module, a pickle) is
code, so the PyTorch row is built from what the user points at (``--torch-model``, ``--weights``),
or from the manifest only with ``--trust-source``, after printing exactly what will run.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from ebai.core.artifact import Artifact
from ebai.core.commands._run_setup import engine_option, engine_options
from ebai.core.errors import EbaiError, InputError
from ebai.core.specs import InputSpec

logger = logging.getLogger("ebai")

__all__ = ["benchmark", "benchmark_table", "measure_artifact", "profiles_table"]


@dataclass
class _Row:
    name: str
    precision: str
    fn: Callable[[], np.ndarray]
    engine: Any = None
    output: np.ndarray | None = None
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


def _precision_label(stored: str, runs: str, default: bool, quantized: int | None = None) -> str:
    """Name what a row computes in; ``quantized`` is the engine's count of quantized layers where it knows it."""
    if not runs:
        return stored
    if stored == "int8" and quantized == 0:
        return f"{runs} (int8 target with no layer quantized: int8 was not faster where it was made)"
    if stored == "int8":
        return f"int8 (other layers {runs})"
    how = "backend default" if default else "forced"
    return runs if runs == "f32" and not default else f"{runs} ({stored} model, {how})"


@contextlib.contextmanager
def _rows(
    art: Artifact, x: np.ndarray, opts: dict[str, Any], torch_row: _Row | None, notes: list[str]
) -> Iterator[list[_Row]]:
    from ebai.core.comparison import baseline_engines

    rows: list[_Row] = [torch_row] if torch_row is not None else []
    with contextlib.ExitStack() as stack:
        if art.manifest.reference:
            backends = [t.backend for t in art.manifest.targets]
            reference = art.file(art.manifest.reference)
            for b in stack.enter_context(
                baseline_engines(reference, art.manifest.input, backends, options=opts, notes=notes)
            ):
                rows.append(
                    _Row(
                        f"{b.backend} {b.variant.key} (reference.onnx)",
                        f"{b.runs} ({b.variant.how})",
                        _bind(b.engine, x),
                        b.engine,
                    )
                )
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
                    _precision_label(
                        target.precision,
                        runs,
                        "inference_precision" not in opts,
                        getattr(engine, "quantized_layers", None),
                    ),
                    _bind(engine, x),
                    engine,
                )
            )
        yield rows


def _bind(engine: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: engine(x)


def _torch_adapter(art: Artifact, torch_model: str | None, weights: Path | None, trust_source: bool) -> Any:
    """Return the adapter whose ``load_module`` builds the PyTorch row's network; manifest code needs trust."""
    from ebai.core.plugins import build_adapter

    spec = art.manifest.input
    if torch_model is not None:  # the user points at the model: their code, their call
        return build_adapter(
            "torch",
            {
                "model": torch_model,
                "weights": str(weights) if weights is not None else None,
                "axes": spec.axes,
                "channels": spec.channels,
                "tile": list(spec.tile),
                "out_channels": art.manifest.output.channels,
            },
        )
    source = dict(art.manifest.source or {})
    if not source.get("adapter"):
        msg = "--against-torch needs the original model and the artifact names no adapter: pass --torch-model path/to/file.py:factory (and --weights)"
        raise InputError(msg)
    shown = json.dumps(source, sort_keys=True)
    if not trust_source:
        msg = (
            f"--against-torch would run code the artifact names ({shown}): point at the model yourself with "
            "--torch-model path/to/file.py:factory (and --weights), or pass --trust-source if you trust who made the artifact"
        )
        raise InputError(msg)
    click.echo(f"--trust-source: building the PyTorch model as the artifact says, running: {shown}", err=True)
    return build_adapter(source)


def _torch_row(art: Artifact, x: np.ndarray, torch_model: str | None, weights: Path | None, trust: bool) -> _Row:
    adapter = _torch_adapter(art, torch_model, weights, trust)
    try:
        import torch  # noqa: F401  (checked here for the one-line error; torch_infer runs it)
    except ImportError as exc:
        msg = "the PyTorch row needs torch: pip install torch"
        raise InputError(msg) from exc
    from ebai.core.torch_runner import torch_infer

    infer = torch_infer(adapter.load_module())
    return _Row("pytorch eager (original model)", "fp32", lambda: infer(x))


def benchmark_table(result: dict[str, Any]) -> str:
    """Plain-text table of a :func:`measure_artifact` result: one row per engine, each naming its precision."""
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
        energy = r.get("energy_label", "-")
        if r.get("joules_per_image") is not None:
            half = (r["joules_high"] - r["joules_low"]) / 2
            same = f" ~{r['energy_same_as']}" if r.get("energy_same_as") else ""
            energy = f"{r['joules_per_image']:.3g} +-{half:.2g} {r['energy_label']}{same}"
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
    torch_model: str | None = None,
    weights: Path | None = None,
    trust_source: bool = False,
    batch_size: int = 1,
    repeats: int = 2,
    warmup: int = 2,
    rounds: int = 5,
    energy: bool = True,
    energy_rounds: int = 3,
    energy_seconds: float = 1.0,
    image: Path | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    profile: bool = False,
    profile_calls: int = 5,
) -> dict[str, Any]:
    """Measure an artifact's engines as ``ebai benchmark`` does and return what ``--json`` prints.

    Rows carry name, precision, median/p95 seconds, images/s, energy per image, speed-up and
    Pearson against the first row (the speed-up paired round by round,
    :func:`ebai.core.latency.paired_speedup`: with one round, the ratio of the fastest calls);
    :func:`benchmark_table` formats them (the bioimage.io exporter puts that table on the
    package's documentation page). Parameters are the command's options.
    With ``profile``, ``profiles`` maps each row to its engine's per-layer profile
    (:meth:`~ebai.core.interfaces.Engine.profile`, as :meth:`~ebai.core.profiling.LayerProfile.as_dict`)
    or ``None`` where the backend gives none; :func:`profiles_table` formats them side by side.
    """
    from ebai.core.hardware import cpu_info
    from ebai.core.latency import measure_interleaved, paired_speedup
    from ebai.core.metrics import pearson

    art = Artifact.open(artifact)
    opts = dict(options or {})
    x, what = _input_batch(art.manifest.input, batch_size, image, seed)
    notes: list[str] = []
    torch_row = _torch_row(art, x, torch_model, weights, trust_source) if against_torch or torch_model else None
    with _rows(art, x, opts, torch_row, notes) as rows:
        if not rows:
            msg = f"nothing to benchmark in {str(artifact)!r}: {'; '.join(notes) or 'it holds no targets'}"
            raise InputError(msg)
        for row in rows:
            row.output = np.asarray(row.fn())
        latency = measure_interleaved({row.name: row.fn for row in rows}, rounds=rounds, repeats=repeats, warmup=warmup)
        base = rows[0]  # torch when present, then the first backend's baseline rows, then targets
        for row in rows:
            stats = latency[row.name]
            row.result = {
                "name": row.name,
                "precision": row.precision,
                "median_s": stats.median_s,
                "p95_s": stats.p95_s,
                "images_per_s": batch_size / stats.median_s,
                "speedup": paired_speedup(latency[base.name], stats),
                "pearson": float(pearson(row.output, base.output)),
                "batch": batch_size,
            }
        if energy:
            _add_energy(rows, energy_rounds, energy_seconds, notes)
        profiles = {row.name: _profile(row, x, profile_calls) for row in rows} if profile else None
    cpu = cpu_info()
    result = {
        "artifact": str(artifact),
        "name": art.manifest.name,
        "input": {"shape": list(x.shape), "what": what},
        "baseline": base.name,
        "rounds": rounds,
        "repeats": repeats,
        "rows": [row.result for row in rows],
        "notes": notes,
        "cpu": {"model": cpu.model, "cores": cpu.cores, "features": list(cpu.features)},
    }
    if profiles is not None:
        result["profiles"] = profiles
        result["profile_calls"] = profile_calls
    return result


def _profile(row: _Row, x: np.ndarray, calls: int) -> dict[str, Any] | None:
    """Return the row's per-layer profile as a dict, or ``None`` when its engine (or the torch row) gives none."""
    method = getattr(row.engine, "profile", None)
    found = method(x, calls) if method is not None else None
    return found.as_dict() if found is not None else None


def profiles_table(result: dict[str, Any]) -> str:
    """Side-by-side per-layer profiles of a :func:`measure_artifact` result made with ``profile=True``."""
    from ebai.core.profiling import LayerProfile, profile_table

    found = {name: LayerProfile.from_dict(p) if p is not None else None for name, p in result["profiles"].items()}
    return profile_table(found)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--against-torch",
    is_flag=True,
    help="Add PyTorch eager on the original model: give --torch-model, or --trust-source to build what the artifact names.",
)
@click.option(
    "--torch-model",
    default=None,
    metavar="REF",
    help="The original model for --against-torch: path/to/file.py:factory, package.module:factory or a TorchScript file.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="State dict for --torch-model.",
)
@click.option(
    "--trust-source",
    is_flag=True,
    help="Let --against-torch import and run the model code the artifact's manifest names (printed first).",
)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1), help="Tiles per call.")
@click.option(
    "--repeats", default=2, show_default=True, type=click.IntRange(min=1), help="Timed calls per row and round."
)
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed calls per row first.")
@click.option(
    "--rounds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Interleaved rounds over all rows; speed-ups are paired round by round.",
)
@click.option(
    "--energy/--no-energy", default=True, show_default=True, help="Measure energy per image (needs ebai-core[energy])."
)
@click.option(
    "--energy-rounds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Interleaved energy windows per row; their range is the spread printed.",
)
@click.option(
    "--energy-seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Least length of each window.",
)
@click.option(
    "--input",
    "image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Image whose centre tile is fed (default: synthetic).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic input.")
@engine_option("Backend engine option for every row, repeatable (e.g. num_threads=2).")
@click.option(
    "--profile",
    is_flag=True,
    help="Also print where each row's time goes, per layer type and the precision it ran in (OpenVINO PERF_COUNT).",
)
@click.option(
    "--profile-calls",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Calls each profile is averaged over.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of the table.")
def benchmark(
    artifact: Path,
    against_torch: bool,
    torch_model: str | None,
    weights: Path | None,
    trust_source: bool,
    batch_size: int,
    repeats: int,
    warmup: int,
    rounds: int,
    energy: bool,
    energy_rounds: int,
    energy_seconds: float,
    image: Path | None,
    seed: int,
    options: tuple[str, ...],
    profile: bool,
    profile_calls: int,
    as_json: bool,
) -> None:
    """Measure ARTIFACT's targets side by side: latency (median, p95), throughput, energy, fidelity.

    Rows: the reference model run the ways each target's backend offers (OpenVINO: at f32 and at
    its default precision), each target of the artifact, and (``--against-torch``) PyTorch eager on
    the original model. Speed-ups and Pearson correlations are against PyTorch eager when present,
    else the first of those rows; a speed-up is paired: per round, the ratio of the two rows'
    fastest calls, the median over rounds (a machine that changes speed during the run slows both
    sides of a round alike). Energies marked with the same letter (~A) lie within each other's
    spread: the measurement does not tell them apart. ``--profile`` adds a table of where each
    row's time goes, by layer type and the precision each kernel ran in, side by side (milliseconds
    per call summed over layers, and the share of the row's total); rows whose backend counts no
    per-layer time say so in one line.
    """
    result = measure_artifact(
        artifact,
        against_torch=against_torch,
        torch_model=torch_model,
        weights=weights,
        trust_source=trust_source,
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        rounds=rounds,
        energy=energy,
        energy_rounds=energy_rounds,
        energy_seconds=energy_seconds,
        image=image,
        seed=seed,
        options=engine_options(options),
        profile=profile,
        profile_calls=profile_calls,
    )
    notes, rows, cpu = result["notes"], result["rows"], result["cpu"]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    shape, what = tuple(result["input"]["shape"]), result["input"]["what"]
    click.echo(f"{result['name']}: input {shape} ({what}); {rounds} round(s) x {repeats} call(s) per row")
    click.echo(
        f"cpu: {cpu['model']}, {cpu['cores']} logical cores; {', '.join(cpu['features']) or 'no AVX-512/VNNI/AMX'}"
    )
    click.echo(benchmark_table(result))
    if profile:
        click.echo(
            f"\nper-layer profile (ms per call, mean of {profile_calls} calls; share of the row's summed layer time):"
        )
        click.echo(profiles_table(result))
    for note in notes:
        click.echo(f"note: {note}")
    if energy and rows and rows[0].get("energy_source"):
        click.echo(f"energy: {rows[0]['energy_source']}")


def _add_energy(rows: list[_Row], rounds: int, seconds: float, notes: list[str]) -> None:
    """Energy per image of every row, interleaved, with the spread and the rows it cannot tell apart."""
    from ebai.core.energy import NOT_MEASURED, energy_available, indistinct_groups, measure_energy_interleaved

    if not energy_available():
        for row in rows:
            row.result["energy_label"] = "not measured"
        notes.append(f"energy {NOT_MEASURED}")
        return
    spreads = measure_energy_interleaved(
        {row.name: row.fn for row in rows}, rounds=rounds, min_duration_s=seconds, warmup=0
    )
    same = indistinct_groups(spreads)
    for row in rows:
        e = spreads[row.name]
        batch = row.result["batch"]
        row.result.update(
            joules_per_image=e.joules_per_call / batch,
            joules_low=e.low / batch,
            joules_high=e.high / batch,
            energy_windows=e.windows,
            energy_same_as=same.get(row.name, ""),
            energy_label=e.label,
            energy_source=e.source,
        )
    if same:
        notes.append("energies marked with the same letter (~A) lie within each other's spread: not told apart")
