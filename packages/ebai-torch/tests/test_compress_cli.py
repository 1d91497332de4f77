"""``ebai compress --target torch --fp16``, ``ebai run --target torch:fp16``, ``ebai benchmark`` and
``ebai.torch.load_module`` on one small artifact, all on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch_nets import original_model, smooth_images

from ebai.core.artifact import Artifact
from ebai.core.cli import cli
from ebai.core.errors import ArtifactError, InputError
from ebai.core.metrics import pearson

tifffile = pytest.importorskip("tifffile")


def test_compress_writes_a_guarded_fp16_torch_target(small_artifact):
    art = Artifact.open(small_artifact)
    (target,) = art.manifest.targets
    assert (target.backend, target.precision, target.entry) == ("torch", "fp16", "model.pt2")
    assert target.options["mode"] in ("autocast", "cast")
    assert target.fidelity.passed and target.fidelity.pearson >= 0.999
    tried = {v["options"]["mode"] for v in target.record["variants"]}
    assert tried == {"autocast", "cast"}  # the guard compared both ways of running fp16
    assert art.manifest.versions.get("ebai-torch")


def test_run_with_the_torch_target_matches_torch(small_artifact, small_weights, tmp_path, user_cache):
    image = smooth_images(1, (32, 32), seed=3)[0]  # one tile: no blending, so the output is the network's
    tifffile.imwrite(tmp_path / "in.tif", image)
    args = ["run", small_artifact, tmp_path / "in.tif", "-o", tmp_path / "out", "--target", "torch:fp16", "--raw"]
    result = CliRunner().invoke(cli, [*map(str, args), "-O", "device=cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pred = tifffile.imread(tmp_path / "out" / "in.tif")
    assert pred.shape == image.shape
    with torch.inference_mode():
        ref = original_model(small_weights)(torch.from_numpy(image[None, None])).numpy()[0, 0]
    assert pearson(pred, ref) >= 0.999


def test_benchmark_has_a_torch_row(small_artifact, user_cache):
    args = ["benchmark", str(small_artifact), "--no-energy", "--repeats", "1", "--warmup", "0", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["rows"]}
    row = rows["torch:fp16"]
    assert row["precision"].startswith("fp16 ") and "(cpu)" in row["precision"]
    assert row["pearson"] >= 0.999


def test_load_module_gives_a_torch_module_a_tool_can_call(small_artifact, small_weights, user_cache):
    import ebai.torch

    net = ebai.torch.load_module(small_artifact, precision="fp16", device="cpu")
    assert isinstance(net, torch.nn.Module) and "precision='fp16'" in repr(net)
    x = torch.from_numpy(np.stack(smooth_images(3, (32, 32), seed=9))[:, None])
    y = net(x)
    assert y.dtype == x.dtype and y.shape == (3, 1, 32, 32) and y.device == x.device
    with torch.inference_mode():
        ref = original_model(small_weights)(x)
    assert pearson(y.numpy(), ref.numpy()) >= 0.999
    net.close()
    with pytest.raises(InputError, match="knows precisions"):
        ebai.torch.load_module(small_artifact, precision="half")
    with pytest.raises(ArtifactError, match="holds no target torch:bf16"):
        ebai.torch.load_module(small_artifact, precision="bf16")


def test_load_module_works_inside_monai_sliding_window_inference(small_artifact, small_weights, user_cache):
    inferers = pytest.importorskip("monai.inferers")
    import ebai.torch

    net = ebai.torch.load_module(small_artifact, device="cpu", tune=False)
    image = torch.from_numpy(smooth_images(1, (64, 80), seed=4)[0])[None, None]
    out = inferers.sliding_window_inference(image, (32, 32), 4, net, overlap=0.25)
    with torch.inference_mode():
        ref = inferers.sliding_window_inference(image, (32, 32), 4, original_model(small_weights), overlap=0.25)
    assert out.shape == image.shape and pearson(out.numpy(), ref.numpy()) >= 0.999
