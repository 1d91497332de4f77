"""``pip install ./packages/ebai-tensorrt`` in a fresh virtual environment, then ``ebai info`` there.

Marked ``venv``; skips with the reason when the package registry cannot be reached.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.venv

PACKAGES = Path(__file__).resolve().parents[2]
_OFFLINE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
    "Max retries exceeded",
)


def test_plain_install_lowers_without_tensorrt_and_info_says_how_to_get_it(tmp_path):
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    cmd = [
        str(py),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        str(PACKAGES / "ebai-core"),
        str(PACKAGES / "ebai-tensorrt"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        out = done.stdout + done.stderr
        if any(s in out for s in _OFFLINE):
            pytest.skip(f"package registry unreachable: {out.strip().splitlines()[-1]}")
        pytest.fail(f"pip install failed:\n{out[-3000:]}")
    check = subprocess.run(
        [str(py), "-c", "import sys, ebai.tensorrt; print(sorted(m for m in ('tensorrt', 'torch', 'cuda') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0 and check.stdout.strip() == "[]", check.stderr
    info = subprocess.run([str(env / "bin" / "ebai"), "info"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    line = next(x for x in info.stdout.splitlines() if x.strip().startswith("tensorrt"))
    assert "unavailable: needs tensorrt: pip install 'ebai-tensorrt[cu12]'" in line, info.stdout
