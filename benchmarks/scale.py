"""Throughput and memory of ``ebai run`` in memory and block by block on Dask, on volumes of 1 to 12 GB.

The model is the demo's int8 denoiser: the shipped denoising U-Net compressed once here with
``ebai.compress.compress`` (no pruning, OpenVINO int8, as ``ebai demo`` does). The volumes are
float32 Zarr arrays (chunks 32x256x256, Blosc LZ4 with byte shuffle) written slab by slab, never
held in memory: one synthetic noisy volume of the denoising task (32x256x256) repeated over the
whole extent with fresh noise in every slab.

Rows:

- in memory, 1 GB: ``ebai run`` on the same volume as ``.npy`` (read whole, written as TIFF);
- Dask, 1 GB / 4 GB / 12 GB: ``ebai run --chunked`` on the Zarr volumes (OME-Zarr output).

Each row runs ``ebai run`` as a subprocess; peak RSS is the largest sum, over the process and all
its descendants (Dask scheduler, nannies, workers), of psutil's RSS sampled every 0.2 s.
Throughput is output voxels / wall time of the whole command (start-up, statistics pass and
writing included).

Run:  python benchmarks/scale.py [--sizes 1,4,12] [--workers 1] [--block-memory 2048] [--repeats 2]
      [--dir /tmp/ebai-scale] [--json out.json] [--skip-in-memory]

On the first size the in-memory and Dask runs alternate ``--repeats`` times (the load of a shared
machine then weighs on both alike); each row's voxels/s is all its runs' voxels over their summed
wall time, its peak RSS the largest of its runs, and its wall column lists every run.

Disk: each Dask row needs its input and its output (2x the size); the 1 GB row also an NPY copy
and a TIFF output.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

BASE = (32, 256, 256)
GB = 1 << 30


def build_artifact(path: Path) -> Path:
    """Compress the demo's denoiser to OpenVINO int8 once (the demo's recipe without pruning)."""
    if (path / "manifest.json").is_file():
        return path
    from ebai.compress import compress
    from ebai.core.data import ArraySource
    from ebai.tasks._adapter import TaskAdapter
    from ebai.tasks._registry import get_task
    from ebai.tasks._settings import BenchSettings
    from ebai.tasks._task import CALIBRATION_SEED
    from ebai.tasks._variants import recipe

    task = get_task("denoising")
    settings = BenchSettings.quick(volume=BASE)
    images, _ = task.make_samples(settings.user_images, CALIBRATION_SEED, task.shape)
    compress(
        TaskAdapter(task.name),
        ArraySource(list(images)),
        recipe(task, settings, pruned=False, targets={"openvino": "int8"}),
        path,
    )
    return path


def base_volume() -> np.ndarray:
    from ebai.tasks._registry import get_task

    inputs, _ = get_task("denoising").make_samples(1, 4242, BASE)
    return np.asarray(inputs[0], dtype=np.float32)[0]


def shape_for(gigabytes: float) -> tuple[int, int, int]:
    """A ``(Z, 1024, 1024)`` float32 shape of about ``gigabytes`` GB."""
    return (int(round(gigabytes * GB / (4 * 1024 * 1024))), 1024, 1024)


def slabs(shape: tuple[int, ...], base: np.ndarray, seed: int) -> Any:
    """Yield ``(z0, slab)``: the base volume tiled over the extent, fresh noise per slab."""
    rng = np.random.default_rng(seed)
    reps = [math.ceil(s / b) for s, b in zip(shape[1:], base.shape[1:], strict=True)]
    plane = np.tile(base, (1, *reps))[:, : shape[1], : shape[2]]
    sigma = float(base.std()) * 0.1
    for z0 in range(0, shape[0], base.shape[0]):
        z1 = min(z0 + base.shape[0], shape[0])
        noise = rng.normal(0.0, sigma, size=(z1 - z0, *shape[1:])).astype(np.float32)
        yield z0, plane[: z1 - z0] + noise


def write_zarr(path: Path, shape: tuple[int, ...], base: np.ndarray) -> None:
    import zarr

    if (path / ".zarray").is_file():
        return
    import numcodecs

    # Blosc LZ4 with byte shuffle: zarr-python 2's default compressor, common in OME-Zarr files
    arr = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(32, 256, 256),
        dtype="float32",
        zarr_format=2,
        compressors=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    )
    for z0, slab in slabs(shape, base, seed=len(shape) + shape[0]):
        arr[z0 : z0 + slab.shape[0]] = slab


def write_npy(path: Path, shape: tuple[int, ...], base: np.ndarray) -> None:
    if path.is_file():
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for z0, slab in slabs(shape, base, seed=len(shape) + shape[0]):
        out[z0 : z0 + slab.shape[0]] = slab
    out.flush()
    del out


def measure(args: list[str]) -> tuple[float, int]:
    """Run ``ebai`` with ``args``; return wall seconds and the peak RSS of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from ebai.core.cli import main; main()", *args])
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        msg = f"ebai {' '.join(args)} failed with exit code {proc.returncode}"
        raise SystemExit(msg)
    return wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,12", help="Dask volumes in GB (the first also runs in memory)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--block-memory", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved in-memory/Dask pairs on the first size")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ebai-scale"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-in-memory", action="store_true", help="only Dask rows (e.g. to add a size later)")
    opts = parser.parse_args()
    opts.dir.mkdir(parents=True, exist_ok=True)
    artifact = build_artifact(opts.dir / "denoiser-int8.ebai")
    base = base_volume()
    rows: list[dict[str, Any]] = []

    def report(path: str, size: float, shape: tuple[int, ...], runs: list[tuple[float, int]]) -> None:
        walls = [w for w, _ in runs]
        row = {
            "path": path,
            "gb": size,
            "shape": shape,
            "wall_s": walls,
            "peak_rss_gb": max(p for _, p in runs) / GB,
            "voxels_per_s": math.prod(shape) * len(runs) / sum(walls),  # all runs' voxels over all runs' time
        }
        rows.append(row)
        first = rows[0]  # the in-memory row, unless --skip-in-memory
        ratio = row["voxels_per_s"] / first["voxels_per_s"]
        print(
            f"| {row['path']} | {row['gb']:.0f} GB {row['shape']} | {row['voxels_per_s'] / 1e6:.2f} M | "
            f"{row['peak_rss_gb']:.2f} GB | {', '.join(f'{w:.0f}' for w in walls)} s | {ratio:.2f} |",
            flush=True,
        )
        if opts.json:
            opts.json.write_text(json.dumps(rows, indent=1))

    print("| path | volume (float32) | voxels/s | peak RSS, all processes | wall | vs first row |", flush=True)
    print("| --- | --- | ---: | ---: | ---: | ---: |", flush=True)
    for i, size in enumerate(float(s) for s in opts.sizes.split(",")):
        shape = shape_for(size)
        folder = opts.dir / f"{size:g}GB"
        folder.mkdir(exist_ok=True)
        source = folder / "volume.zarr"
        write_zarr(source, shape, base)
        dask = ["run", str(artifact), str(source), "-o", str(folder / "dask"), "--chunked", "--overwrite",
                "--workers", str(opts.workers), "--block-memory", str(opts.block_memory)]  # fmt: skip
        if i == 0 and not opts.skip_in_memory:
            # in memory and on Dask in turns, so the load of a shared machine weighs on both alike
            npy = folder / "volume.npy"
            write_npy(npy, shape, base)
            memory = ["run", str(artifact), str(npy), "-o", str(folder / "in-memory"), "--overwrite"]
            pairs = [(measure(memory), measure(dask)) for _ in range(max(1, opts.repeats))]
            report("in memory (NPY in, TIFF out)", size, shape, [m for m, _ in pairs])
            report("Dask (OME-Zarr out)", size, shape, [d for _, d in pairs])
            npy.unlink()
            shutil.rmtree(folder / "in-memory", ignore_errors=True)
        else:
            report("Dask (OME-Zarr out)", size, shape, [measure(dask)])
        shutil.rmtree(folder, ignore_errors=True)  # the next size needs the disk


if __name__ == "__main__":
    main()
