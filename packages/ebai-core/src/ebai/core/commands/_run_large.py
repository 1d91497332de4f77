"""``ebai run`` on images larger than memory: block by block on Dask, written as OME-Zarr.

``run.py`` hands over the inputs that need it (Zarr folders, files too large for memory, or all of
them with ``--chunked``/``--scheduler``/``--cluster``); everything heavy (dask, distributed, zarr)
is imported inside :func:`run_large`, so ``ebai run`` works without the ``ebai-core[large]`` extra
on images that fit.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ebai.core.errors import EbaiError, InputError, MissingDependencyError
from ebai.core.specs import parse_sizes

__all__ = ["block_postprocess", "large_options", "run_large", "split_inputs"]

logger = logging.getLogger("ebai.large")

_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
_FILE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy")


def large_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Declare the options of ``ebai run`` for large images and Dask clusters."""
    options = [
        click.option(
            "--chunked",
            is_flag=True,
            help="Process block by block on Dask and write OME-Zarr even when the image fits in memory.",
        ),
        click.option(
            "--level",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="Resolution level of multiscale OME-Zarr/TIFF inputs.",
        ),
        click.option(
            "--block",
            default=None,
            metavar="Z,Y,X",
            help="Block size in voxels (default: sized to --block-memory); output chunks divide it.",
        ),
        click.option(
            "--block-memory",
            default=768,
            show_default=True,
            type=click.IntRange(min=16),
            help="MiB one block may use in a worker.",
        ),
        click.option(
            "--workers",
            default=None,
            type=click.IntRange(min=1),
            help="Workers of the local Dask cluster (default: cores / 4; one runs inside this process, more as processes).",
        ),
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Join a running Dask scheduler (tcp://host:8786) instead of starting a local cluster.",
        ),
        click.option(
            "--cluster",
            default=None,
            type=click.Choice(["slurm", "pbs", "lsf"]),
            help="Start the Dask cluster through dask-jobqueue.",
        ),
        click.option(
            "--jobs",
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="Batch jobs (--cluster), one worker each.",
        ),
        click.option(
            "--cores", default=4, show_default=True, type=click.IntRange(min=1), help="Cores per batch job (--cluster)."
        ),
        click.option("--memory", default="16GB", show_default=True, help="Memory per batch job (--cluster)."),
        click.option("--walltime", default="01:00:00", show_default=True, help="Wall time per batch job (--cluster)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def split_inputs(inputs: Sequence[str], force: bool) -> tuple[list[str], list[Path]]:
    """Split the user's inputs into those run in memory and those run block by block.

    Zarr folders (named directly or inside a given folder) and files too large for memory go block
    by block; with ``force`` every image does. Everything else is passed on as given, so the
    in-memory path reports its own errors. Without the ``large`` extra, a large input raises
    :class:`MissingDependencyError` with the install line, after saying which input it is.
    """
    from ebai.core.imageio import IMAGE_SUFFIXES, expand_inputs
    from ebai.core.largeio import is_zarr, needs_blocks

    def is_image(p: Path) -> bool:
        return is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    small: list[str] = []
    large: list[Path] = []
    for item in inputs:
        path = Path(item)
        if force:
            large.extend(
                expand_inputs([item], is_image, readable="TIFF, PNG, NPY or Zarr", sources="images, folders or globs")
            )
        elif is_zarr(path) or (path.is_file() and needs_blocks(path)):
            large.append(path)
        elif path.is_dir() and not is_zarr(path):
            zarrs = [c for c in sorted(path.iterdir()) if is_zarr(c)]
            large.extend(zarrs)
            if not zarrs or any(c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES for c in path.iterdir()):
                small.append(item)  # its files go the in-memory way, which reports an empty folder as before
        else:
            small.append(item)  # files that fit and globs: the in-memory path, with its own messages
    large = list(dict.fromkeys(large))
    if large:
        try:
            from ebai.core.largeio import require_large

            require_large()
        except MissingDependencyError:
            why = (
                "is a Zarr image"
                if is_zarr(large[0])
                else "does not fit in memory"
                if not force
                else "is to be run on Dask"
            )
            click.echo(
                f"error: {str(large[0])!r} {why}: ebai processes it block by block with the 'large' extra", err=True
            )
            raise
    return small, large


def _output_path(out_dir: Path, path: Path) -> Path:
    lower = path.name.lower()
    for suffix in (*_ZARR_SUFFIXES, *_FILE_SUFFIXES):
        if lower.endswith(suffix):
            return out_dir / (path.name[: -len(suffix)] + ".ome.zarr")
    return out_dir / (path.name + ".ome.zarr")


def _parse_block(text: str | None, ndim: int) -> tuple[int, ...] | None:
    return None if text is None else parse_sizes(text, "--block", ndim)


def _log_handlers(out_dir: Path) -> list[logging.Handler]:
    from ebai.core.progress import progress_enabled

    out_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(out_dir / "ebai-run.log", encoding="utf-8")]
    handlers[0].setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    if not progress_enabled():  # no bar on the terminal: the same lines go to stderr
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setFormatter(logging.Formatter("ebai: %(message)s"))
    return handlers


def block_postprocess(adapter: Any, out_channels: int, ndim: int) -> tuple[bool, str, int]:
    """Decide how the adapter's post-processing applies block by block: ``(apply, dtype, channels)``.

    Post-processing that maps each voxel's channel values on their own (thresholds, argmax; the
    adapter says so with ``pointwise_postprocess = True``) gives the same result on every block
    as on the whole image, so each block is finished by it; its output dtype and channels are
    found on a small probe. One that leaves the output as it is needs nothing. Anything else
    (cellpose's masks from flows, per-image rescaling) needs the whole image: refused, with the fix.
    """
    import numpy as np

    probe = np.random.default_rng(0).standard_normal((out_channels, *(3,) * ndim)).astype(np.float32)
    name = type(adapter).__name__
    if getattr(adapter, "pointwise_postprocess", False):
        result = np.asarray(adapter.postprocess(probe.copy()))
        if result.ndim not in (ndim, ndim + 1) or result.shape[-ndim:] != probe.shape[1:]:
            msg = f"{name}.postprocess turned a {probe.shape} output into {result.shape}: a voxel-wise post-processing keeps the spatial shape"
            raise InputError(msg)
        return True, str(result.dtype), 1 if result.ndim == ndim else int(result.shape[0])
    try:
        same = np.array_equal(np.asarray(adapter.postprocess(probe.copy())), probe)
    except Exception:  # whatever it raises on a probe, it is not the identity
        same = False
    if same:
        return False, "float32", out_channels
    msg = (
        f"the artifact's adapter ({name}) post-processes whole images (e.g. masks from flows), which a "
        "block-by-block run cannot do: pass --raw to write the model output as OME-Zarr, or run images "
        "that fit in memory without --chunked, --scheduler or --cluster"
    )
    raise InputError(msg)


def run_large(
    art: Any,
    record: Any,
    engine_options: dict[str, Any],
    paths: Sequence[Path],
    out_dir: Path,
    *,
    overwrite: bool,
    batch_size: int,
    overlap: float | None,
    raw: bool,
    nan_policy: str,
    level: int,
    block: str | None,
    block_memory: int,
    workers: int | None,
    scheduler: str | None,
    cluster: str | None,
    jobs: int,
    cores: int,
    memory: str,
    walltime: str,
) -> None:
    """Predict ``paths`` block by block on Dask and write one OME-Zarr image per input into ``out_dir``.

    The whole image's normalisation statistics are computed first (in this process, reading it slab
    by slab on every core while the cluster starts), then every block not yet written is sent to
    the workers; a rerun resumes. ``nan_policy`` applies to every region read, as the in-memory
    path applies it to the whole image; the adapter's post-processing to every block when it is
    voxel-wise (:func:`block_postprocess`), else the run is refused unless ``raw``.
    """
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from ebai.core.blocks import choose_block, output_chunks, plan_blocks, tile_grid
    from ebai.core.commands._run_setup import load_adapter
    from ebai.core.distributed import (
        BlockJob,
        check_paths,
        open_client,
        run_block,
        warm_up,
        worker_threads,
        workers_info,
    )
    from ebai.core.largeio import OutputZarr, SampleView, open_image

    spec = art.manifest.input
    out_channels = art.manifest.output.channels
    overlap = spec.overlap if overlap is None else overlap
    adapter, _ = load_adapter(art.manifest.source)
    post, dtype, channels = False, "float32", out_channels
    if adapter is not None and not raw:
        post, dtype, channels = block_postprocess(adapter, out_channels, len(spec.tile))
        click.echo(
            "note: blocks are normalised with the artifact's recorded settings over the whole image"
            + (" and finished by the adapter's voxel-wise post-processing" if post else ""),
            err=True,
        )
    dests: dict[Path, Path] = {}
    for path in paths:
        dest = _output_path(out_dir, path)
        if dest in dests:
            msg = f"{str(dests[dest])!r} and {str(path)!r} would both be written as {dest.name!r}: run them into different output folders"
            raise InputError(msg)
        dests[dest] = path

    stop = threading.Event()  # set when the run ends, so a statistics pass still reading stops
    handlers = _log_handlers(out_dir)
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        work = []
        for dest, path in dests.items():
            image = open_image(path, level)
            view = SampleView(image, spec)
            grid = tile_grid(view.shape, spec.tile, overlap=overlap, batch_size=batch_size, divisor=spec.divisor)
            shape = _parse_block(block, len(view.shape)) or choose_block(
                grid, view.channels + out_channels, block_memory << 20
            )
            blocks = plan_blocks(grid, shape)
            run_id = {
                "artifact": art.manifest.name,
                "raw": raw,
                "nan_policy": nan_policy,
                "created": art.manifest.created,
                "target": record.key,
                "input": str(path.resolve()),
                "level": level,
                "shape": list(view.shape),
                "block": list(shape),
                "overlap": overlap,
                "options": {k: str(v) for k, v in engine_options.items()},
            }
            out = OutputZarr(dest, run_id)
            carried = {"source": str(path.resolve()), "source_format": image.kind, **image.attrs}
            state = out.create(
                (channels, *view.shape),
                (channels, *output_chunks(shape)),
                view.spatial_names(),
                view.spatial_scale(),
                view.spatial_units(),
                carried,
                overwrite,
                dtype=dtype,
            )
            if state == "complete":
                click.echo(f"{dest} is already complete (pass --overwrite to redo it)", err=True)
                continue
            done = out.done()
            todo = [b for b in blocks if b.name not in done]
            if state == "resume":
                click.echo(
                    f"resuming {dest.name}: {len(blocks) - len(todo)} of {len(blocks)} blocks already written, "
                    f"running the other {len(todo)}",
                    err=True,
                )
            job = BlockJob(
                artifact=str(Path(art.path).resolve()),
                backend=record.backend,
                precision=record.precision,
                options=tuple(sorted(engine_options.items())),
                threads=(),
                source=str(path.resolve()),
                level=level,
                spec=spec,
                grid=grid,
                lo=None,
                hi=None,
                output=str(dest.resolve()),
                batch_size=batch_size,
                nan_policy=nan_policy,
                adapter=dict(art.manifest.source) if post else None,
                dtype=dtype,
            )
            work.append((out, job, todo, len(blocks), view, state))
        if not work:
            return
        # the statistics are read while the cluster starts (one image after the other); a run that
        # fails meanwhile (no scheduler, Ctrl-C) stops them at the next slab instead of waiting for them
        pool = ThreadPoolExecutor(1)
        stats = [
            pool.submit(_statistics, view, spec, nan_policy, Path(job.source), stop) for _, job, _, _, view, _ in work
        ]
        pool.shutdown(wait=False)
        with open_client(
            scheduler=scheduler,
            cluster=cluster,
            workers=workers,
            jobs=jobs,
            cores=cores,
            memory=memory,
            walltime=walltime,
        ) as client:
            client.run(check_paths, work[0][1].artifact, *(job.source for _, job, *_ in work), str(out_dir.resolve()))
            threads = tuple(sorted(worker_threads(client).items()))
            n_workers = len(workers_info(client))
            client.run(warm_up, replace(work[0][1], threads=threads))  # compiles while the statistics are read
            figures = []
            for (out, *_, state), future in zip(work, stats, strict=True):
                try:
                    figures.append(future.result())
                except EbaiError:
                    if state == "new":  # refused before any block (NaN/Inf, a damaged chunk): nothing to resume
                        import shutil

                        shutil.rmtree(out.path, ignore_errors=True)
                    raise
            click.echo(
                f"running {record.key} on {len(work)} image(s) block by block on {n_workers} Dask worker(s)", err=True
            )
            for (out, job, todo, total, *_), (lo, hi, zeroed) in zip(work, figures, strict=True):
                job = replace(job, threads=threads, lo=lo, hi=hi)
                zeroed_blocks = _run_blocks(client, run_block, job, todo, total, out.path)
                out.finish()
                click.echo(f"wrote {out.path} ({total} blocks, {len(todo)} run now)", err=True)
                if nan_policy == "zero" and (zeroed or zeroed_blocks):
                    # the statistics pass sees every voxel unless it samples (percentile) or reads none
                    n = zeroed if spec.normalization.kind in ("minmax", "zscore") else zeroed_blocks
                    click.echo(f"{job.source}: {n} NaN/Inf value(s) set to 0 (--nan-policy zero)", err=True)
                    logger.info("%s: %d NaN/Inf value(s) set to 0 (--nan-policy zero)", job.source, n)
    finally:
        stop.set()
        for h in handlers:
            logger.removeHandler(h)
            h.close()


def _statistics(view: Any, spec: Any, nan_policy: str, path: Path, stop: threading.Event) -> tuple[Any, Any, int]:
    """Whole-image ``lo``, ``hi`` over the image with ``nan_policy`` applied, and the NaN/Inf values zeroed."""
    from ebai.core.blocks import image_statistics
    from ebai.core.distributed import region_text, usable_cores
    from ebai.core.nan_policy import apply_nan_policy

    zeroed = [0]

    def read(region: tuple[slice, ...]) -> Any:
        if stop.is_set():
            msg = "the run was stopped before the whole-image statistics were read"
            raise InputError(msg)
        data, bad = apply_nan_policy(view.read(region), nan_policy, f"{str(path)!r} at {region_text(region)}")
        zeroed[0] += bad  # the slabs do not overlap
        return data

    lo, hi = image_statistics(
        read, view.shape, view.channels, spec.normalization, threads=usable_cores(), align=view.chunk_length
    )
    return lo, hi, zeroed[0]


def _run_blocks(
    client: Any, fn: Callable[..., tuple[int, int]], job: Any, todo: list[Any], total: int, dest: Path
) -> int:
    """Submit ``todo`` and follow them to the end with a bar and log lines (voxels/s, ETA).

    Returns the NaN/Inf values the blocks set to 0.
    """
    from distributed import as_completed

    from ebai.core.progress import progress_bar

    voxels = sum(b.voxels for b in todo)
    if not todo:
        return 0
    futures = [client.submit(fn, job, b, pure=False) for b in todo]
    started = time.perf_counter()
    finished = total - len(todo)
    written = zeroed = 0
    try:
        with progress_bar(dest.name, total=voxels, unit="vox", unit_scale=True) as bar:
            for future in as_completed(futures):
                n, bad = future.result()
                zeroed += bad
                bar.update(n)
                written += n
                finished += 1
                elapsed = time.perf_counter() - started
                rate = written / elapsed if elapsed > 0 else float("nan")
                eta = (voxels - written) / rate if rate > 0 else float("nan")
                logger.info("%s: block %d/%d done, %.3g voxels/s, ETA %.0f s", dest.name, finished, total, rate, eta)
    except BaseException:
        client.cancel(futures)
        raise
    return zeroed
