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


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory) -> Path:
    from torch_nets import trained_weights

    return trained_weights(tmp_path_factory.mktemp("weights") / "weights.pt")


@pytest.fixture(scope="session")
def small_artifact(small_weights, tmp_path_factory) -> Path:
    """``ebai compress torch_nets.py:small2d ... --target torch --fp16``: one torch-fp16 target."""
    import tifffile
    from click.testing import CliRunner
    from torch_nets import smooth_images

    from ebai.core.cli import cli

    root = tmp_path_factory.mktemp("compress")
    data = root / "data"
    data.mkdir()
    for i, img in enumerate(smooth_images(6, (48, 48), seed=7)):
        tifffile.imwrite(data / f"img{i}.tif", img)
    out = root / "small.ebai"
    nets = Path(__file__).with_name("torch_nets.py")
    args = [f"{nets}:small2d", "--weights", small_weights, "--axes", "bcyx", "--channels", 1, "--tile", "32,32"]
    args += ["--data", data, "--prune", "none", "--target", "torch", "--fp16", "-o", out]
    result = CliRunner().invoke(cli, ["compress", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "torch:fp16" in result.output
    return out
