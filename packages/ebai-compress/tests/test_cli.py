from __future__ import annotations

from pathlib import Path

import compress_nets as nets
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compress_backends import OrtBackend

from ebai.compress import _pipeline
from ebai.core.cli import cli
from ebai.core.plugins import get_backend as real_get_backend

pytest.importorskip("onnxruntime")
tifffile = pytest.importorskip("tifffile")

NETS = str(Path(__file__).with_name("compress_nets.py"))


@pytest.fixture
def ort_backend(monkeypatch):
    """Serve the test backend as the installed backend named 'ort'."""
    backend = OrtBackend()

    def lookup(name):
        return backend if name == "ort" else real_get_backend(name)

    monkeypatch.setattr(_pipeline, "get_backend", lookup)
    return backend


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = nets.settle_batchnorm(nets.small2d(), (2, 1, 32, 32))
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


def write_images(folder: Path, images) -> Path:
    folder.mkdir()
    for i, img in enumerate(images):
        if i % 2:
            tifffile.imwrite(folder / f"img{i}.tif", img, photometric="minisblack")
        else:
            np.save(folder / f"img{i}.npy", img)
    return folder


def run(*args):
    return CliRunner().invoke(cli, ["compress", *map(str, args)], catch_exceptions=False)


def model_args(weights):
    return [f"{NETS}:small2d", "--weights", weights, "--axes", "bcyx", "--channels", 1, "--tile", "32,32"]


def test_cli_compresses_and_prints_a_summary(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", [img[0] for img in images2d])  # plain YX images
    out = tmp_path / "small.ebai"
    result = run(
        *model_args(weights),
        "--normalize",
        "percentile",
        "--data",
        data,
        "--prune",
        "l1:0.5",
        "--steps",
        3,
        "--target",
        "ort",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "MACs" in result.output and "parameters" in result.output and "ort:fp32" in result.output
    assert "distillation: 3 steps" in result.output
    from ebai.core import Artifact

    manifest = Artifact.open(out).manifest
    assert manifest.pruning["method"] == "l1" and manifest.pruning["ratio"] == 0.5
    assert manifest.source["adapter"] == "torch" and manifest.source["config"]["weights"] == str(weights.resolve())
    assert manifest.input.normalization.kind == "percentile"
    assert ort_backend.lowered and ort_backend.lowered[0]["calibration"] == 32


def test_cli_recipe_file_and_options(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'targets = ["ort"]\n[prune]\nmethod = "none"\n[calibration]\nsamples = 3\n[export]\nexporter = "torchscript"\n'
    )
    result = run(*model_args(weights), "--data", data, "--recipe", recipe, "-o", tmp_path / "m.ebai")
    assert result.exit_code == 0, result.output
    assert "pruning: none" in result.output and ort_backend.lowered[0]["calibration"] == 3


def test_cli_prune_auto_searches_the_ratio_for_min_fidelity(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    out = tmp_path / "auto.ebai"
    args = ["--prune", "auto", "--min-fidelity", 0.5, "--budget-minutes", 5, "--steps", 3, "--target", "ort"]
    result = run(*model_args(weights), "--data", data, *args, "-o", out)
    assert result.exit_code == 0, result.output
    from ebai.core import Artifact

    pruning = Artifact.open(out).manifest.pruning
    assert pruning["search"]["target"] == 0.5 and pruning["search"]["probes"][0]["ratio"] == 0.5
    assert f"pruning search: l1 at ratio {pruning['ratio']:g} is the largest reaching 0.5" in result.output


def test_cli_prune_spare_keeps_the_worst_trades_whole_and_says_which(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    out = tmp_path / "spare.ebai"
    args = ["--prune", "l1:0.5", "--prune-spare", "0.5", "--steps", 2, "--min-fidelity", -1, "--target", "ort"]
    result = run(*model_args(weights), "--data", data, *args, "-o", out)
    assert result.exit_code == 0, result.output
    from ebai.core import Artifact

    sparing = Artifact.open(out).manifest.pruning["sparing"]
    assert sparing["share"] == 0.5 and sparing["backend"] == "ort"
    line = next(line for line in result.output.splitlines() if line.startswith("spared whole: "))
    assert f"({len(sparing['spared'])} of {len(sparing['layers'])} layers;" in line
    assert all(name in line for name in sparing["spared"])


@pytest.mark.slow
def test_cli_qat_makes_the_int8_network_by_quantization_aware_training(tmp_path, images2d, weights, ort_backend):
    pytest.importorskip("nncf")
    ort_backend.prequantized = True
    data = write_images(tmp_path / "data", images2d)
    out = tmp_path / "qat.ebai"
    args = ["--int8", "--qat", "--qat-steps", 2, "--target", "ort"]
    result = run(*model_args(weights), "--data", data, "--prune", "none", *args, "-o", out)
    assert result.exit_code == 0, result.output
    assert "int8      ort:int8: made by qat (2 steps" in result.output
    assert [e["dir"].name for e in ort_backend.lowered] == [".ort-default"]  # only the timing baseline: no PTQ try
    assert ort_backend.prequantized_calls == ["qat-mixed.onnx"]


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--prune", "l1:1.5"], "outside (0, 1)"),
        (["--prune", "l1:0"], "outside (0, 1)"),
        (["--prune", "taylor:0.5"], "unknown pruning method 'taylor'"),
        (["--prune", "l1:half"], "write METHOD:RATIO"),
        (["--target", "nosuch"], "'nosuch'"),
        (["--prune", "l1:0.5", "--prune-rounds", "0"], "prune.rounds must be a whole number of at least 1"),
        (["--prune", "l1:0.5", "--prune-spare", "1.5"], "prune.spare must be a share of the time saving in [0, 1)"),
        (["--prune-spare", "0.2"], "prune.spare needs a pruning ratio to spare layers from"),
        (
            ["--prune", "l1:0.5", "--distill-crop", "16,16,16"],
            "fine_tune.crop 16,16,16 has 3 axes but the model's tile",
        ),
    ],
    ids=[
        "ratio-above-1",
        "ratio-0",
        "method",
        "syntax",
        "backend",
        "rounds-0",
        "spare-1.5",
        "spare-alone",
        "crop-axes",
    ],
)
def test_cli_bad_options_give_one_line_and_write_nothing(tmp_path, images2d, weights, ort_backend, extra, expected):
    data = write_images(tmp_path / "data", images2d)
    out = tmp_path / "m.ebai"
    result = run(*model_args(weights), "--data", data, "--target", "ort", *extra, "-o", out)
    assert result.exit_code == 1
    assert expected in error_line(result)
    assert not out.exists()


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ([np.zeros((40, 40), np.float32)] * 2, "needs at least 3"),
        ([np.zeros((3, 40, 40), np.float32)] * 4, "channel"),
        ([np.zeros((2, 8, 40, 40), np.float32)] * 4, "takes 2D images"),
    ],
    ids=["too-few", "channels", "dimensions"],
)
def test_cli_bad_data(tmp_path, weights, ort_backend, images, expected):
    data = write_images(tmp_path / "data", images)
    out = tmp_path / "m.ebai"
    result = run(*model_args(weights), "--data", data, "--target", "ort", "-o", out)
    assert result.exit_code == 1 and expected in error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "weights.pt"]


