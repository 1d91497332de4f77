"""Fixtures every package's tests share: a fresh virtual environment to install packages into.

Each package promises what ``pip install`` of it pulls and what then works without the rest of
the workspace; the ``venv``-marked tests check that in a new environment that sees nothing of this
one. They skip, with the reason, when the package registry cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: pip messages that mean the package index could not be reached (not a packaging bug).
OFFLINE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeout",
    "Read timed out",
    "ProxyError",
    "connection broken",
)


def run_isolated(cmd: list[object], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with neither this environment's ``PYTHONPATH`` nor the user's site-packages."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1", "EBAI_PROGRESS": "0"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env, check=False, **kwargs
    )


class FreshVenv:
    """A new virtual environment under the test's temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bindir = root / ("Scripts" if os.name == "nt" else "bin")
        self.python = self.bindir / "python"

    def run(self, *cmd: object, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a command of this environment (``"ebai"``, ``"python"``) or any executable path."""
        first = self.bindir / cmd[0] if isinstance(cmd[0], str) else cmd[0]
        return run_isolated([first, *cmd[1:]], timeout, **kwargs)

    def pip_install(self, *requirements: object, timeout: float = 900) -> None:
        """``pip install`` into this environment; skip if the registry drops out, fail on anything else."""
        done = self.run("python", "-m", "pip", "install", "-q", "--retries", "1", *requirements, timeout=timeout)
        if done.returncode != 0 and any(marker in done.stderr for marker in OFFLINE):
            pytest.skip("the package index became unreachable while installing dependencies")
        assert done.returncode == 0, done.stderr[-3000:]

    def installed(self) -> set[str]:
        """Lower-case names of the distributions installed here."""
        listed = self.run("python", "-m", "pip", "list", "--format=json")
        assert listed.returncode == 0, listed.stderr
        return {p["name"].lower() for p in json.loads(listed.stdout)}


@pytest.fixture
def fresh_venv(tmp_path: Path) -> FreshVenv:
    """A new virtual environment with pip, after checking that the package index answers."""
    probe_cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "0", "--timeout", "10"]
    try:
        probe = run_isolated([*probe_cmd, "-d", tmp_path / "probe", "click"], 60)
    except subprocess.TimeoutExpired:
        pytest.skip("PyPI is unreachable (pip download click timed out)")
    if probe.returncode != 0:
        pytest.skip(f"PyPI is unreachable: pip download click failed: {probe.stderr.strip().splitlines()[-1:]}")
    root = tmp_path / "venv"
    created = run_isolated([sys.executable, "-m", "venv", root], 120)
    assert created.returncode == 0, created.stderr
    return FreshVenv(root)
