"""``ebai info``: what is installed, what can run here, and why not; with an artifact, where it came from."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import click

from ebai.core.errors import ArtifactError
from ebai.core.hardware import cpu_info, nvidia_gpus
from ebai.core.install_hints import install_line
from ebai.core.plugins import ADAPTERS, BACKENDS, CLI, get_plugin, plugin_names
from ebai.core.search_curve import curve_lines, plot_curve, search_record
from ebai.core.sparing_record import sparing_lines, sparing_record

_PACKAGES = (
    "ebai-core",
    "ebai-compress",
    "ebai-openvino",
    "ebai-tensorrt",
    "ebai-torch",
    "ebai-adapters",
    "ebai-tasks",
)


def _plugins(group: str) -> list[dict[str, str | bool]]:
    rows: list[dict[str, str | bool]] = []
    for name in plugin_names(group):
        try:
            spec = get_plugin(group, name)
        except Exception as exc:  # report a broken plugin, keep listing the others
            rows.append({"name": name, "package": "?", "available": False, "reason": str(exc)})
            continue
        avail = spec.is_available()
        row: dict[str, str | bool] = {
            "name": name,
            "package": spec.package,
            "available": avail.ok,
            "reason": avail.reason,
        }
        if spec.details is not None:
            try:
                row["details"] = spec.details()
            except Exception as exc:  # details are informative only
                row["details"] = f"details unavailable: {exc}"
        rows.append(row)
    return rows


def collect() -> dict[str, object]:
    """Everything ``ebai info`` reports, as a JSON-ready mapping."""
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    cpu = cpu_info()
    return {
        "packages": packages,
        "backends": _plugins(BACKENDS),
        "adapters": _plugins(ADAPTERS),
        "commands": plugin_names(CLI),
        "cpu": {"model": cpu.model, "cores": cpu.cores, "features": list(cpu.features)},
        "gpus": nvidia_gpus(),
    }


def provenance(path: Path) -> dict[str, object]:
    """Return what an artifact says about itself, after every hash is checked; nothing it names is imported."""
    from ebai.core.artifact import MANIFEST, Artifact
    from ebai.core.manifest import DIGEST_KEY

    art = Artifact.open(path)
    m = art.manifest
    data = json.loads((art.path / MANIFEST).read_text(encoding="utf-8"))
    return {
        "artifact": str(path),
        "verified": "schema, manifest sha256 and the sha256 of every file checked; every path inside the artifact",
        "name": m.name,
        "created": m.created,
        "manifest_sha256": data.get(DIGEST_KEY),
        "made_with": dict(m.versions),
        "source": dict(m.source),
        "pruning": dict(m.pruning) if m.pruning is not None else None,
        "fine_tuning": dict(m.fine_tuning) if m.fine_tuning is not None else None,
        "input": m.input.to_dict(),
        "targets": [
            {"target": t.key, "fidelity": t.fidelity.to_dict() if t.fidelity else None, "files": len(t.files)}
            for t in m.targets
        ],
        "files": len(m.files),
    }


def _echo_provenance(data: dict[str, object]) -> None:
    click.echo(f"artifact {data['artifact']}: {data['verified']}")
    click.echo(f"  name {data['name']}, created {data['created'] or 'unknown'}, {data['files']} files")
    click.echo(f"  manifest sha256 {data['manifest_sha256']}")
    made = ", ".join(f"{k} {v}" for k, v in data["made_with"].items()) or "not recorded"  # type: ignore[union-attr]
    click.echo(f"  made with: {made}")
    source = data["source"] or {}
    if source:
        shown = json.dumps(source, sort_keys=True)
        click.echo(f"  source (as recorded; never imported or run without --trust-source): {shown}")
    search = search_record(data["pruning"])  # type: ignore[arg-type]
    sparing = sparing_record(data["pruning"])  # type: ignore[arg-type]
    for key in ("pruning", "fine_tuning"):
        if data[key]:
            # the search and the per-layer sparing are printed as tables below
            shown = {k: v for k, v in data[key].items() if k not in ("search", "sparing")}  # type: ignore[union-attr]
            click.echo(f"  {key.replace('_', '-')}: {json.dumps(shown, sort_keys=True)}")
    for lines in (curve_lines(search) if search else [], sparing_lines(sparing) if sparing else []):
        for line in lines:
            click.echo(f"  {line}")
    for t in data["targets"]:  # type: ignore[union-attr]
        fid = t["fidelity"]
        guard = (
            f"pearson {fid['pearson']:.4f}, {'passed' if fid['passed'] else 'FAILED'} the guard"
            if fid
            else "no guard record"
        )
        click.echo(f"  target {t['target']}: {guard}")


@click.command()
@click.argument("artifact", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With an ARTIFACT made by --prune auto: draw its trade-off curve (fidelity vs ratio and MACs) as this PNG.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --plot file.")
def info(artifact: Path | None, as_json: bool, plot: Path | None, overwrite: bool) -> None:
    """Show installed ebai packages, backends, adapters and this machine's CPU/GPU features.

    With ARTIFACT, show where that artifact came from instead (tool versions, source, pruning,
    fidelity per target, and the trade-off curve of a --prune auto search), after checking every
    hash: nothing it names is imported.
    """
    if plot is not None and artifact is None:
        msg = "--plot draws an artifact's --prune auto curve: name the ARTIFACT too"
        raise click.UsageError(msg)
    if artifact is not None:
        record = provenance(artifact)
        if plot is not None:
            search = search_record(record["pruning"])  # type: ignore[arg-type]
            if search is None:
                msg = (
                    f"{artifact} was not pruned with --prune auto, so it has no trade-off curve to plot: "
                    "compress with --prune auto --min-fidelity F to record one"
                )
                raise ArtifactError(msg)
            plot_curve(search, plot, overwrite=overwrite, title=str(record["name"]))
        if as_json:
            click.echo(json.dumps(record, indent=2))
        else:
            _echo_provenance(record)
        if plot is not None and not as_json:
            click.echo(f"trade-off curve written to {plot}")
        return
    data = collect()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo("packages:")
    for name, ver in data["packages"].items():  # type: ignore[union-attr]
        click.echo(f"  {name:<16} {ver}")
    for title in ("backends", "adapters"):
        click.echo(f"{title}:")
        rows = data[title]
        if not rows:
            hint = install_line("openvino" if title == "backends" else "adapters")
            click.echo(f"  none installed ({hint})")
        for row in rows:  # type: ignore[union-attr]
            state = "available" if row["available"] else f"unavailable: {row['reason']}"
            click.echo(f"  {row['name']:<12} {row['package']:<26} {state}")
            if row["available"] and row.get("details"):  # one fact per line: torch lists every GPU
                for part in str(row["details"]).split("; "):
                    click.echo(f"  {'':<12} {'':<26} {part}")
    cpu = data["cpu"]
    feats = ", ".join(cpu["features"]) or "none of AVX2/AVX-512/VNNI/AMX"  # type: ignore[index]
    click.echo(f"cpu: {cpu['model']} ({cpu['cores']} logical cores); features: {feats}")  # type: ignore[index]
    gpus = data["gpus"]
    if not gpus:
        click.echo("gpus: none found (nvidia-smi absent or no NVIDIA GPU)")
        return
    click.echo("gpus (CUDA devices, as nvidia-smi numbers them):")
    for i, gpu in enumerate(gpus):  # type: ignore[arg-type]
        click.echo(f"  cuda:{i:<3} {gpu}")
