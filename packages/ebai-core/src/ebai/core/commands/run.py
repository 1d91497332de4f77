"""``ebai run``: apply an artifact to image files, tile by tile, and write one TIFF per input.

The user's images are never written: an output that would replace an input is refused whatever
the flags. Every check that can fail cheaply (the output folder, each file's header, the memory
the largest image needs) runs before the first prediction; an image that still fails (damaged
data, NaN/Inf values) is reported and the batch goes on, and the run exits non-zero at the end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from ebai.core.artifact import Artifact
from ebai.core.commands._run_large import large_options
from ebai.core.commands._run_setup import engine_option, engine_options, load_adapter, pick_target
from ebai.core.errors import EbaiError, InputError
from ebai.core.nan_policy import NAN_POLICIES, apply_nan_policy
from ebai.core.progress import progress
from ebai.core.specs import InputSpec

logger = logging.getLogger("ebai")

__all__ = ["NAN_POLICIES", "output_name", "run"]

_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif")


def output_name(path: Path) -> str:
    """Name a prediction file: the input's name with a ``.tif`` suffix (``a.ome.tif`` -> ``a.tif``)."""
    lower = path.name.lower()
    for suffix in _MULTI_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)] + ".tif"
    return path.stem + ".tif"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_replacing_inputs(pairs: list[tuple[Path, Path]]) -> None:
    """Raise when any output path is one of the input files (same path, symbolic or hard link)."""
    by_path = {os.path.realpath(p): p for p, _ in pairs}
    by_inode = {ident: p for p, _ in pairs if (ident := _identity(p)) is not None}
    for _, dest in pairs:
        ident = _identity(dest)
        path = by_path.get(os.path.realpath(dest)) or (by_inode.get(ident) if ident is not None else None)
        if path is not None:
            msg = (
                f"the prediction {str(dest)!r} would replace the input image {str(path)!r}: ebai never writes over "
                "its inputs; give another output folder with -o"
            )
            raise InputError(msg)


def _apply_nan_policy(sample: np.ndarray, policy: str, path: Path) -> np.ndarray:
    sample, bad = apply_nan_policy(sample, policy, repr(str(path)))
    if bad:
        logger.warning("%s: %d NaN/Inf value(s) set to 0 (--nan-policy zero)", path, bad)
    return sample


def _check_memory(
    todo: list[tuple[Path, Path]],
    shapes: dict[Path, tuple[tuple[int, ...], np.dtype]],
    spec: InputSpec,
    out_channels: int,
) -> None:
    """Refuse before any work when the largest image will not fit in the memory free now."""
    from ebai.core.memory import available_memory, format_bytes, prediction_bytes

    free = available_memory()
    if free is None or not shapes:
        return
    need, biggest = 0, None
    for path, _ in todo:
        if path not in shapes:
            continue
        shape, dtype = shapes[path]
        n = prediction_bytes(
            _spatial_guess(shape, spec),
            spec.channels,
            out_channels,
            dtype.itemsize,
            normalizes=spec.normalization.kind != "none",
        )
        if n > need:
            need, biggest = n, path
    if biggest is not None and need > free:
        msg = (
            f"{str(biggest)!r} needs about {format_bytes(need)} of memory to predict but {format_bytes(free)} is free: "
            "run it on a machine with more memory, free some, or split the image into smaller files (or use the "
            "large-data path for images bigger than memory)"
        )
        raise InputError(msg)


def _spatial_guess(shape: tuple[int, ...], spec: InputSpec) -> tuple[int, ...]:
    """Return the spatial part of a stored shape: its largest ``spec.ndim`` axes, in order."""
    dims = [s for s in shape if s != 1]
    if len(dims) > spec.ndim:
        drop = len(dims) - spec.ndim
        smallest = sorted(range(len(dims)), key=lambda i: dims[i])[:drop]
        dims = [d for i, d in enumerate(dims) if i not in smallest]
    return tuple(dims) or (1,)


