"""``ebai demo``, ``ebai report`` and ``ebai sweep``: the paper's evidence, reproduced on this machine.

Registered in the ``ebai.cli`` entry-point group by ebai-tasks. Each command checks its output
folder before any work, compresses the shipped reference networks through ebai-compress and the
installed backends, prints its table and writes a report folder atomically.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ebai.core.errors import InputError
from ebai.core.install_hints import install_line

__all__ = ["demo", "report", "sweep"]


def _status(message: str) -> None:
    click.secho(message, err=True, dim=True)


def _command_line() -> str:
    return "ebai " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _report_options(default: str, help_output: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the report-folder, ``--overwrite`` and ``--no-energy`` options every command here takes."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("--no-energy", is_flag=True, help="Skip the energy measurement.")(command)
        command = click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")(command)
        return click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
            default=Path(default),
            show_default=True,
            help=help_output,
        )(command)

    return decorate


def _echo_table(table: Any) -> None:
    from ebai.tasks._report import energy_note, format_table

    click.echo()
    click.echo(
        f"{table.title}: held-out volume {'x'.join(map(str, table.volume))}, tile {'x'.join(map(str, table.tile))}"
    )
    click.echo(format_table(table))
    click.echo(f"energy: {table.energy_label} ({table.energy_source}); {energy_note(table)}")


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        msg = f"{what} {value!r} names nothing: give a comma-separated list"
        raise InputError(msg)
    return items


def _ratios(value: str) -> list[float]:
    out = []
    for item in _split(value, "--ratios"):
        try:
            ratio = float(item)
        except ValueError:
            msg = f"--ratios holds {item!r}, which is not a number: write fractions such as 0.1,0.3,0.5"
            raise InputError(msg) from None
        if not 0.0 < ratio < 1.0:
            msg = f"pruning ratio {ratio} is outside (0, 1): give the fraction of channels to remove"
            raise InputError(msg)
        out.append(ratio)
    return out


@click.command()
@click.option("--quick", is_flag=True, help="CI mode: smaller volume, fewer rounds and distillation steps (< 2 min).")
@_report_options("ebai-demo-report", "Report folder (markdown, PNG plots, JSON), written atomically.")
def demo(quick: bool, output: Path, overwrite: bool, no_energy: bool) -> None:
    """Compress the built-in 3D denoiser and print the paper's Table 1 for it.

    The shipped MONAI UNet denoiser is compressed three ways (OpenVINO fp32, int8, and 50% of its
    channels pruned + distilled + int8), each is run on a held-out synthetic volume larger than one
    tile, and latency, energy and accuracy against the ground truth are measured side by side with
    PyTorch and OpenVINO's own default.
    """
    from ebai.core.files import check_output
    from ebai.tasks._benchmark import measure_task
    from ebai.tasks._registry import get_task
    from ebai.tasks._report import write_report
    from ebai.tasks._settings import BenchSettings
    from ebai.tasks._variants import require_compression

    check_output(output, overwrite)
    require_compression()
    task = get_task("denoising")
    # the demo keeps a short distillation (one cut, 150 steps: a few minutes); `ebai report` distils in rounds
    settings = (
        BenchSettings.quick(volume=(32, 160, 160))
        if quick
        else BenchSettings.full(
            volume=(48, 192, 192),
            distill_steps=150,
            distill_minutes=None,
            prune_rounds=1,
            distill_on_training_crops=False,
        )
    )
    started = time.perf_counter()
    table = measure_task(task, settings, energy=not no_energy, status=_status)
    _echo_table(table)
    folder, images = write_report(
        output,
        [table],
        title="ebai demo: the 3D denoiser before and after compression",
        command=_command_line(),
        overwrite=overwrite,
    )
    extra = f" and {len(images)} PNG plots" if images else f" (no PNG plots: {install_line('tasks-report')})"
    click.echo(f"report: {folder}/README.md{extra}; took {time.perf_counter() - started:.0f} s")


@click.command()
@click.option(
    "--tasks", default="denoising,nuclei,labelfree,semantic", show_default=True, help="Comma-separated task names."
)
@click.option("--quick", is_flag=True, help="Fewer images, rounds and distillation steps.")
@_report_options("ebai-report", "Report folder, written atomically.")
def report(tasks: str, quick: bool, output: Path, overwrite: bool, no_energy: bool) -> None:
    """Measure the paper's Table 1 over the reference tasks: latency, energy, accuracy before and after compression.

    CPU rows always; GPU rows when the TensorRT backend is available here.
    """
    from ebai.core.files import check_output
    from ebai.tasks._benchmark import measure_task
    from ebai.tasks._registry import get_task
    from ebai.tasks._report import write_report
    from ebai.tasks._settings import BenchSettings
    from ebai.tasks._variants import require_compression

    check_output(output, overwrite)
    chosen = [get_task(name) for name in _split(tasks, "--tasks")]
    require_compression()
    for task in chosen:
        task.check_available()
    settings = BenchSettings.quick() if quick else BenchSettings.full()
    started = time.perf_counter()
    tables = []
    for task in chosen:
        table = measure_task(task, settings, energy=not no_energy, status=_status)
        tables.append(table)
        _echo_table(table)
    folder, images = write_report(
        output,
        tables,
        title="ebai report: Table 1 on synthetic reference tasks",
        command=_command_line(),
        overwrite=overwrite,
    )
    click.echo(f"report: {folder}/README.md with {len(images)} PNG plots; took {time.perf_counter() - started:.0f} s")


@click.command()
@click.option("--task", "task_name", default="denoising", show_default=True, help="Task to sweep.")
@click.option("--methods", default="l1,l2,fpgm", show_default=True, help="Pruning criteria.")
@click.option("--ratios", default="0.1,0.3,0.5,0.7", show_default=True, help="Fractions of channels removed.")
@click.option("--quick", is_flag=True, help="Fewer distillation steps and rounds.")
@_report_options("ebai-sweep", "Report folder, written atomically.")
def sweep(
    task_name: str, methods: str, ratios: str, quick: bool, output: Path, overwrite: bool, no_energy: bool
) -> None:
    """Sweep pruning criteria and ratios (the paper's Fig. 2): accuracy drop, energy saving and speed-up per pruning criterion and ratio.

    Every point is the task's network pruned (L1, L2 or FPGM channel importance) at one ratio,
    distilled, quantized to int8 and run by OpenVINO; savings are against the unpruned network in
    OpenVINO at f32.
    """
    from ebai.core.files import check_output
    from ebai.tasks._registry import get_task
    from ebai.tasks._sweep import SweepSettings, format_sweep, run_sweep, write_sweep
    from ebai.tasks._variants import require_compression

    check_output(output, overwrite)
    task = get_task(task_name)
    chosen = [m.lower() for m in _split(methods, "--methods")]
    for m in chosen:
        if m not in ("l1", "l2", "fpgm"):
            msg = f"unknown pruning criterion {m!r}: use l1, l2 or fpgm"
            raise InputError(msg)
    values = _ratios(ratios)
    require_compression()
    settings = SweepSettings.quick() if quick else SweepSettings.full()
    started = time.perf_counter()
    result = run_sweep(task, chosen, values, settings, energy=not no_energy, status=_status)
    click.echo()
    click.echo(format_sweep(result))
    folder, images = write_sweep(output, result, command=_command_line(), overwrite=overwrite)
    click.echo(f"report: {folder}/README.md with {len(images)} PNG plots; took {time.perf_counter() - started:.0f} s")
