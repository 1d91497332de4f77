"""``pip install ./packages/ebai-core ./packages/ebai-torch`` in a fresh venv runs a torch-target artifact.

Marked ``venv``; skips with the reason when the package index cannot be reached. The artifact is
made here (ebai compress needs ebai-compress and onnx); the fresh environment has only ebai-core,
ebai-torch and what they pull (torch, numpy, click, ...), and no OpenVINO, TensorRT or adapters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from torch_nets import smooth_images

PACKAGES = Path(__file__).resolve().parents[2]
FORBIDDEN = ("openvino", "nncf", "tensorrt", "onnx", "ebai-compress", "ebai-adapters", "pycuda")


@pytest.mark.venv
def test_fresh_venv_with_core_and_torch_runs_an_artifact(small_artifact, fresh_venv, tmp_path: Path) -> None:
    import torch

    # the torch the workspace pins (a CPU wheel on the development machines), not the newest CUDA build
    fresh_venv.pip_install(PACKAGES / "ebai-core", PACKAGES / "ebai-torch", f"torch=={torch.__version__.split('+')[0]}")
    names = fresh_venv.installed()
    assert {"ebai-core", "ebai-torch", "torch"} <= names
    pulled = sorted(n for n in names if n.startswith(FORBIDDEN))
    assert not pulled, f"ebai-core + ebai-torch pulled {pulled}"

    image = tmp_path / "img.tif"
    tifffile.imwrite(image, smooth_images(1, (40, 56), seed=21)[0])
    results = {}
    for where, exe in (("fresh", "ebai"), ("dev", Path(sys.executable).with_name("ebai"))):
        done = fresh_venv.run(
            exe, "run", small_artifact, image, "-o", tmp_path / where, "--target", "torch:fp16",
            "-O", "device=cpu", "-O", "tune=false", "--raw",
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[where] = tifffile.imread(tmp_path / where / "img.tif")
    assert results["fresh"].shape == (40, 56)
    np.testing.assert_allclose(results["fresh"], results["dev"], rtol=0, atol=1e-3 * np.abs(results["dev"]).max())
    code = "import ebai.torch, torch; print(type(ebai.torch.load_module(__import__('sys').argv[1], device='cpu', tune=False)).__name__)"
    done = fresh_venv.run("python", "-c", code, small_artifact, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "TorchModule", done.stderr
