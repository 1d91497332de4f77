"""``ebai export``: write a compressed artifact in a format other tools read (bioimage.io model packages)."""

from __future__ import annotations

from pathlib import Path

import click

from ebai.core.errors import InputError

__all__ = ["export"]


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--bioimageio", "as_bioimageio", is_flag=True, help="Write a bioimage.io model package (format 0.5, a .zip)."
)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="File to write (model.zip).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option(
    "--benchmark/--no-benchmark",
    default=True,
    show_default=True,
    help="Measure latency and energy for the package's documentation page.",
)
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed calls per engine.")
@click.option(
    "--trust-source",
    is_flag=True,
    help="Time the original network in PyTorch eager too (runs the package's architecture code).",
)
@click.option(
    "--data",
    "-d",
    "data",
    multiple=True,
    help="Your images (folder, file or glob; repeatable): calibrate an int8 QDQ ONNX on them and attach it "
    "where ONNX Runtime runs it within the package's reproducibility tolerance.",
)
def export(
    artifact: Path,
    as_bioimageio: bool,
    output: Path,
    overwrite: bool,
    benchmark: bool,
    repeats: int,
    trust_source: bool,
    data: tuple[str, ...],
) -> None:
    """Write ARTIFACT (made by ebai compress --bioimageio) as a bioimage.io model package.

    The package holds the compressed network as ONNX weights that bioimageio.core runs, the
    OpenVINO IR as an attachment, new test tensors, the original's description with the original
    as parent, and a documentation page with the benchmark table and the recipe.
    """
    from ebai.adapters._bioimageio_export import export_bioimageio

    if not as_bioimageio:
        msg = "say which format to export to: --bioimageio (the only one so far)"
        raise InputError(msg)
    path = export_bioimageio(
        artifact,
        output,
        overwrite=overwrite,
        benchmark=benchmark,
        benchmark_repeats=repeats,
        trust_source=trust_source,
        calibration_data=data,
    )
    click.echo(f"bioimage.io package {path}")
