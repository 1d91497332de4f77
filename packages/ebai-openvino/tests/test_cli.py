"""``ebai run`` and ``ebai benchmark`` on artifacts made by the OpenVINO backend."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from openvino_nets import PlainUNet, build_artifact, pearson, run_torch, settle, smooth_noise, torch

from ebai.core import InputSpec
from ebai.core.cli import cli
from ebai.core.tiling import predict_tiled


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def torch_tiled(net, image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The core tiler driving torch directly: what ``ebai run`` must reproduce."""
    return predict_tiled(
        image, lambda b: run_torch(net, b), spec.tile, overlap=spec.overlap, divisor=spec.divisor, batch_size=4
    )


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory) -> Path:
    """A 3D image (ZYX) larger than the 16x32x32 tile along every axis."""
    folder = tmp_path_factory.mktemp("inputs")
    image = smooth_noise((1, 1, 40, 72, 60), 7)[0, 0]
    tifffile.imwrite(folder / "stack.tif", image)
    return folder / "stack.tif"


def test_run_matches_torch_sliding_window(plain_artifact, plain_unet, spec_3d, big_tiff, tmp_path) -> None:
    image = tifffile.imread(big_tiff)
    expected = torch_tiled(plain_unet, image[None], spec_3d)[0]
    out = tmp_path / "f32"
    result = invoke(
        "run", plain_artifact, big_tiff, "-o", out, "--target", "openvino:fp32", "-O", "inference_precision=f32"
    )
    assert result.exit_code == 0, result.output
    got = tifffile.imread(out / "stack.tif")
    assert got.shape == image.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # int8 at OpenVINO's default precision: same tiling, int8 fidelity
    result = invoke(
        "run", plain_artifact, big_tiff, "-o", tmp_path / "int8", "--target", "openvino:int8", "--batch-size", "3"
    )
    assert result.exit_code == 0, result.output
    assert "openvino:int8" in result.output
    assert pearson(tifffile.imread(tmp_path / "int8" / "stack.tif"), expected) >= 0.99


