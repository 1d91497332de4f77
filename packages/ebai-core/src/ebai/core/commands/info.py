"""``ebai info``: what is installed, what can run here, and why not."""

from __future__ import annotations

import importlib.metadata
import json

import click

from ebai.core.hardware import cpu_info, nvidia_gpus
from ebai.core.plugins import ADAPTERS, BACKENDS, CLI, get_plugin, plugin_names

_PACKAGES = ("ebai-core", "ebai-compress", "ebai-openvino", "ebai-tensorrt", "ebai-torch", "ebai-adapters")


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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json: bool) -> None:
    """Show installed ebai packages, backends, adapters and this machine's CPU/GPU features."""
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
            hint = "pip install ebai-openvino" if title == "backends" else "pip install ebai-adapters"
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
