"""``ebai run`` block by block on a real Dask cluster (loopback) equals the in-memory path.

The artifacts are tiny OpenVINO fp32 convolutions (zero-padded at tile borders, so their output
depends on the tile grid), built from ONNX made with onnx.helper.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")
pytest.importorskip("zarr")
pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")

from ebai.core.cli import cli  # noqa: E402
from ebai.core.errors import InputError  # noqa: E402

SHAPE_3D = (40, 72, 80)
SHAPE_2D = (2, 100, 90)  # channels first


def _conv_onnx(path: Path, ndim: int, channels: int, seed: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.3, size=(channels, channels, *(3,) * ndim)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=channels).astype(np.float32)
    dims = ["n", channels, *(f"s{i}" for i in range(ndim))]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * (2 * ndim)),
            helper.make_node("Tanh", ["c"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(kernel, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _artifact(
    root: Path, name: str, ndim: int, channels: int, tile: tuple[int, ...], source: dict[str, Any] | None = None
) -> Path:
    from ebai.core.artifact import ArtifactWriter
    from ebai.core.manifest import Manifest, TargetRecord
    from ebai.core.specs import InputSpec, Normalization, OutputSpec
    from ebai.openvino import OpenVINOBackend

    spec = InputSpec(
        "bczyx" if ndim == 3 else "bcyx", channels, tile, normalization=Normalization("percentile"), overlap=0.25
    )
    onnx_path = _conv_onnx(root / f"{name}.onnx", ndim, channels, seed=ndim)
    path = root / f"{name}.ebai"
    with ArtifactWriter(path) as w:
        (w.root / "reference.onnx").write_bytes(onnx_path.read_bytes())
        lowering = OpenVINOBackend().lower(
            w.root / "reference.onnx", w.root / "openvino-fp32", precision="fp32", input_spec=spec, calibration=[]
        )
        w.commit(
            Manifest(
                name=name,
                input=spec,
                output=OutputSpec(spec.axes, channels),
                targets=(TargetRecord.from_lowering(lowering, "openvino-fp32"),),
                reference="reference.onnx",
                source=source or {},
            )
        )
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("large-artifacts")
    return {"3d": _artifact(root, "conv3d", 3, 1, (16, 32, 32)), "2d": _artifact(root, "conv2d", 2, 2, (32, 32))}


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, s) for s in SHAPE_3D), indexing="ij")
    vol = (np.sin(z * 2) * np.cos(y * 3) + x + rng.normal(0, 0.2, SHAPE_3D)) * 100 + 500
    yy, xx = np.meshgrid(*(np.linspace(0, 3, s) for s in SHAPE_2D[1:]), indexing="ij")
    two = np.stack([np.sin(yy * 2) + xx, np.cos(xx * 3) * yy]) * 50 + rng.normal(0, 5, SHAPE_2D) + 200
    return {"3d": vol.astype(np.uint16), "2d": two.astype(np.float32)}


@pytest.fixture(scope="module")
def cluster() -> Any:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as made:
        yield made


def invoke(*args: Any) -> Any:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _in_memory(artifact: Path, image: np.ndarray, tmp: Path) -> np.ndarray:
    import tifffile

    src = tmp / "ref.npy"
    np.save(src, image)
    invoke("run", artifact, src, "-o", tmp / "ref", "-O", "inference_precision=f32")
    return tifffile.imread(tmp / "ref" / "ref.tif")


@pytest.fixture(scope="module")
def references(artifacts, images, tmp_path_factory) -> dict[str, np.ndarray]:
    return {k: _in_memory(artifacts[k], images[k], tmp_path_factory.mktemp(f"ref{k}")) for k in artifacts}


def _write_input(fmt: str, image: np.ndarray, folder: Path, axes: str, write_ome_zarr: Any = None) -> Path:
    import tifffile
    import zarr

    chunks = tuple(max(1, s // 3) for s in image.shape)
    if fmt in ("zarr2", "zarr3"):
        path = folder / "img.zarr"
        arr = zarr.create_array(
            store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype, zarr_format=int(fmt[-1])
        )
        arr[...] = image
    elif fmt == "ome-zarr":
        # NGFF 0.4 (Zarr v2) for the 3D image, 0.5 (Zarr v3) for the 2D one
        path = folder / "img.ome.zarr"
        write_ome_zarr(path, image, "0.4" if axes == "zyx" else "0.5", axes, [1.0 if a == "c" else 0.5 for a in axes])
    elif fmt == "tiff":
        path = folder / "img.tif"
        tifffile.imwrite(path, image, tile=(32, 32), metadata={"axes": axes.upper()})
    else:
        path = folder / "img.npy"
        np.save(path, image)
    return path


def _read_output(path: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(store=str(path), mode="r")["0"][...])


def _close(result: np.ndarray, reference: np.ndarray) -> None:
    ref = reference if reference.ndim == result.ndim else reference[np.newaxis]
    assert result.shape == ref.shape
    assert np.abs(result - ref).max() <= 1e-5 * np.ptp(ref)


@pytest.mark.parametrize("fmt", ["ome-zarr", "zarr2", "zarr3", "tiff", "npy"])
@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_dask_path_equals_in_memory(
    fmt, kind, artifacts, images, references, cluster, tmp_path, write_ome_zarr
) -> None:
    axes = "zyx" if kind == "3d" else "cyx"
    source = _write_input(fmt, images[kind], tmp_path, axes, write_ome_zarr)
    block = "24,40,40" if kind == "3d" else "48,48"
    result = invoke(
        "run",
        artifacts[kind],
        source,
        "-o",
        tmp_path / "out",
        "--scheduler",
        cluster.scheduler_address,
        "--block",
        block,
        "-O",
        "inference_precision=f32",
    )
    assert "2 Dask worker(s)" in result.output
    out = tmp_path / "out" / "img.ome.zarr"
    _close(_read_output(out), references[kind])

    # reopens with ome-zarr-py and bioio, with its axes and the source's pixel size
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(out)))()))
    names = [a["name"] for a in node.metadata["axes"]]
    assert names == ["c", *(("z", "y", "x") if kind == "3d" else ("y", "x"))]
    scale = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale[1:] == ([0.5] * (len(names) - 1) if fmt == "ome-zarr" else [1.0] * (len(names) - 1))
    from bioio_ome_zarr import Reader as BioReader

    bio = BioReader(str(out))
    assert bio.dims.C == (1 if kind == "3d" else 2)
    assert tuple(bio.shape[-2:]) == images[kind].shape[-2:]


def _loads(artifact: str) -> int:
    from ebai.core.distributed import LOADS

    return LOADS.get(artifact, 0)


def test_each_worker_compiles_the_engine_once(artifacts, images, cluster, tmp_path) -> None:
    from distributed import Client

    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    for run in ("a", "b"):
        invoke(
            "run", artifacts["3d"], source, "-o", tmp_path / run, "--scheduler", cluster.scheduler_address,
            "--block", "16,32,32", "-O", "inference_precision=f32",
        )  # fmt: skip
    import cloudpickle

    # the workers cannot import this test module by name (pytest's importlib mode): send _loads by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with Client(cluster.scheduler_address) as client:
            loads = client.run(_loads, str(artifacts["3d"].resolve()))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert len(loads) == 2 and all(n == 1 for n in loads.values()), loads


def test_embedded_cluster_resumes_and_overwrites(artifacts, images, references, tmp_path) -> None:
    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    args = (
        "run",
        artifacts["3d"],
        source,
        "-o",
        tmp_path / "out",
        "--chunked",
        "--workers",
        "2",
        "--block",
        "16,32,32",
    )
    first = invoke(*args, "-O", "inference_precision=f32")
    assert "on 2 Dask worker(s)" in first.output and "(27 blocks, 27 run now)" in first.output
    out = tmp_path / "out" / "vol.ome.zarr"
    _close(_read_output(out), references["3d"])
    assert not (out / ".ebai-blocks").exists()
    again = invoke(*args, "-O", "inference_precision=f32")
    assert "already complete" in again.output
    log = (tmp_path / "out" / "ebai-run.log").read_text()
    assert "block 27/27 done" in log and "voxels/s" in log and "ETA" in log
    # another block size is another run: refused without --overwrite, redone with it
    other = CliRunner().invoke(cli, [str(a) for a in (*args[:-1], "20,36,40")])
    assert other.exit_code != 0 and "--overwrite" in other.output
    redo = invoke(*args[:-1], "20,36,40", "--overwrite", "-O", "inference_precision=f32")
    assert "(8 blocks, 8 run now)" in redo.output
    _close(_read_output(out), references["3d"])


def test_one_local_worker_runs_in_this_process(artifacts, images, references, tmp_path) -> None:
    from ebai.core import distributed

    # one worker (the default on up to 7 cores) needs no process of its own: it compiles the engine
    # here, and the engine is freed with the cluster
    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    key = str(artifacts["3d"].resolve())
    before = distributed.LOADS.get(key, 0)
    result = invoke("run", artifacts["3d"], source, "-o", tmp_path / "out", "--chunked", "--workers", "1",
                    "--block", "24,40,40", "-O", "inference_precision=f32")  # fmt: skip
    assert "on 1 Dask worker(s)" in result.output
    assert distributed.LOADS[key] == before + 1 and not distributed._ENGINES
    _close(_read_output(tmp_path / "out" / "vol.ome.zarr"), references["3d"])


def _start(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "EBAI_PROGRESS": "0", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-c", "from ebai.core.cli import main; main()", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )


def _wait_for_block(proc: subprocess.Popen, count: int) -> list[str]:
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if " done, " in line and int(line.split("block ")[1].split("/")[0]) >= count:
            return lines
    pytest.fail(f"the run ended before reaching block {count}: {''.join(lines)}")


def test_sigkill_half_way_then_rerun_finishes_only_missing_blocks(artifacts, images, references, tmp_path) -> None:
    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    # many small blocks, so the kill lands while most are still to run even on a loaded machine
    args = ["run", str(artifacts["3d"]), str(source), "-o", str(tmp_path / "out"), "--chunked", "--workers", "2",
            "--block", "8,16,16", "-O", "inference_precision=f32"]  # fmt: skip
    proc = _start(args)
    _wait_for_block(proc, 8)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = tmp_path / "out" / "vol.ome.zarr"
    done = len(list((out / ".ebai-blocks").iterdir()))
    total = 5 * 5 * 5
    assert 8 <= done < total
    rerun = invoke(*args)
    assert f"already written, running the other {total - done}" in rerun.output
    assert f"({total} blocks, {total - done} run now)" in rerun.output
    _close(_read_output(out), references["3d"])
    assert not list((out / "0").glob("*.partial"))


def test_worker_killed_mid_run_loses_no_block(artifacts, images, references, tmp_path) -> None:
    from distributed import Client, LocalCluster

    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as made:
        with Client(made) as client:
            pids = client.run(os.getpid)
            args = ["run", str(artifacts["3d"]), str(source), "-o", str(tmp_path / "out"), "--scheduler",
                    made.scheduler_address, "--block", "8,24,32", "-O", "inference_precision=f32"]  # fmt: skip
            proc = _start(args)
            _wait_for_block(proc, 4)
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            assert proc.stderr is not None
            rest = proc.stderr.read()
            assert proc.wait() == 0, rest
    out = tmp_path / "out" / "vol.ome.zarr"
    assert "(45 blocks, 45 run now)" in rest
    _close(_read_output(out), references["3d"])


def test_worker_that_cannot_see_a_path_names_it(cluster) -> None:
    from distributed import Client

    from ebai.core.distributed import check_paths

    with Client(cluster.scheduler_address) as client, pytest.raises(InputError) as err:
        client.run(check_paths, "/no/such/folder/model.ebai")
    message = str(err.value)
    assert "cannot see '/no/such/folder/model.ebai'" in message and "\n" not in message


def test_missing_input_chunk_is_one_line_error(artifacts, images, cluster, tmp_path) -> None:
    source = _write_input("zarr3", images["3d"], tmp_path, "zyx")
    chunk = source / "c" / "1" / "1" / "1"
    chunk.unlink()
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(artifacts["3d"]),
            str(source),
            "-o",
            str(tmp_path / "out"),
            "--scheduler",
            cluster.scheduler_address,
        ],
    )
    assert result.exit_code == 1
    assert "chunk 'c/1/1/1'" in result.output and str(source) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_slurm_job_script() -> None:
    pytest.importorskip("dask_jobqueue")
    from ebai.core.distributed import jobqueue_cluster

    made = jobqueue_cluster("slurm", cores=8, memory="32GB", walltime="02:00:00")
    try:
        script = made.job_script()
    finally:
        made.close()
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=30G" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "--nthreads 1" in script  # one block at a time; the engine uses the 8 cores


def test_without_the_extra_the_pip_line_is_given(monkeypatch, tmp_path, images, artifacts) -> None:
    source = _write_input("zarr2", images["3d"], tmp_path, "zyx")
    monkeypatch.setitem(sys.modules, "zarr", None)
    result = CliRunner().invoke(cli, ["run", str(artifacts["3d"]), str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pip install 'ebai-core[large]'" in result.output
    assert "is a Zarr image" in result.output


def test_nan_policy_on_blocks_as_in_memory(artifacts, images, cluster, tmp_path) -> None:
    image = images["3d"].astype(np.float32)
    image[5, 10, 10] = np.nan
    image[30, 60, 70] = np.inf
    source = tmp_path / "vol.npy"
    np.save(source, image)
    chunked = ["run", str(artifacts["3d"]), str(source), "--scheduler", cluster.scheduler_address,
               "--block", "24,40,40", "-O", "inference_precision=f32"]  # fmt: skip
    # the default refuses the image in one line naming it and the fix, before any block runs
    refused = CliRunner().invoke(cli, [*chunked, "-o", str(tmp_path / "refused")])
    assert refused.exit_code == 1
    assert str(source) in refused.output and "2 NaN/Inf value(s)" in refused.output
    assert "--nan-policy zero" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "refused" / "vol.ome.zarr").exists()  # nothing to resume: a rerun starts afresh
    # zero: the same result as the in-memory path with the same policy, and the count said once
    invoke("run", artifacts["3d"], source, "-o", tmp_path / "ref", "--nan-policy", "zero",
           "-O", "inference_precision=f32")  # fmt: skip
    import tifffile

    reference = tifffile.imread(tmp_path / "ref" / "vol.tif")
    zeroed = invoke(*chunked, "-o", tmp_path / "out", "--nan-policy", "zero")
    assert "2 NaN/Inf value(s) set to 0" in zeroed.output
    _close(_read_output(tmp_path / "out" / "vol.ome.zarr"), reference)


def test_blocks_are_written_as_several_chunks(artifacts, images, references, cluster, tmp_path, monkeypatch) -> None:
    import zarr

    # chunks smaller than the blocks (as 256x256 planes are on real data): every block writes
    # several whole chunks, none shared with another block, and the image equals the in-memory one
    monkeypatch.setattr("ebai.core.blocks.CHUNK_PLANE", 10)
    monkeypatch.setattr("ebai.core.blocks.CHUNK_DEPTH", 5)
    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    result = invoke("run", artifacts["3d"], source, "-o", tmp_path / "out", "--scheduler", cluster.scheduler_address,
                    "--block", "20,36,40", "-O", "inference_precision=f32")  # fmt: skip
    assert "(8 blocks, 8 run now)" in result.output
    out = tmp_path / "out" / "vol.ome.zarr"
    assert zarr.open_array(store=str(out / "0"), mode="r").chunks == (1, 5, 9, 10)
    _close(_read_output(out), references["3d"])


def test_voxelwise_postprocess_runs_on_blocks(images, references, cluster, tmp_path) -> None:
    pytest.importorskip("ebai.adapters")
    pytest.importorskip("monai")
    # the 2D two-channel convolution of the other tests, recorded as a MONAI segmentation network:
    # its post-processing (argmax over the channels) is voxel-wise, so every block is finished by it
    config = {"network": "UNet", "args": {"spatial_dims": 2, "in_channels": 2, "out_channels": 2,
              "channels": [4, 8], "strides": [2]}, "tile": [32, 32], "task": "segmentation"}  # fmt: skip
    artifact = _artifact(tmp_path, "seg2d", 2, 2, (32, 32), source={"adapter": "monai", "config": config})
    source = tmp_path / "img.npy"
    np.save(source, images["2d"])
    result = invoke("run", artifact, source, "-o", tmp_path / "out", "--scheduler", cluster.scheduler_address,
                    "--block", "48,48", "-O", "inference_precision=f32")  # fmt: skip
    assert "voxel-wise post-processing" in result.output
    labels = _read_output(tmp_path / "out" / "img.ome.zarr")
    assert labels.dtype == np.uint16 and labels.shape == (1, *images["2d"].shape[1:])
    ref = references["2d"]
    clear = np.abs(ref[0] - ref[1]) > 1e-4 * np.ptp(ref)  # ties may flip with float32 rounding
    assert clear.mean() > 0.99
    assert np.array_equal(labels[0][clear], np.argmax(ref, axis=0)[clear])


def test_whole_image_postprocess_is_refused_on_blocks(artifacts, images, references, cluster, tmp_path) -> None:
    pytest.importorskip("ebai.tasks")
    # the nuclei task's post-processing (cellpose's masks from flows) needs the whole image
    artifact = _artifact(
        tmp_path, "nuclei3d", 3, 1, (16, 32, 32), source={"adapter": "task", "config": {"task": "nuclei"}}
    )
    source = tmp_path / "vol.npy"
    np.save(source, images["3d"])
    args = ["run", str(artifact), str(source), "-o", str(tmp_path / "out"), "--scheduler", cluster.scheduler_address,
            "--block", "24,40,40", "-O", "inference_precision=f32"]  # fmt: skip
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1
    assert "post-processes whole images" in refused.output and "--raw" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    # --raw writes the model output block by block, as without an adapter
    invoke(*args, "--raw")
    _close(_read_output(tmp_path / "out" / "vol.ome.zarr"), references["3d"])


def test_statistics_pass_stops_when_the_run_ends(images, tmp_path) -> None:
    from threading import Event

    from ebai.core.commands._run_large import _statistics
    from ebai.core.largeio import SampleView, open_image
    from ebai.core.specs import InputSpec, Normalization

    path = tmp_path / "vol.npy"
    np.save(path, images["3d"])
    spec = InputSpec("bczyx", 1, (16, 32, 32), normalization=Normalization("zscore"))
    view = SampleView(open_image(path, 0), spec)
    stop = Event()
    lo, hi, zeroed = _statistics(view, spec, "error", path, stop)
    data = images["3d"].astype(np.float64)
    assert np.isclose(lo[0], data.mean(), rtol=1e-6) and np.isclose(hi[0] - lo[0], data.std(), rtol=1e-5)
    assert zeroed == 0
    stop.set()  # what run_large does when the run fails or ends while the pass is still reading
    with pytest.raises(InputError, match="stopped before the whole-image statistics"):
        _statistics(view, spec, "error", path, stop)