def test_run_skips_existing_and_overwrites_on_request(plain_artifact, big_tiff, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    tifffile.imwrite(out / "stack.tif", np.zeros((2, 2), np.float32))
    result = invoke("run", plain_artifact, big_tiff.parent, "-o", out, "--target", "openvino:fp32")
    assert result.exit_code == 0 and "already exist" in result.output
    assert tifffile.imread(out / "stack.tif").shape == (2, 2)
    result = invoke("run", plain_artifact, big_tiff.parent, "-o", out, "--target", "openvino:fp32", "--overwrite")
    assert result.exit_code == 0, result.output
    assert tifffile.imread(out / "stack.tif").shape == (40, 72, 60)
    assert sorted(p.name for p in out.iterdir()) == ["stack.tif"]  # no temporary files left


@pytest.fixture(scope="module")
def artifact_2d(tmp_path_factory, onnx_file):
    """A 2D net with 2 input channels and 3 output channels, fp32 only, zscore normalisation."""
    from ebai.core import Normalization

    torch.manual_seed(3)
    net = settle(PlainUNet(channels=(8, 16), in_channels=2, out_channels=3, dims=2), (4, 2, 32, 32))
    spec = InputSpec("bcyx", 2, (32, 32), divisor=2, overlap=0.25, normalization=Normalization("zscore"))
    onnx_path = onnx_file(net, "twod", smooth_noise((1, 2, 32, 32), 1))
    path = tmp_path_factory.mktemp("art2d") / "twod.ebai"
    return build_artifact(path, onnx_path, spec, [("fp32", {})], [], out_channels=3), net, spec


def test_run_reads_tiff_png_npy_with_channels(artifact_2d, tmp_path) -> None:
    from PIL import Image

    artifact, net, spec = artifact_2d
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    cyx = (rng.random((2, 50, 41)) * 200).astype(np.uint8)
    tifffile.imwrite(inputs / "a.tif", cyx)  # channels first
    np.save(inputs / "b.npy", np.moveaxis(cyx, 0, -1).astype(np.float32))  # channels last
    Image.fromarray(np.moveaxis(cyx, 0, -1), mode="LA").save(inputs / "c.png")  # 2-channel PNG
    out = tmp_path / "out"
    result = invoke("run", artifact, inputs, "-o", out, "-O", "inference_precision=f32")
    assert result.exit_code == 0, result.output
    expected = torch_tiled(net, spec.normalization.apply(cyx.astype(np.float32)), spec)
    for name in ("a.tif", "b.tif", "c.tif"):
        got = tifffile.imread(out / name)
        assert got.shape == (3, 50, 41)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_run_refuses_clashing_names_and_bad_targets(artifact_2d, tmp_path) -> None:
    artifact = artifact_2d[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "x.npy", np.zeros((2, 32, 32), np.float32))
    tifffile.imwrite(inputs / "x.tif", np.zeros((2, 32, 32), np.float32))
    result = CliRunner().invoke(cli, ["run", str(artifact), str(inputs), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "would both be written as 'x.tif'" in result.output
    result = CliRunner().invoke(
        cli, ["run", str(artifact), str(inputs / "x.npy"), "-o", str(tmp_path / "o"), "--target", "openvino:int8"]
    )
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "holds no target openvino:int8 (it holds: openvino:fp32)" in result.output
    assert not (tmp_path / "o").exists()


def test_run_applies_the_adapters_postprocessing(artifact_2d, tmp_path, monkeypatch) -> None:
    import ebai.core.commands.run as run_module

    class Thresholds:
        seen: list[tuple[int, ...]] = []

        def preprocess(self, sample: np.ndarray) -> np.ndarray:
            self.seen.append(sample.shape)
            return np.zeros_like(sample, dtype=np.float32)  # the engine must see this, not the image

        def postprocess(self, output: np.ndarray) -> np.ndarray:
            return (output.argmax(axis=0) + 1).astype(np.uint16)

    monkeypatch.setattr(run_module, "load_adapter", lambda source: (Thresholds(), ""))
    image = tmp_path / "img.npy"
    np.save(image, smooth_noise((1, 2, 40, 40), 5)[0])
    result = invoke("run", artifact_2d[0], image, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert Thresholds.seen == [(2, 40, 40)]
    labels = tifffile.imread(tmp_path / "out" / "img.tif")
    assert labels.dtype == np.uint16 and labels.shape == (40, 40) and set(np.unique(labels)) <= {1, 2, 3}
    other = tmp_path / "other.npy"
    np.save(other, smooth_noise((1, 2, 40, 40), 9)[0])
    raw = invoke("run", artifact_2d[0], image, other, "-o", tmp_path / "raw", "--raw")
    assert raw.exit_code == 0, raw.output
    assert len(Thresholds.seen) == 3
    a, b = tifffile.imread(tmp_path / "raw" / "img.tif"), tifffile.imread(tmp_path / "raw" / "other.tif")
    assert a.dtype == np.float32 and a.shape == (3, 40, 40)
    np.testing.assert_array_equal(a, b)  # both images became zeros: the engine ran on preprocess's output


def test_run_warns_when_the_adapter_is_not_installed(plain_artifact, big_tiff, tmp_path) -> None:
    from ebai.core.artifact import MANIFEST
    from ebai.core.manifest import Manifest

    copy = tmp_path / "renamed.ebai"
    shutil.copytree(plain_artifact, copy)
    manifest = Manifest.from_dict(json.loads((copy / MANIFEST).read_text()))
    manifest = Manifest.from_dict({**manifest.to_dict(), "source": {"adapter": "no_such_tool", "config": {}}})
    (copy / MANIFEST).write_text(manifest.to_json())
    result = invoke("run", copy, big_tiff, "-o", tmp_path / "out", "--target", "openvino:fp32")
    assert result.exit_code == 0
    assert "adapter 'no_such_tool' is not installed here" in result.output and "raw model output" in result.output
    assert (tmp_path / "out" / "stack.tif").is_file()


def test_run_refuses_a_damaged_ir_in_one_line(plain_artifact, big_tiff, tmp_path) -> None:
    copy = tmp_path / "bad.ebai"
    shutil.copytree(plain_artifact, copy)
    (copy / "openvino-int8" / "model.xml").write_text("<net>", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", str(copy), str(big_tiff), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "model.xml" in result.output


def test_benchmark_json_names_every_precision(plain_artifact, big_tiff) -> None:
    # the centre tile of an image like the calibration data (the default synthetic input need not be)
    result = invoke(
        "benchmark", plain_artifact, "--json", "--repeats", "2", "--warmup", "1", "--no-energy", "--input", big_tiff
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == [
        "openvino f32 (reference.onnx)",
        "openvino default (reference.onnx)",
        "openvino:fp32",
        "openvino:int8",
    ]
    assert rows["openvino f32 (reference.onnx)"]["precision"].startswith("f32")
    assert rows["openvino:int8"]["precision"].startswith("int8")
    assert all(r["precision"] for r in data["rows"])
    assert data["baseline"] == "openvino f32 (reference.onnx)" and data["input"]["what"] == "centre tile of stack.tif"
    # speed-ups are paired round by round: 5 interleaved rounds by default, the baseline 1.0 exactly
    assert data["rounds"] == 5 and data["repeats"] == 2
    assert rows["openvino f32 (reference.onnx)"]["speedup"] == 1.0
    assert rows["openvino:fp32"]["pearson"] >= 0.999 and rows["openvino:int8"]["pearson"] >= 0.99
    for r in data["rows"]:
        assert 0 < r["median_s"] <= r["p95_s"] and r["images_per_s"] == pytest.approx(1 / r["median_s"])


def test_benchmark_against_torch_and_energy(plain_artifact, plain_unet, spec_3d, tmp_path) -> None:
    pytest.importorskip("ebai.adapters")
    import openvino_nets

    from ebai.adapters import TorchAdapter
    from ebai.core.artifact import MANIFEST
    from ebai.core.manifest import Manifest

    factory = tmp_path / "unet_factory.py"
    factory.write_text(
        Path(openvino_nets.__file__).read_text() + "\n\ndef build():\n    return PlainUNet()\n", encoding="utf-8"
    )
    weights = tmp_path / "unet.pt"
    torch.save(plain_unet.state_dict(), weights)
    adapter = TorchAdapter(
        f"{factory}:build", weights=weights, axes="bczyx", channels=1, tile=spec_3d.tile, divisor=4, out_channels=1
    )
    copy = tmp_path / "with_source.ebai"
    shutil.copytree(plain_artifact, copy)
    manifest = Manifest.from_dict(json.loads((copy / MANIFEST).read_text()))
    (copy / MANIFEST).write_text(Manifest.from_dict({**manifest.to_dict(), "source": adapter.describe()}).to_json())

    # the model the manifest names is code: it runs only with --trust-source, or when the user points at it
    refused = CliRunner().invoke(cli, ["benchmark", str(copy), "--against-torch", "--no-energy"])
    assert refused.exit_code == 1 and "would run code the artifact names" in refused.output
    result = invoke(
        "benchmark",
        copy,
        "--against-torch",
        "--torch-model",
        f"{factory}:build",
        "--weights",
        weights,
        "--json",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--no-energy",
        "--batch-size",
        "2",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["baseline"] == "pytorch eager (original model)" and data["rows"][0]["precision"] == "fp32"
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["openvino f32 (reference.onnx)"]["pearson"] >= 0.9999
    assert data["input"]["shape"] == [2, 1, *spec_3d.tile]

    result = invoke("benchmark", copy, "--repeats", "1", "--warmup", "0", "--energy", "--energy-seconds", "0.2")
    assert result.exit_code == 0, result.output
    assert "J/image" in result.output and ("estimated" in result.output or "measured" in result.output)
    for name in ("openvino f32 (reference.onnx)", "openvino:int8"):
        assert name in result.output


def test_benchmark_asks_for_the_model_when_the_artifact_names_none(plain_artifact) -> None:
    result = CliRunner().invoke(
        cli, ["benchmark", str(plain_artifact), "--against-torch", "--repeats", "1", "--warmup", "0", "--no-energy"]
    )
    assert result.exit_code == 1
    assert "the artifact names no adapter: pass --torch-model path/to/file.py:factory" in result.output


def test_benchmark_without_codecarbon_says_energy_is_not_measured(plain_artifact, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # as if ebai-core was installed without [energy]
    result = invoke("benchmark", plain_artifact, "--repeats", "1", "--warmup", "0", "--energy")
    assert result.exit_code == 0, result.output
    assert "note: energy not measured: pip install 'ebai-core[energy]'" in result.output
    assert result.output.count("pip install 'ebai-core[energy]'") == 1  # one clear line, not one per row
    table = result.output.split("note:")[0]
    assert table.count("not measured") == 4  # the energy cell of each row


def test_benchmark_profile_shows_where_each_rows_time_goes(plain_artifact) -> None:
    args = ("benchmark", plain_artifact, "--repeats", "1", "--warmup", "0", "--no-energy", "--profile")
    data = json.loads(invoke(*args, "--profile-calls", "2", "--json").stdout)
    assert data["profile_calls"] == 2 and list(data["profiles"]) == [r["name"] for r in data["rows"]]
    int8 = data["profiles"]["openvino:int8"]
    default = data["profiles"]["openvino default (reference.onnx)"]
    f32 = data["profiles"]["openvino f32 (reference.onnx)"]
    assert any(g["layer_type"] == "Convolution" and g["precision"] == "i8" for g in int8["groups"])
    assert {g["precision"] for g in f32["groups"] if g["layer_type"] == "Convolution"} == {"f32"}
    assert not any(g["precision"] == "i8" for g in default["groups"])
    for profile in data["profiles"].values():
        assert profile["total_ms"] == pytest.approx(sum(g["ms"] for g in profile["groups"]))
        assert all(g["layers"] >= 1 and g["kernels"] for g in profile["groups"])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = result.output.split("per-layer profile")[1].splitlines()
    head = lines[1]
    assert head.startswith("layer type") and "openvino:int8 ms (%)" in head and "openvino:fp32 ms (%)" in head
    assert any(line.startswith("Convolution") and " i8 " in line for line in lines)
    assert any(line.startswith("total") for line in lines)