def _predict_one(
    path: Path,
    spec: InputSpec,
    pre: Callable[[np.ndarray], np.ndarray],
    post: Callable[[np.ndarray], np.ndarray] | None,
    engine: Any,
    *,
    overlap: float,
    batch_size: int,
    nan_policy: str,
    run_tiled: Callable[..., np.ndarray] | None = None,
) -> np.ndarray:
    """Read, check, prepare, tile and finish one image; each stage drops the previous array.

    ``run_tiled`` is the adapter's tiling (cellpose pads and tiles its own way); without an
    adapter, ebai's tiler runs with the spec's tile.
    """
    from ebai.core.imageio import read_image, to_sample
    from ebai.core.tiling import predict_tiled

    sample = _apply_nan_policy(to_sample(read_image(path), spec, path.name), nan_policy, path)
    x = np.asarray(pre(sample), dtype=np.float32)
    del sample
    if run_tiled is not None:
        output = run_tiled(x, engine, batch_size=batch_size, overlap=overlap, progress_desc=path.name)
    else:
        output = predict_tiled(
            x, engine, spec.tile, overlap=overlap, batch_size=batch_size, divisor=spec.divisor, progress_desc=path.name
        )
    del x
    result = np.asarray(post(output)) if post is not None else output
    if result.ndim == spec.ndim + 1 and result.shape[0] == 1:
        result = result[0]  # one channel: write a plain (Z)YX image
    return result


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the predictions (created if needed; never one of the input files).",
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
@click.option(
    "--nan-policy",
    type=click.Choice(NAN_POLICIES),
    default="error",
    show_default=True,
    help="NaN/Inf input pixels: refuse the image, set them to 0, or keep them.",
)
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
    nan_policy: str,
    options: tuple[str, ...],
    **large: Any,
) -> None:
    """Run ARTIFACT on INPUTS (TIFF/PNG/NPY files, folders or globs) and write TIFFs to -o.

    Each image is prepared by the adapter the artifact was made with (its preprocessing, as during
    compression) when that adapter is installed, otherwise normalised as the artifact's input spec
    records; then cut into overlapping tiles (as the adapter's tool cuts them: cellpose pads and
    tiles its own way), run through the compiled model and blended back, and finished by the
    adapter's post-processing (e.g. masks) unless --raw. Each prediction is written
    atomically under the input's name, so an interrupted run leaves no partial file and a rerun
    skips what is done. Images that cannot be read or hold NaN/Inf are listed at the end and the
    run exits with status 1; the others are all written.

    Zarr/OME-Zarr inputs, images too large for memory, and every input given --chunked, --scheduler
    or --cluster run block by block on Dask and are written as OME-Zarr (pip install
    'ebai-core[large]'); a rerun resumes them block by block.
    """
    from ebai.core.files import check_writable_dir, remove_stale
    from ebai.core.imageio import list_images, probe_image, write_tiff

    check_writable_dir(out_dir)
    remove_stale(out_dir)
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
            nan_policy=nan_policy,
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
    refuse_replacing_inputs([(path, out_dir / name) for name, path in names.items()])
    todo = [(path, out_dir / name) for name, path in names.items() if overwrite or not (out_dir / name).exists()]
    skipped = len(paths) - len(todo)
    if not todo:
        click.echo(f"all {len(paths)} predictions already exist in {out_dir} (pass --overwrite to redo them)", err=True)
        return

    failed: list[tuple[Path, str]] = []
    shapes: dict[Path, tuple[tuple[int, ...], np.dtype]] = {}
    for path, _ in todo:
        try:
            shapes[path] = probe_image(path)
        except InputError as exc:
            failed.append((path, str(exc)))
    todo = [(path, dest) for path, dest in todo if path in shapes]
    _check_memory(todo, shapes, spec, art.manifest.output.channels)

    # the adapter the artifact was made with prepares inputs (and, unless --raw, finishes outputs)
    # exactly as during compression; without it, the normalisation the manifest records stands in
    adapter, why = load_adapter(art.manifest.source)
    pre = adapter.preprocess if adapter is not None else spec.normalization.apply
    post = adapter.postprocess if adapter is not None and not raw else None
    # an ebai.adapters adapter tiles as its tool does (cellpose pads and tiles its own way)
    run_tiled = getattr(adapter, "run_tiled", None)
    if adapter is None and art.manifest.source.get("adapter"):
        lost = "" if raw else " and writing the raw model output"
        click.echo(f"warning: {why}: normalising with the artifact's recorded settings{lost}", err=True)

    written = 0
    with art.load_engine(record.backend, record.precision, **opts) as engine:
        runs_as = getattr(engine, "execution_precision", "")
        click.echo(
            f"running {record.key}{f' (computing in {runs_as})' if runs_as else ''} on {len(todo)} image(s)"
            + (f", skipping {skipped} done" if skipped else ""),
            err=True,
        )
        for path, dest in progress(todo, desc="images", unit="image"):
            try:
                result = _predict_one(
                    path,
                    spec,
                    pre,
                    post,
                    engine,
                    overlap=spec.overlap if overlap is None else overlap,
                    batch_size=batch_size,
                    nan_policy=nan_policy,
                    run_tiled=run_tiled,
                )
            except (EbaiError, MemoryError) as exc:
                reason = str(exc) if isinstance(exc, EbaiError) else f"{str(path)!r} ran out of memory"
                failed.append((path, reason))
                continue
            axes = spec.spatial_axes.upper()
            axes = axes if result.ndim == len(axes) else "C" + axes if result.ndim == len(axes) + 1 else None
            write_tiff(dest, result, overwrite=overwrite, axes=axes)
            written += 1
            logger.info("wrote %s", dest)
    click.echo(
        f"wrote {written} prediction(s) to {out_dir}"
        + (f" (skipped {skipped} existing; --overwrite redoes them)" if skipped else ""),
        err=True,
    )
    if failed:
        for path, reason in failed:
            click.echo(f"failed: {path}: {reason}", err=True)
        msg = f"{len(failed)} of {written + len(failed)} image(s) were not predicted (listed above); the other {written} were written"
        raise InputError(msg)
