"""``ebai compress --target torch --fp16``, ``ebai run --target torch:fp16``, ``ebai benchmark`` and
``ebai.torch.load_module`` on one small artifact, all on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ebai.core.artifact import Artifact
from ebai.core.cli import cli
from ebai.core.errors import ArtifactError, InputError
from ebai.core.metrics import pearson

tifffile = pytest.importorskip("tifffile")
NETS = Path(__file__).with_name("torch_nets.py")


def _smooth(n: int, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal(shape)
        for axis in range(len(shape)):
            x = sum(np.roll(x, k, axis=axis) for k in range(-2, 3)) / 5.0
        out.append(((x - x.mean()) / x.std()).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ebai_torch_test_nets", NETS)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    torch.manual_seed(0)
    model = nets.small2d()
    model.train()
    with torch.no_grad():  # settle BatchNorm statistics on smooth images
        for img in _smooth(4, (32, 32), seed=5):
            model(torch.from_numpy(img)[None, None].repeat(2, 1, 1, 1))
    path = tmp_path_factory.mktemp("w") / "weights.pt"
    torch.save(model.eval().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def artifact(weights, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compress")
    data = root / "data"
    data.mkdir()
    for i, img in enumerate(_smooth(6, (48, 48), seed=7)):
        tifffile.imwrite(data / f"img{i}.tif", img)
    out = root / "small.ebai"
    args = [f"{NETS}:small2d", "--weights", weights, "--axes", "bcyx", "--channels", 1, "--tile", "32,32"]
    args += ["--data", data, "--prune", "none", "--target", "torch", "--fp16", "-o", out]
    result = CliRunner().invoke(cli, ["compress", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "torch:fp16" in result.output or "torch-fp16" in result.output
    return out


def _original(weights: Path) -> torch.nn.Module:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ebai_torch_test_nets2", NETS)
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    model = nets.small2d()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def test_compress_writes_a_guarded_fp16_torch_target(artifact):
    art = Artifact.open(artifact)
    (target,) = art.manifest.targets
    assert (target.backend, target.precision, target.entry) == ("torch", "fp16", "model.pt2")
    assert target.options["mode"] in ("autocast", "cast")
    assert target.fidelity.passed and target.fidelity.pearson >= 0.999
    tried = {v["options"]["mode"] for v in target.record["variants"]}
    assert tried == {"autocast", "cast"}  # the guard compared both ways of running fp16
    assert art.manifest.versions.get("ebai-torch")


def test_run_with_the_torch_target_matches_torch(artifact, weights, tmp_path, user_cache):
    image = _smooth(1, (32, 32), seed=3)[0]  # one tile: no blending, so the output is the network's
    tifffile.imwrite(tmp_path / "in.tif", image)
    args = ["run", artifact, tmp_path / "in.tif", "-o", tmp_path / "out", "--target", "torch:fp16", "--raw"]
    result = CliRunner().invoke(cli, [*map(str, args), "-O", "device=cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pred = tifffile.imread(tmp_path / "out" / "in.tif")
    assert pred.shape == image.shape
    with torch.inference_mode():
        ref = _original(weights)(torch.from_numpy(image[None, None])).numpy()[0, 0]
    assert pearson(pred, ref) >= 0.999


def test_benchmark_has_a_torch_row(artifact, user_cache):
    args = ["benchmark", str(artifact), "--no-energy", "--repeats", "1", "--warmup", "0", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["rows"]}
    row = rows["torch:fp16"]
    assert row["precision"].startswith("fp16 ") and "(cpu)" in row["precision"]
    assert row["pearson"] >= 0.999


def test_load_module_gives_a_torch_module_a_tool_can_call(artifact, weights, user_cache):
    import ebai.torch

    net = ebai.torch.load_module(artifact, precision="fp16", device="cpu")
    assert isinstance(net, torch.nn.Module) and "precision='fp16'" in repr(net)
    x = torch.from_numpy(np.stack(_smooth(3, (32, 32), seed=9))[:, None])
    y = net(x)
    assert y.dtype == x.dtype and y.shape == (3, 1, 32, 32) and y.device == x.device
    with torch.inference_mode():
        ref = _original(weights)(x)
    assert pearson(y.numpy(), ref.numpy()) >= 0.999
    net.close()
    with pytest.raises(InputError, match="knows precisions"):
        ebai.torch.load_module(artifact, precision="half")
    with pytest.raises(ArtifactError, match="holds no target torch:bf16"):
        ebai.torch.load_module(artifact, precision="bf16")


def test_load_module_works_inside_monai_sliding_window_inference(artifact, weights, user_cache):
    inferers = pytest.importorskip("monai.inferers")
    import ebai.torch

    net = ebai.torch.load_module(artifact, device="cpu", tune=False)
    image = torch.from_numpy(_smooth(1, (64, 80), seed=4)[0])[None, None]
    out = inferers.sliding_window_inference(image, (32, 32), 4, net, overlap=0.25)
    with torch.inference_mode():
        ref = inferers.sliding_window_inference(image, (32, 32), 4, _original(weights), overlap=0.25)
    assert out.shape == image.shape and pearson(out.numpy(), ref.numpy()) >= 0.999
