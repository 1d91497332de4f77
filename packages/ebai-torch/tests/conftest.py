"""Shared fixtures of the ebai-torch tests; the helper modules beside this file are importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the helper modules beside this file (unique names: every package's tests share one process)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    """Point the user cache at the test's folder, so no test writes to ~/.cache."""
    path = tmp_path / "user-cache"
    monkeypatch.setenv("EBAI_CACHE_DIR", str(path))
    return path
