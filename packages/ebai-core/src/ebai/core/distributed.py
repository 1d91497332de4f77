"""Running blocks on a Dask cluster: the cluster ``ebai run`` starts or joins, and the worker side.

Three ways to get workers, all giving a ``distributed.Client``:

- a local cluster on this machine (the default), started and closed here: one worker inside this
  process, or with ``workers`` > 1 that many worker processes;
- ``--scheduler ADDRESS``: an existing ``dask.distributed`` cluster, left running;
- ``--cluster slurm|pbs|lsf``: a batch-system cluster through dask-jobqueue, closed at the end.

A worker keeps one engine per artifact and target for its lifetime: the artifact's sha256 sums are
checked and the engine compiled on the first block it runs, not per block. Each worker process runs
one block at a time and gives the engine ``cores / workers on its host`` threads, so workers x
threads = cores.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.errors import InputError

__all__ = [
    "CLUSTERS",
    "BlockJob",
    "jobqueue_cluster",
    "open_client",
    "region_text",
    "run_block",
    "usable_cores",
    "warm_up",
    "worker_threads",
    "workers_info",
]

#: Batch systems ``--cluster`` accepts, with their dask-jobqueue classes.
CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster"}


def jobqueue_cluster(kind: str, *, cores: int, memory: str, walltime: str, **extra: Any) -> Any:
    """Make (not scale) a dask-jobqueue cluster of ``kind``: each job is one worker process.

    The job reserves ``cores`` cores while its worker runs one block at a time on one Dask thread;
    the engine inside uses the reserved cores. ``job_script()`` of the result is the script each job
    submits; ``scale(jobs=N)`` submits them.
    """
    if kind not in CLUSTERS:
        msg = f"unknown cluster kind {kind!r}: use one of {', '.join(CLUSTERS)}"
        raise InputError(msg)
    try:
        import dask_jobqueue
    except ImportError as exc:
        from ebai.core.errors import MissingDependencyError
        from ebai.core.largeio import LARGE_INSTALL

        raise MissingDependencyError(LARGE_INSTALL) from exc
    reserve = {
        "slurm": {"job_cpu": cores},
        "pbs": {"resource_spec": f"select=1:ncpus={cores}:mem={memory}"},
        "lsf": {"ncpus": cores},
    }[kind]
    cls = getattr(dask_jobqueue, CLUSTERS[kind])
    return cls(
        cores=1,
        processes=1,
        memory=memory,
        walltime=walltime,
        scheduler_options={"dashboard_address": None},
        **reserve,
        **extra,
    )


def usable_cores() -> int:
    """Cores this process may run on (the batch system's allocation, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def open_client(
    *,
    scheduler: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    jobs: int = 1,
    cores: int = 4,
    memory: str = "16GB",
    walltime: str = "01:00:00",
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` to the cluster asked for; close what was started here.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``); the cluster is left running.
    cluster
        ``"slurm"``, ``"pbs"`` or ``"lsf"``: submit ``jobs`` jobs of ``cores`` cores, ``memory`` and
        ``walltime`` each, one worker process per job.
    workers
        Workers of the local cluster (default: one per 4 cores, at least 1); a single worker runs
        in this process.
    """
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)  # its INFO lines would drown ebai's
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            msg = f"cannot reach the Dask scheduler at {scheduler!r} ({exc}): check the address and that it is running"
            raise InputError(msg) from exc
        try:
            yield client
        finally:
            client.close()
        return
    if cluster:
        made = jobqueue_cluster(cluster, cores=cores, memory=memory, walltime=walltime)
        made.scale(jobs=jobs)
    else:
        import dask

        n = workers or max(1, usable_cores() // 4)
        # One worker runs in this process: the engine and numpy release the GIL, so a separate
        # process would only add its start-up, imports and memory. Several run as processes, each
        # with its own engine. distributed starts those with MALLOC_TRIM_THRESHOLD_ set, which also
        # freezes glibc's mmap threshold: every tile-sized array is then a fresh mmap whose pages
        # are faulted in anew (measured: twice the system time of the in-memory path on the demo
        # denoiser); a block frees its memory when it ends anyway, so they get glibc's default.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            where = {"processes": True, "host": "127.0.0.1"} if n > 1 else {"processes": False}  # inproc://
            made = LocalCluster(
                n_workers=n, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR, **where
            )
    try:
        with Client(made) as client:
            if cluster:
                client.wait_for_workers(1)
            yield client
    finally:
        made.close()
        if not cluster and not made.processes:  # the worker's engines and open images lived here
            _ENGINES.clear()
            _VIEWS.clear()
            _POSTS.clear()


def workers_info(client: Any) -> dict[str, Any]:
    """Return the scheduler's record of every worker (recent distributed lists 5 unless asked for all)."""
    import inspect

    if "n_workers" in inspect.signature(client.scheduler_info).parameters:
        return client.scheduler_info(n_workers=-1)["workers"]
    return client.scheduler_info()["workers"]


def worker_threads(client: Any) -> dict[str, int]:
    """Engine threads per worker host: that host's cores divided by its worker processes."""
    info = workers_info(client)
    per_host: dict[str, int] = {}
    for w in info.values():
        per_host[w["host"]] = per_host.get(w["host"], 0) + 1
    cores = client.run(usable_cores)
    out: dict[str, int] = {}
    for addr, n in cores.items():
        host = info[addr]["host"] if addr in info else addr
        out[host] = max(1, int(n or 1) // per_host.get(host, 1))
    return out


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to run blocks of one image (sent with every block; small).

    ``threads`` maps worker hosts to engine threads; ``lo``/``hi`` are the whole image's
    normalisation statistics; ``nan_policy`` is ``--nan-policy``; ``adapter`` is the manifest's
    ``source`` when the adapter's voxel-wise post-processing is applied to each block (``None``
    otherwise), written as ``dtype``.
    """

    artifact: str
    backend: str
    precision: str
    options: tuple[tuple[str, Any], ...]
    threads: tuple[tuple[str, int], ...]
    source: str
    level: int
    spec: Any
    grid: Any
    lo: np.ndarray | None
    hi: np.ndarray | None
    output: str
    batch_size: int
    nan_policy: str = "error"
    adapter: Any = None
    dtype: str = "float32"


_ENGINES: dict[tuple[Any, ...], Any] = {}
#: Engines compiled by this process, per artifact path (what "once per worker" is checked by).
LOADS: dict[str, int] = {}
_VIEWS: dict[tuple[Any, ...], Any] = {}
_POSTS: dict[str, Any] = {}


def check_paths(*paths: str) -> str:
    """Raise :class:`InputError` naming the first of ``paths`` this process cannot see."""
    for path in paths:
        if not Path(path).exists():
            msg = f"the Dask worker on {socket.gethostname()} cannot see {path!r}: put it on storage every worker mounts, under the same path"
            raise InputError(msg)
    return socket.gethostname()


def _engine(job: BlockJob, worker: Any = None) -> Any:
    """Return the worker's engine for ``job``, compiled on first use with its host's share of the cores."""
    key = (job.artifact, job.backend, job.precision, job.options)
    if key not in _ENGINES:
        from ebai.core.artifact import Artifact

        check_paths(job.artifact)
        options = dict(job.options)
        if job.backend == "openvino" and "num_threads" not in options:
            options["num_threads"] = dict(job.threads).get(_host(worker), 1)
        art = Artifact.open(job.artifact)  # every sha256 checked, once per worker process
        _ENGINES[key] = art.load_engine(job.backend, job.precision, **options)
        LOADS[job.artifact] = LOADS.get(job.artifact, 0) + 1
    return _ENGINES[key]


def warm_up(job: BlockJob, dask_worker: Any = None) -> str:
    """Check the artifact and compile its engine in this worker now (run on every worker at start).

    ``ebai run`` calls it through ``Client.run`` (which passes the worker as ``dask_worker``) while
    the whole-image statistics are still being read, so the first block does not wait for the
    compilation; returns the worker's host name.
    """
    _engine(job, dask_worker)
    return socket.gethostname()


def _host(worker: Any = None) -> str:
    """Host of ``worker`` (default: the worker running this task), as the scheduler names it."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    if worker is None:
        try:
            worker = get_worker()
        except ValueError:  # not inside a task
            return "127.0.0.1"
    return get_address_host(worker.address)  # tcp://host:port, or inproc://host/... in this process


def _view(job: BlockJob) -> Any:
    key = (job.source, job.level, job.spec)
    if key not in _VIEWS:
        from ebai.core.largeio import SampleView, open_image

        check_paths(job.source)
        _VIEWS[key] = SampleView(open_image(job.source, job.level), job.spec)
    return _VIEWS[key]


def _postprocess(job: BlockJob) -> Any:
    """Return the adapter's post-processing, rebuilt once per worker process from the manifest's source."""
    import json

    key = json.dumps(job.adapter, sort_keys=True, default=str)
    if key not in _POSTS:
        from ebai.core.commands._run_setup import load_adapter

        adapter, why = load_adapter(job.adapter)
        if adapter is None:
            msg = f"the Dask worker on {socket.gethostname()} cannot post-process blocks: {why}; install it on every worker, or pass --raw"
            raise InputError(msg)
        _POSTS[key] = adapter.postprocess
    return _POSTS[key]


def region_text(region: tuple[tuple[int, int], ...] | tuple[slice, ...]) -> str:
    """``[0:64, 0:512, 0:512]``: a region for messages."""
    pairs = [(r.start, r.stop) if isinstance(r, slice) else r for r in region]
    return "[" + ", ".join(f"{a}:{b}" for a, b in pairs) + "]"


def run_block(job: BlockJob, block: Any) -> tuple[int, int]:
    """Read, normalise, predict, post-process and write one block.

    Runs in a worker. The input is read slab by slab on a second thread while the first tiles
    run (:class:`~ebai.core.blocks.SlabFeed`). The block's chunks are written, then its
    completion marker, so a worker killed half-way leaves the block to be redone, never half-marked.

    Returns
    -------
    tuple of int
        Voxels written, and NaN/Inf values set to 0 inside the block's core (``--nan-policy
        zero``; the halos overlap, so only the core is counted).
    """
    from ebai.core.blocks import SlabFeed, block_region, predict_block, slab_bounds
    from ebai.core.largeio import write_block
    from ebai.core.nan_policy import apply_nan_policy, count_nonfinite

    check_paths(job.output)
    view = _view(job)
    engine = _engine(job)
    read, _, _ = block_region(job.grid, block)
    first, rest = read[0], read[1:]
    # the core's voxels inside the region, for counting NaN/Inf once per image (halos overlap)
    inner = tuple(slice(lo - r.start, hi - r.start) for (lo, hi), r in zip(block.core[1:], rest, strict=True))
    zeroed = 0

    def slab(start: int, stop: int) -> np.ndarray:
        nonlocal zeroed
        region = (slice(first.start + start, first.start + stop), *rest)
        raw = view.read(region)
        lo = max(block.core[0][0], first.start + start) - region[0].start
        hi = min(block.core[0][1], first.start + stop) - region[0].start
        if job.nan_policy == "zero" and hi > lo:  # counted before they are zeroed, in the core only
            zeroed += count_nonfinite(raw[(slice(None), slice(lo, hi), *inner)])
        raw, _ = apply_nan_policy(raw, job.nan_policy, f"{job.source!r} at {region_text(region)}")
        return job.spec.normalization.rescale(raw, job.lo, job.hi)

    bounds = slab_bounds(first.start, first.stop, view.chunk_length, job.grid.tile[0])
    shape = (view.channels, *(r.stop - r.start for r in read))
    with SlabFeed(shape, bounds, slab) as feed:
        core = predict_block(feed.sample, job.grid, block, engine, batch_size=job.batch_size, wait=feed.wait)
    del feed  # the blend's core is copied out only now, so three region-sized arrays never coexist
    if job.adapter is not None:
        result = np.asarray(_postprocess(job)(core))
        if result.ndim == core.ndim - 1:  # the channel axis reduced away (labels): one channel
            result = result[np.newaxis]
        result = np.ascontiguousarray(result, dtype=job.dtype)
    else:
        result = np.ascontiguousarray(core)
    del core  # frees the blend's halo
    index = (slice(None), *(slice(lo, hi) for lo, hi in block.core))
    write_block(Path(job.output), block.name, index, result)
    return block.voxels, zeroed
