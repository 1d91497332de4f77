"""``ebai run``: apply an artifact to image files, tile by tile, and write one TIFF per input."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import numpy as np

from ebai.core.artifact import Artifact
from ebai.core.commands._run_large import large_options
from ebai.core.commands._run_setup import engine_option, engine_options, load_adapter, pick_target
from ebai.core.errors import InputError
from ebai.core.progress import progress

logger = logging.getLogger("ebai")

__all__ = ["output_name", "run"]

_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif")


def output_name(path: Path) -> str:
    """Name a prediction file: the input's name with a ``.tif`` suffix (``a.ome.tif`` -> ``a.tif``)."""
    lower = path.name.lower()
    for suffix in _MULTI_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)] + ".tif"
    return path.stem + ".tif"


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for the predictions (created if needed).",
)
@click.option(
    "--target",
    default=None,
    metavar="BACKEND:PRECISION",
    help="Target to run, e.g. openvino:int8 (default: the artifact's first).",
)
@click.option("--overwrite", is_flag=True, help="Replace predictions that already exist (default: skip them).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Tiles per engine call.")
@click.option(
    "--overlap",
    default=None,
    type=click.FloatRange(0, 1, max_open=True),
    help="Tile overlap (default: the artifact's).",
)
@click.option("--raw", is_flag=True, help="Write the model output without the adapter's post-processing.")
@engine_option(
    "Backend engine option, repeatable (OpenVINO: num_threads=2, inference_precision=f32, performance_hint=throughput)."
)
@large_options
def run(
    artifact: Path,
    inputs: tuple[str, ...],
    out_dir: Path,
    target: str | None,
    overwrite: bool,
    batch_size: int,
    overlap: float | None,
    raw: bool,
    options: tuple[str, ...],
    **large: Any,
) -> None:
    """Run ARTIFACT on INPUTS (TIFF/PNG/NPY files, folders or globs) and write TIFFs to -o.

    Each image is prepared by the adapter the artifact was made with (its preprocessing, as during
    compression) when that adapter is installed, otherwise normalised as the artifact's input spec
    records; then cut into overlapping tiles, run through the compiled model and blended back, and
    finished by the adapter's post-processing (e.g. masks) unless --raw. Each prediction is written
    atomically under the input's name, so an interrupted run leaves no partial file and a rerun
    skips what is done.

    Zarr/OME-Zarr inputs, images too large for memory, and every input given --chunked, --scheduler
    or --cluster run block by block on Dask and are written as OME-Zarr (pip install
    'ebai-core[large]'); a rerun resumes them block by block.
    """
    from ebai.core.imageio import list_images, read_image, to_sample, write_tiff
    from ebai.core.tiling import predict_tiled

    art = Artifact.open(artifact)
    record = pick_target(art, target)
    spec = art.manifest.input
    opts = engine_options(options)

    # Zarr, images too large for memory, or Dask asked for: block by block (commands/_run_large.py)
    from ebai.core.commands._run_large import run_large, split_inputs

    blocked = bool(large["chunked"] or large["scheduler"] or large["cluster"])
    small, big = split_inputs(inputs, force=blocked)
    if big:
        large.pop("chunked")
        run_large(
            art,
            record,
            opts,
            big,
            out_dir,
            overwrite=overwrite,
            batch_size=batch_size,
            overlap=overlap,
            raw=raw,
            **large,
        )
        if not small:
            return
        inputs = tuple(small)
    paths = list_images(inputs)
    if not paths:
        msg = f"no TIFF, PNG or NPY images found in {', '.join(inputs)}: give image files or folders holding them"
        raise InputError(msg)
    names: dict[str, Path] = {}
    for path in paths:
        name = output_name(path)
        if name in names:
            msg = f"{str(names[name])!r} and {str(path)!r} would both be written as {name!r}: run them into different output folders"
            raise InputError(msg)
        names[name] = path
    todo = [(path, out_dir / name) for name, path in names.items() if overwrite or not (out_dir / name).exists()]
    skipped = len(paths) - len(todo)
    if not todo:
        click.echo(f"all {len(paths)} predictions already exist in {out_dir} (pass --overwrite to redo them)", err=True)
        return

    # the adapter the artifact was made with prepares inputs (and, unless --raw, finishes outputs)
    # exactly as during compression; without it, the normalisation the manifest records stands in
    adapter, why = load_adapter(art.manifest.source)
    pre = adapter.preprocess if adapter is not None else spec.normalization.apply
    post = adapter.postprocess if adapter is not None and not raw else None
    if adapter is None and art.manifest.source.get("adapter"):
        lost = "" if raw else " and writing the raw model output"
        click.echo(f"warning: {why}: normalising with the artifact's recorded settings{lost}", err=True)

    with art.load_engine(record.backend, record.precision, **opts) as engine:
        runs_as = getattr(engine, "execution_precision", "")
        click.echo(
            f"running {record.key}{f' (computing in {runs_as})' if runs_as else ''} on {len(todo)} image(s)"
            + (f", skipping {skipped} done" if skipped else ""),
            err=True,
        )
        for path, dest in progress(todo, desc="images", unit="image"):
            sample = np.asarray(pre(to_sample(read_image(path), spec)), dtype=np.float32)
            output = predict_tiled(
                sample,
                engine,
                spec.tile,
                overlap=spec.overlap if overlap is None else overlap,
                batch_size=batch_size,
                divisor=spec.divisor,
                progress_desc=path.name,
            )
            result = np.asarray(post(output)) if post is not None else output
            if result.ndim == spec.ndim + 1 and result.shape[0] == 1:
                result = result[0]  # one channel: write a plain (Z)YX image
            axes = spec.spatial_axes.upper()
            axes = axes if result.ndim == len(axes) else "C" + axes if result.ndim == len(axes) + 1 else None
            write_tiff(dest, result, overwrite=overwrite, axes=axes)
            logger.info("wrote %s", dest)
    click.echo(
        f"wrote {len(todo)} prediction(s) to {out_dir}"
        + (f" (skipped {skipped} existing; --overwrite redoes them)" if skipped else ""),
        err=True,
    )
