"""Importing ebai.core stays light: no deep-learning runtime, no codecarbon."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "openvino",
    "tensorrt",
    "codecarbon",
    "onnx",
    "onnxruntime",
    "nncf",
    "scipy",
    "skimage",
    "pandas",
    "PIL",
    "tifffile",
    "tqdm",
    "dask",
    "distributed",
    "zarr",
    "dask_jobqueue",
    "ome_zarr",
)

CODE = f"""
import json, sys
import ebai.core
import ebai.core.tiling, ebai.core.metrics, ebai.core.latency, ebai.core.energy
import ebai.core.imageio, ebai.core.data, ebai.core.hardware, ebai.core.cli, ebai.core.commands.info
import ebai.core.largeio, ebai.core.blocks, ebai.core.distributed, ebai.core.commands.run
from ebai.core import Artifact, ImageFiles, InputSpec, PluginSpec, get_backend
from ebai.core.tiling import predict_tiled
from ebai.core.metrics import pearson
from ebai.core.energy import measure_energy
from ebai.core.latency import measure_interleaved, measure_latency
import ebai.core.comparison, ebai.core.install_hints, ebai.core.testing
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""


def test_import_pulls_no_heavy_module() -> None:
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
