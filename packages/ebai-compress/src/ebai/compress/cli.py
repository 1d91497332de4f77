"""``ebai compress``: the command-line face of :func:`ebai.compress.compress`.

The model comes from a Python factory (``file.py:build`` or ``package.module:build``) plus a state
dict, from a TorchScript file, from a bioimage.io package (``--bioimageio model.zip``) or from an
installed adapter (``--adapter cellpose``). Every model is loaded by an adapter looked up in
the plugin registry (a factory or TorchScript file by the ``torch`` adapter of ebai-adapters, a
package by its ``bioimageio`` adapter), so files are read the same way everywhere and ebai-compress
does not depend on ebai-adapters. Options given here override
the recipe file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ebai.core.errors import InputError
from ebai.core.specs import NORMALIZATIONS

__all__ = ["compress", "parse_prune", "summary"]


def parse_prune(value: str) -> dict[str, Any]:
    """Read ``--prune``: ``METHOD:RATIO`` (``l1:0.5``), ``METHOD`` alone, ``none``, or ``auto[:l1,fpgm]``.

    ``auto`` returns the criteria to search under the key ``search_methods``.
    """
    method, sep, ratio = value.strip().partition(":")
    out: dict[str, Any] = {"method": method.strip().lower()}
    if out["method"] == "auto":
        if sep:
            out["search_methods"] = [m.strip().lower() for m in ratio.split(",") if m.strip()]
        return out
    if sep:
        try:
            out["ratio"] = float(ratio)
        except ValueError:
            msg = f"--prune {value!r} is not understood: write METHOD:RATIO, e.g. l1:0.5"
            raise InputError(msg) from None
    return out


def _model_source(
    model: str | None,
    weights: str | None,
    trust_pickle: bool,
    adapter: str | None,
    adapter_config: str | None,
    spec_options: Mapping[str, Any],
    bioimageio: str | None = None,
) -> Any:
    given = {k: v for k, v in spec_options.items() if v is not None}
    if bioimageio:
        if model or weights or adapter:
            msg = "give either --bioimageio PACKAGE or a MODEL/--adapter, not both: the package names its own network"
            raise InputError(msg)
        other = sorted(k for k in given if k != "tile")
        if other:
            msg = f"--bioimageio takes its {', '.join(other)} from the package's description: drop those options"
            raise InputError(msg)
        from ebai.core.plugins import get_adapter

        return get_adapter("bioimageio")(bioimageio, tile=given.get("tile"))
    if adapter:
        from ebai.core.plugins import get_adapter

        if model or weights:
            msg = "give either a MODEL (with --weights) or --adapter, not both: the adapter config names its own model"
            raise InputError(msg)
        cls = get_adapter(adapter)
        config = cls.read_config(adapter_config) if adapter_config else {}
        return cls.from_config({**config, **given})
    if adapter_config:
        msg = "--adapter-config needs --adapter NAME: say which adapter reads it"
        raise InputError(msg)
    if not model:
        msg = "no model given: pass MODEL (file.py:factory, package.module:factory or a TorchScript file) or --adapter NAME"
        raise InputError(msg)
    missing = [f"--{k}" for k in ("axes", "channels", "tile") if k not in given]
    if missing:
        msg = f"a model given as {model!r} needs {', '.join(missing)} to know its input (e.g. --axes bczyx --channels 1 --tile 32,64,64)"
        raise InputError(msg)
    from ebai.core.plugins import get_adapter

    return get_adapter("torch")(model, weights=weights, trust_pickle=trust_pickle, **given)


_QAT_WHEN = {True: "always", False: "never"}

#: A network's activations take many times its input tile; below this many tiles of free memory
#: compression cannot run (a mistyped --tile would otherwise fail in a multi-PiB allocation).
_TILES_OF_MEMORY = 16


def _check_tile_fits(spec: Any) -> None:
    from ebai.core.memory import available_memory, format_bytes

    tile_bytes = 4 * spec.channels * math.prod(spec.tile)
    free = available_memory()
    if free is not None and tile_bytes * _TILES_OF_MEMORY > free:
        msg = (
            f"tile {','.join(map(str, spec.tile))} is {format_bytes(tile_bytes)} of float32 input per tile and the network "
            f"needs many times that, but {format_bytes(free)} is free: give a smaller --tile, e.g. 32,128,128"
        )
        raise InputError(msg)


def _fmt(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def summary(manifest: Any, path: Path) -> str:
    """Format the table printed after a compression: sizes before/after and fidelity per target."""
    lines = [f"artifact  {path}"]
    pruning = manifest.pruning
    if pruning:
        lines.append(f"{'':14}{'before':>12}{'after':>12}{'ratio':>9}")
        for label, key in (("parameters", "params"), ("MACs", "macs")):
            before, after = pruning[f"{key}_before"], pruning[f"{key}_after"]
            lines.append(f"{label:14}{_fmt(before):>12}{_fmt(after):>12}{before / max(after, 1):>8.2f}x")
        search = pruning.get("search")
        if search:
            probes = ", ".join(
                f"{p['method']} {p['ratio']:g} {'pass' if p['passed'] else 'fail'}" for p in search["probes"]
            )
            lines.append(
                f"pruning search: {pruning['method']} at ratio {pruning['ratio']:g} is the largest reaching "
                f"{search['target']:g} after distillation ({len(search['probes'])} probes in {search['seconds']:.0f} s: "
                f"{probes})"
            )
        sparing = pruning.get("sparing")
        if sparing:
            lines.append(
                f"spared whole: {', '.join(sparing['spared']) or 'none'} ({len(sparing['spared'])} of "
                f"{len(sparing['layers'])} layers; {sparing['given_up_ms']:.2f} of {sparing['saved_ms']:.2f} ms of "
                f"single-layer savings on {sparing['backend']} {sparing['precision']} given up)"
            )
        ref = pruning.get("fidelity") or {}
        if ref:
            lines.append(f"pruned fp32 vs original: pearson {ref['pearson']:.4f}, max error {ref['max_abs_error']:.3g}")
    else:
        lines.append("pruning: none")
    tuning = manifest.fine_tuning
    if tuning and tuning.get("method") == "distill":
        lines.append(
            f"distillation: {tuning['steps']} steps in {tuning['seconds']:.0f} s, pearson {tuning['pearson_before']:.4f} -> "
            f"{tuning['pearson_after']:.4f}"
            + (" (stopped early)" if tuning.get("stopped_early") else "")
            + (" (time budget spent)" if tuning.get("out_of_time") else "")
        )
    elif tuning:
        lines.append(f"fine-tuning: {tuning.get('callback', tuning.get('method'))}")
    package = (manifest.source or {}).get("bioimageio")
    if package:
        tol = package["reproducibility_tolerance"]
        lines.append(
            f"bioimage.io package {package['name']!r} reproducibility tolerance: relative {tol['relative_tolerance']:g}, "
            f"absolute {tol['absolute_tolerance']:g}, {tol['mismatched_elements_per_million']} mismatched per million "
            f"({'stated' if tol['stated'] else 'bioimage.io default'}); its test input is among the held-out tiles"
        )
    lines.append(f"{'target':18}{'pearson':>9}{'max err':>10}{'criterion':>24}{'passed':>8}")
    for t in manifest.targets:
        f = t.fidelity
        if f is None:
            continue
        value = f.pearson if f.metric == "pearson" else f.metrics.get(f.metric, float("nan"))
        criterion = f"{f.metric} {value:.4f} >= {f.threshold:g}"
        lines.append(
            f"{t.key:18}{f.pearson:>9.4f}{f.max_abs_error:>10.3g}{criterion:>24}{'yes' if f.passed else 'no':>8}"
        )
    for t in manifest.targets:
        route = t.record.get("route")
        if t.precision == "int8" and route:
            line = f"int8      {t.key}: made by {route}"
            qat = t.record.get("qat")
            if qat:
                line += (
                    f" ({qat['steps']} steps, {qat['seconds']:.0f} s; validation pearson "
                    f"{qat['pearson_before']:.4f} -> {qat['pearson_after']:.4f})"
                )
            lines.append(line)
    for t in manifest.targets:
        if t.timing is not None:
            lines.append(_timing_line(t.key, t.backend, t.timing))
    return "\n".join(lines)


def _timing_line(key: str, backend: str, timing: Any) -> str:
    from ebai.compress._pipeline import duration

    return (
        f"speed     {key}: {duration(timing.median_s)} vs {backend} default ({timing.default_precision}) "
        f"{duration(timing.default_median_s)} per call: {timing.speedup:.2f}x on this machine"
    )


@click.command("compress", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False)
@click.option(
    "--weights", type=click.Path(dir_okay=False), help="State dict for a factory model (read with weights_only=True)."
)
@click.option("--trust-pickle", is_flag=True, help="Allow a whole pickled model file (this runs code from the file).")
@click.option("--adapter", help="Installed adapter to load the model with (e.g. cellpose, monai).")
@click.option("--adapter-config", type=click.Path(dir_okay=False), help="YAML settings of the adapter.")
@click.option(
    "--bioimageio",
    type=click.Path(exists=False),
    help="bioimage.io model package (rdf.yaml, its folder or a .zip) to compress; axes, tile and processing come from it.",
)
@click.option("--axes", help="Model input axes, batch and channel first (bczyx, bcyx).")
@click.option("--channels", type=int, help="Input channels of the model.")
@click.option("--tile", help="Spatial tile, e.g. 32,64,64.")
@click.option(
    "--normalize", "normalization", type=click.Choice(NORMALIZATIONS), help="Intensity normalisation of each image."
)
@click.option("--divisor", type=int, help="Spatial sizes the model takes must be multiples of this.")
@click.option(
    "--data",
    "-d",
    "data",
    multiple=True,
    required=True,
    help="Image folder, file or glob (TIFF/PNG/NPY, Zarr/OME-Zarr; of a large image only the centre is read); repeatable.",
)
@click.option(
    "--prune",
    "prune_spec",
    help="Pruning as METHOD:RATIO (l1, l2, fpgm), e.g. l1:0.5, or auto (auto:l1,fpgm to compare criteria): the "
    "largest ratio that keeps --min-fidelity; none unless asked here or in the recipe.",
)
@click.option(
    "--prune-rounds",
    type=int,
    help="Reach the pruning ratio in this many steps, each followed by its share of the distillation "
    "(keeps fragile networks working; default 1: one cut).",
)
@click.option(
    "--prune-spare",
    type=float,
    help="Keep whole the layers whose cut costs the most fidelity per millisecond saved (each cut alone and timed "
    "on the target), giving up at most this share of the time saving, e.g. 0.2 (default 0: prune every layer).",
)
@click.option("--int8", "precision", flag_value="int8", help="Lower every target to int8.")
@click.option("--fp16", "precision", flag_value="fp16", help="Lower every target to fp16.")
@click.option("--fp32", "precision", flag_value="fp32", help="Lower every target to fp32.")
@click.option("--bf16", "precision", flag_value="bf16", help="Lower every target to bf16 (torch target only).")
@click.option("--tf32", "precision", flag_value="tf32", help="Lower every target to TF32 (torch target, CUDA GPUs).")
@click.option(
    "--target", "-t", "targets", multiple=True, help="Backend to lower to (openvino, tensorrt, torch); repeatable."
)
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe file (YAML or TOML); options here override it.")
@click.option("--steps", type=int, help="Distillation step budget after pruning (0: no fine-tuning).")
@click.option("--distill-minutes", type=float, help="Distillation time budget in minutes (the best weights are kept).")
@click.option(
    "--distill-crop",
    help="Crop shape distillation trains on, e.g. 16,48,48 (default: the tile); smaller crops buy more steps per minute.",
)
@click.option(
    "--min-fidelity",
    type=float,
    help="Lowest accepted fidelity to the original (the guard's metric, Pearson by default); with --prune auto, "
    "the largest pruning ratio that keeps it is searched.",
)
@click.option(
    "--budget-minutes", type=float, help="Time budget of the --prune auto search (no new probe starts after it)."
)
@click.option(
    "--qat/--no-qat",
    "qat",
    default=None,
    help="int8 by quantization-aware training (fine-tuned against the original on your images) instead of "
    "post-training quantization; by default it is tried only when post-training int8 misses the guard.",
)
@click.option("--qat-steps", type=int, help="Step budget of quantization-aware training.")
@click.option("--output", "-o", required=True, type=click.Path(), help="Artifact folder to write (name.ebai).")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact.")
def compress(
    model: str | None,
    weights: str | None,
    trust_pickle: bool,
    adapter: str | None,
    adapter_config: str | None,
    bioimageio: str | None,
    axes: str | None,
    channels: int | None,
    tile: str | None,
    normalization: str | None,
    divisor: int | None,
    data: tuple[str, ...],
    prune_spec: str | None,
    prune_rounds: int | None,
    prune_spare: float | None,
    precision: str | None,
    targets: tuple[str, ...],
    recipe: str | None,
    steps: int | None,
    distill_minutes: float | None,
    distill_crop: str | None,
    min_fidelity: float | None,
    budget_minutes: float | None,
    qat: bool | None,
    qat_steps: int | None,
    output: str,
    overwrite: bool,
) -> None:
    """Lower MODEL (pruned and fine-tuned only if asked), verify it on your images; write one artifact.

    Every target is timed against its backend's default precision on this machine, and the
    fastest comes first in the artifact.

    MODEL is file.py:factory or package.module:factory (with --weights), or a TorchScript file;
    or use --adapter NAME --adapter-config FILE, or --bioimageio PACKAGE.
    """
    from ebai.compress._pipeline import compress as run_compress
    from ebai.compress._recipe import Recipe
    from ebai.core.data import ImageFiles
    from ebai.core.files import check_output, check_writable_dir

    out = Path(output)
    check_output(out, overwrite)
    check_writable_dir(out.absolute().parent, "folder for the artifact")  # before hours of work, not after
    base = Recipe.from_file(recipe) if recipe else Recipe()
    changes: dict[str, Any] = {}
    if prune_spec:
        changes["prune"] = parse_prune(prune_spec)
        methods = changes["prune"].pop("search_methods", None)
        if methods:
            changes["search"] = {"methods": methods}
    if prune_rounds is not None:
        changes["prune"] = {**changes.get("prune", {}), "rounds": prune_rounds}
    if prune_spare is not None:
        changes["prune"] = {**changes.get("prune", {}), "spare": prune_spare}
    if budget_minutes is not None:
        changes["search"] = {**changes.get("search", {}), "budget_minutes": budget_minutes}
    if min_fidelity is not None:
        changes["fidelity"] = {"threshold": min_fidelity}
    tuning = (("steps", steps), ("budget_minutes", distill_minutes), ("crop", distill_crop))
    if any(v is not None for _, v in tuning):
        changes["fine_tune"] = {k: v for k, v in tuning if v is not None}
    if qat is not None or qat_steps is not None:
        changes["qat"] = {k: v for k, v in (("when", _QAT_WHEN.get(qat)), ("steps", qat_steps)) if v is not None}
    if precision:
        changes["precision"] = precision
    if targets:
        changes["targets"] = list(targets)
    source = _model_source(
        model,
        weights,
        trust_pickle,
        adapter,
        adapter_config,
        {"axes": axes, "channels": channels, "tile": tile, "normalization": normalization, "divisor": divisor},
        bioimageio,
    )
    if getattr(source, "pruning_refused", None) and not prune_spec and not recipe:
        changes["prune"] = {"method": "none"}  # the default recipe prunes; this network cannot be
    plan = base.updated(changes) if changes else base
    _check_tile_fits(source.input_spec)
    images = ImageFiles(list(data), source.input_spec)
    artifact = run_compress(source, images, plan, out, overwrite=overwrite)
    click.echo(summary(artifact.manifest, out))
