"""``pip install ./packages/ebai-core ./packages/ebai-openvino`` in a fresh venv: no torch, and ``ebai run`` works.

Marked ``venv``; skips with the reason when the package index cannot be reached. The artifact is
made here, in the development environment (with torch), and run there without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from openvino_nets import smooth_noise

PACKAGES = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "tensorrt", "pycuda")


@pytest.mark.venv
def test_fresh_venv_runs_an_artifact_without_torch(plain_artifact, fresh_venv, tmp_path: Path) -> None:
    fresh_venv.pip_install(PACKAGES / "ebai-core", PACKAGES / "ebai-openvino")

    names = fresh_venv.installed()
    assert {"ebai-core", "ebai-openvino", "openvino", "nncf"} <= names
    pulled = sorted(n for n in names if n.startswith(FORBIDDEN))
    assert not pulled, f"ebai-core + ebai-openvino pulled {pulled}"
    assert fresh_venv.run("python", "-c", "import torch", timeout=60).returncode != 0

    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, smooth_noise((1, 1, 24, 40, 36), 21)[0, 0])
    results = {}
    for where, exe in (("fresh", "ebai"), ("dev", Path(sys.executable).with_name("ebai"))):
        done = fresh_venv.run(
            exe, "run", plain_artifact, image, "-o", tmp_path / where,
            "--target", "openvino:int8", "-O", "inference_precision=f32",
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[where] = tifffile.imread(tmp_path / where / "stack.tif")
    assert results["fresh"].shape == (24, 40, 36)
    np.testing.assert_allclose(results["fresh"], results["dev"], rtol=0, atol=1e-4 * np.abs(results["dev"]).max())