def test_cli_existing_output_needs_overwrite(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    out = tmp_path / "m.ebai"
    out.mkdir()
    result = run(*model_args(weights), "--data", data, "--target", "ort", "-o", out)
    assert result.exit_code == 1 and "--overwrite" in error_line(result)
    assert list(out.iterdir()) == []


def test_cli_model_that_cannot_be_exported(tmp_path, images2d, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    result = run(
        f"{NETS}:DataDependent",
        "--axes",
        "bcyx",
        "--channels",
        1,
        "--tile",
        "32,32",
        "--data",
        data,
        "--prune",
        "none",
        "--target",
        "ort",
        "-o",
        tmp_path / "m.ebai",
    )
    line = error_line(result)
    assert "'body.1' (Gate)" in line and "data-dependent control flow" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_cli_ctrl_c_leaves_nothing(tmp_path, images2d, weights, monkeypatch):
    monkeypatch.setattr(_pipeline, "get_backend", lambda name: OrtBackend(interrupt=True))
    data = write_images(tmp_path / "data", images2d)
    result = run(*model_args(weights), "--data", data, "--prune", "none", "--target", "ort", "-o", tmp_path / "m.ebai")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "weights.pt"]


def test_cli_model_needs_its_input_layout(tmp_path, images2d, weights):
    data = write_images(tmp_path / "data", images2d)
    result = run(f"{NETS}:small2d", "--weights", weights, "--data", data, "-o", tmp_path / "m.ebai")
    assert "needs --axes, --channels, --tile" in error_line(result)


def test_cli_adapter_by_name_with_config(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    config = tmp_path / "adapter.yaml"
    config.write_text(f"model: {NETS}:small2d\nweights: weights.pt\naxes: bcyx\nchannels: 1\ntile: [32, 32]\n")
    result = run(
        "--adapter",
        "torch",
        "--adapter-config",
        config,
        "--data",
        data,
        "--prune",
        "none",
        "--target",
        "ort",
        "-o",
        tmp_path / "m.ebai",
    )
    assert result.exit_code == 0, result.output
    from ebai.core import Artifact

    source = Artifact.open(tmp_path / "m.ebai").manifest.source
    assert source["adapter"] == "torch" and source["config"]["weights"] == str(weights.resolve())


def test_cli_adapter_config_with_overrides_keeps_its_relative_paths(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", images2d)
    config = tmp_path / "adapter.yaml"
    config.write_text(f"model: {NETS}:small2d\nweights: weights.pt\naxes: bcyx\nchannels: 1\ntile: [16, 16]\n")
    args = ("--adapter", "torch", "--adapter-config", config, "--tile", "32,32", "--data", data, "--prune", "none")
    result = run(*args, "--target", "ort", "-o", tmp_path / "m.ebai")
    assert result.exit_code == 0, result.output
    from ebai.core import Artifact

    source = Artifact.open(tmp_path / "m.ebai").manifest.source
    assert source["config"]["weights"] == str(weights.resolve()) and list(source["config"]["tile"]) == [32, 32]


def test_cli_adapter_config_errors_are_one_line(tmp_path, images2d):
    data = write_images(tmp_path / "data", images2d)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tile: [8\n")
    for config, match in ((bad, "not valid YAML"), (tmp_path / "missing.yaml", "does not exist")):
        result = run(
            "--adapter",
            "torch",
            "--adapter-config",
            config,
            "--tile",
            "32,32",
            "--data",
            data,
            "-o",
            tmp_path / "m.ebai",
        )
        assert result.exit_code == 1 and match in error_line(result)


def test_cli_int8_alone_keeps_every_channel_and_says_what_it_gained(tmp_path, images2d, weights, ort_backend):
    onnx = pytest.importorskip("onnx")
    data = write_images(tmp_path / "data", images2d)
    out = tmp_path / "m.ebai"
    result = run(*model_args(weights), "--data", data, "--int8", "--target", "ort", "-o", out)
    assert result.exit_code == 0, result.output
    assert "pruning: none" in result.output and "distillation" not in result.output
    assert "speed     ort:int8: " in result.output and "vs ort default (fp32)" in result.output
    from ebai.core import Artifact

    manifest = Artifact.open(out).manifest
    assert manifest.pruning is None and manifest.fine_tuning is None
    assert manifest.targets[0].fidelity.threshold == 0.99
    # the exported network has the original's convolutions, channel for channel
    model = nets.small2d()
    model.load_state_dict(torch.load(weights, weights_only=True))
    conv_shapes = sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    graph = onnx.load(str(out / "reference.onnx")).graph
    exported = sorted(tuple(i.dims) for i in graph.initializer if len(i.dims) == 4)
    assert exported == conv_shapes


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_an_image_names_the_file(tmp_path, images2d, weights, ort_backend, bad):
    imgs = [img[0].copy() for img in images2d]
    imgs[1][2, 3] = bad  # img1.tif
    data = write_images(tmp_path / "data", imgs)
    result = run(*model_args(weights), "--data", data, "--prune", "none", "--target", "ort", "-o", tmp_path / "m.ebai")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "img1.tif" in result.output and "1 NaN/Inf value(s)" in result.output
    assert not (tmp_path / "m.ebai").exists()


def test_huge_tile_and_unwritable_output_are_refused_before_any_work(tmp_path, images2d, weights, ort_backend):
    data = write_images(tmp_path / "data", [img[0] for img in images2d])
    args = [f"{NETS}:small2d", "--weights", weights, "--axes", "bcyx", "--channels", 1, "--data", data]
    result = run(*args, "--tile", "10000000,10000000", "--target", "ort", "-o", tmp_path / "m.ebai")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "give a smaller --tile" in result.output and "TiB of float32 input per tile" in result.output
    (tmp_path / "blocked").write_text("a file", encoding="utf-8")
    result = run(*args, "--tile", "32,32", "--target", "ort", "-o", tmp_path / "blocked" / "m.ebai")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "is a file" in result.output
