"""``pip install ./packages/ebai-core ./packages/ebai-openvino`` in a fresh venv: no torch, and ``ebai run`` works.

Marked ``venv``; skips with the reason when the package index cannot be reached. The artifact is
made here, in the development environment (with torch), and run there without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from openvino_nets import smooth_noise

PACKAGES = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "tensorrt", "pycuda")
OFFLINE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeout",
    "Read timed out",
    "ProxyError",
)


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1", "EBAI_PROGRESS": "0"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
    )


@pytest.mark.venv
def test_fresh_venv_runs_an_artifact_without_torch(plain_artifact, tmp_path: Path) -> None:
    try:
        probe = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--retries",
                "0",
                "--timeout",
                "10",
                "-d",
                tmp_path / "probe",
                "click",
            ],
            60,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("PyPI is unreachable (pip download click timed out)")
    if probe.returncode != 0:
        pytest.skip(f"PyPI is unreachable: pip download click failed: {probe.stderr.strip().splitlines()[-1:]}")

    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", venv], 120)
    assert created.returncode == 0, created.stderr
    python, ebai = venv / "bin" / "python", venv / "bin" / "ebai"
    install = _run(
        [python, "-m", "pip", "install", "-q", "--retries", "1", PACKAGES / "ebai-core", PACKAGES / "ebai-openvino"],
        900,
    )
    if install.returncode != 0 and any(marker in install.stderr for marker in OFFLINE):
        pytest.skip("the package index became unreachable while installing the dependencies")
    assert install.returncode == 0, install.stderr[-3000:]

    listed = _run([python, "-m", "pip", "list", "--format=json"], 120)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"ebai-core", "ebai-openvino", "openvino", "nncf"} <= names
    pulled = sorted(n for n in names if n.startswith(FORBIDDEN))
    assert not pulled, f"ebai-core + ebai-openvino pulled {pulled}"
    assert _run([python, "-c", "import torch"], 60).returncode != 0

    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, smooth_noise((1, 1, 24, 40, 36), 21)[0, 0])
    results = {}
    for where, exe in (("fresh", ebai), ("dev", Path(sys.executable).with_name("ebai"))):
        done = _run(
            [
                exe,
                "run",
                plain_artifact,
                image,
                "-o",
                tmp_path / where,
                "--target",
                "openvino:int8",
                "-O",
                "inference_precision=f32",
            ],
            300,
        )
        assert done.returncode == 0, done.stderr
        results[where] = tifffile.imread(tmp_path / where / "stack.tif")
    assert results["fresh"].shape == (24, 40, 36)
    np.testing.assert_allclose(results["fresh"], results["dev"], rtol=0, atol=1e-4 * np.abs(results["dev"]).max())
