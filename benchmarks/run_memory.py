"""Peak memory of ``ebai run`` on one large image, as a multiple of the image's size.

``ebai run`` holds a whole image in memory (the large-data path is for images bigger than that).
This measures the peak resident set size (RSS) of the ``ebai run`` process on a float32 image of
``--mib`` MiB (default 256, shape 64 x 1024 x 1024), for an artifact without normalisation and one
with percentile normalisation, and the same process on a 1 MiB image, which shows the fixed cost
of Python, OpenVINO and the compiled model that every run pays whatever the image size.

The model is a small 3D convolutional network (1 -> 4 -> 1 channels, random weights) lowered to
OpenVINO fp32 and tiled at 32 x 128 x 128 with overlap 0.25; its size barely matters, the
image-sized arrays do. Peak RSS is the child's ``ru_maxrss`` as the kernel reports it.

Run:  python benchmarks/run_memory.py [--mib 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TILE = (32, 128, 128)


def build_artifact(folder: Path, normalization: str) -> Path:
    """An OpenVINO fp32 artifact of a small 3D conv net, made the way ebai compress writes one."""
    import torch

    from ebai.core import ArtifactWriter, InputSpec, Manifest, Normalization, OutputSpec, TargetRecord
    from ebai.openvino import OpenVINOBackend

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 3, padding=1)
    ).eval()
    onnx_path = folder / f"net-{normalization}.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, *TILE),),
            str(onnx_path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
        )
    spec = InputSpec("bczyx", 1, TILE, normalization=Normalization(normalization), overlap=0.25)
    path = folder / f"conv-{normalization}.ebai"
    with ArtifactWriter(path) as w:
        shutil.copyfile(onnx_path, w.root / "reference.onnx")
        lowering = OpenVINOBackend().lower(
            w.root / "reference.onnx", w.root / "openvino-fp32", precision="fp32", input_spec=spec, calibration=[]
        )
        w.commit(
            Manifest(
                name=path.stem,
                input=spec,
                output=OutputSpec("bczyx", 1),
                targets=(TargetRecord.from_lowering(lowering, "openvino-fp32"),),
                reference="reference.onnx",
            )
        )
    return path


def peak_rss_of_run(artifact: Path, image: Path, out: Path, threads: int) -> int:
    """Peak RSS in bytes of one ``ebai run`` process, from that child's own rusage (``wait4``)."""
    ebai = Path(sys.executable).with_name("ebai")
    cmd = [str(ebai), "run", str(artifact), str(image), "-o", str(out), "-O", f"num_threads={threads}"]
    with open(out.with_suffix(".log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EBAI_PROGRESS": "0"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ebai run failed:\n{out.with_suffix('.log').read_text(encoding='utf-8')}")
    return usage.ru_maxrss * 1024  # Linux reports KiB


def prepare(root: Path, mib: int) -> None:
    """Write the two images and the two artifacts (in a child process: see :func:`main`)."""
    import numpy as np
    import tifffile

    shape = (64, 1024, mib * (1 << 20) // 4 // (64 * 1024))
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    tifffile.imwrite(root / "big.tif", data)
    tifffile.imwrite(root / "small.tif", np.ascontiguousarray(data[:, :64, :64]))
    (root / "shape.txt").write_text(" ".join(map(str, shape)), encoding="utf-8")
    for kind in ("none", "percentile"):
        build_artifact(root, kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="Image size in MiB (float32, 64 x 1024 x N voxels).")
    parser.add_argument("--threads", type=int, default=2, help="OpenVINO threads.")
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare is not None:
        prepare(args.prepare, args.mib)
        return
    # This process imports nothing heavy and holds no data: a child's peak RSS counts the pages it
    # shares with its parent between fork and exec, so a parent holding torch would inflate it.
    with tempfile.TemporaryDirectory(prefix="ebai-run-memory-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--mib", str(args.mib), "--prepare", str(root)], check=True)
        shape = tuple(int(s) for s in (root / "shape.txt").read_text(encoding="utf-8").split())
        size = 4 * shape[0] * shape[1] * shape[2]
        print(f"image {shape} float32 = {size / 2**20:.0f} MiB; tile {TILE}, overlap 0.25, {args.threads} threads")
        print(
            f"{'normalization':<14}{'peak RSS MiB':>14}{'x input':>9}{'fixed cost MiB':>16}{'(peak-fixed)/input':>20}"
        )
        for kind in ("none", "percentile"):
            artifact = root / f"conv-{kind}.ebai"
            base = peak_rss_of_run(artifact, root / "small.tif", root / f"out-small-{kind}", args.threads)
            peak = peak_rss_of_run(artifact, root / "big.tif", root / f"out-big-{kind}", args.threads)
            print(
                f"{kind:<14}{peak / 2**20:>14.0f}{peak / size:>9.2f}{base / 2**20:>16.0f}{(peak - base) / size:>20.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
