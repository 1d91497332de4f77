"""bioimage.io packages in and out: reading (0.4 and 0.5), processing as bioimageio.core does, bad packages,
and the CLI round trip ``ebai compress --bioimageio`` -> ``ebai export --bioimageio`` for torchscript, onnx and
pytorch_state_dict weights, each exported package checked with bioimageio.core's ``test_model``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
yaml = pytest.importorskip("yaml")

from click.testing import CliRunner  # noqa: E402

from ebai.adapters import BioImageIOAdapter, load_bioimageio  # noqa: E402
from ebai.core.cli import cli  # noqa: E402
from ebai.core.errors import InputError  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "ebai_bioimageio_packages", Path(__file__).parent / "fixtures" / "bioimageio_packages.py"
)
bp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bp)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bioimageio")
    return {
        "state": bp.tiny_package(root, "pytorch_state_dict"),
        "state_zip": bp.tiny_package(root, "pytorch_state_dict", zip_it=True),
        "torchscript": bp.tiny_package(root, "torchscript", axes="byxc", zip_it=True),
        "onnx": bp.tiny_package(root, "onnx", zip_it=True),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(4):
        np.save(folder / f"image{i}.npy", bp.smooth((96, 96), 100 + i))
    return folder


def _predict_like_bioimageio_core(adapter: BioImageIOAdapter, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = adapter.load_module()(torch.from_numpy(adapter.preprocess(x)[np.newaxis])).numpy()[0]
    return adapter.postprocess(out)


@pytest.mark.parametrize("which", ["state", "state_zip", "torchscript", "onnx"])
def test_package_network_and_processing_reproduce_its_test_output(packages, which):
    adapter = load_bioimageio(packages[which], tile=(64, 64))
    assert adapter.input_spec.axes == "bcyx" and adapter.input_spec.channels == 1
    assert adapter.output_spec.channels == 1
    x, y = adapter.test_tensors()
    assert x.shape == (1, 64, 64)
    np.testing.assert_allclose(_predict_like_bioimageio_core(adapter, x), y, atol=1e-4, rtol=1e-4)
    # bioimageio.core's own preprocessing gives the same network input
    from bioimageio.core import Sample, Tensor
    from bioimageio.core.proc_setup import setup_pre_and_postprocessing

    descr = adapter.descr
    ids = [str(a.id) for a in descr.inputs[0].axes]
    raw = np.transpose(x[np.newaxis], ["bcyx".index(a) for a in adapter.in_axes])
    sample = Sample(members={descr.inputs[0].id: Tensor.from_numpy(raw, dims=ids)}, stat={}, id=None)
    for op in setup_pre_and_postprocessing(descr, ()).pre:
        op(sample)
    want = sample.members[descr.inputs[0].id].data.transpose(*ids).values
    want = np.transpose(want, [adapter.in_axes.index(a) for a in "bcyx"])[0]
    np.testing.assert_array_equal(adapter.preprocess(x), want)


def test_tile_is_the_smallest_valid_size_at_or_above_the_default(packages):
    adapter = load_bioimageio(packages["state"])
    assert adapter.input_spec.tile == (128, 128)  # min 16 + n*16 reaching the 2D default 128
    assert adapter.input_spec.divisor == 16
    with pytest.raises(InputError, match=r"inputs\[0\]\.axes\[2\]\.size allows 16 \+ n\*16, not 60"):
        load_bioimageio(packages["state"], tile=(60, 64))
    assert load_bioimageio(packages["state"], tile="48,80").input_spec.tile == (48, 80)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_format_04_package_with_halo_is_read(packages, tmp_path):
    folder = tmp_path / "v04"
    shutil.copytree(packages["state"], folder)
    for name in ("rdf.yaml", "bioimageio.yaml"):
        (folder / name).unlink(missing_ok=True)
    x = np.load(folder / "test_input.npy")
    rdf = {
        "format_version": "0.4.10",
        "type": "model",
        "name": "tiny zero four",
        "description": "A 0.4 package for ebai's tests.",
        "authors": [{"name": "ebai tests"}],
        "cite": [{"text": "ebai", "doi": "10.1038/s41592-024-02244-9"}],
        "license": "MIT",
        "documentation": "README.md",
        "timestamp": "2024-01-01T00:00:00",
        "tags": ["test"],
        "inputs": [
            {
                "name": "raw",
                "axes": "bcyx",
                "data_type": "float32",
                "data_range": [float("-inf"), float("inf")],
                "shape": {"min": [1, 1, 32, 32], "step": [0, 0, 16, 16]},
                "preprocessing": [{"name": "zero_mean_unit_variance", "kwargs": {"mode": "per_sample", "axes": "yx"}}],
            }
        ],
        "outputs": [
            {
                "name": "out",
                "axes": "bcyx",
                "data_type": "float32",
                "data_range": [float("-inf"), float("inf")],
                "shape": {"reference_tensor": "raw", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]},
                "halo": [0, 0, 8, 8],
            }
        ],
        "test_inputs": ["test_input.npy"],
        "test_outputs": ["test_output.npy"],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "sha256": _sha(folder / "weights.pt"),
                "architecture": "tiny_arch.py:TinyNet",
                "architecture_sha256": _sha(folder / "tiny_arch.py"),
                "kwargs": {"channels": 16},
            }
        },
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    adapter = load_bioimageio(folder, tile=(32, 32))
    assert adapter.halo == 8 and adapter.input_spec.overlap == 0.5  # 2 * halo / tile
    assert adapter.descr.format_version.startswith("0.5")
    np.testing.assert_allclose(
        _predict_like_bioimageio_core(adapter, x[0]), np.load(folder / "test_output.npy")[0], atol=1e-4
    )


def _rdf(folder: Path) -> tuple[Path, dict]:
    path = next(p for p in (folder / "rdf.yaml", folder / "bioimageio.yaml") if p.exists())
    return path, yaml.safe_load(path.read_text())


def _broken(kind: str, state: Path, tmp_path: Path) -> Path:
    folder = tmp_path / kind
    if kind == "time axes":
        folder.mkdir()
        net = bp.tiny_net(folder)
        x = bp.smooth((1, 1, 32), 3)
        descr = bp.describe(folder, bp.state_dict_weights(folder, net), axes="bct", test_input=x, test_output=x)
        return bp.save_folder(descr, tmp_path / "time-package")
    shutil.copytree(state, folder)
    path, rdf = _rdf(folder)
    weights = rdf["weights"]["pytorch_state_dict"]
    if kind == "missing weights":
        (folder / weights["source"]).unlink()
    elif kind == "sha256 mismatch":
        with open(folder / weights["source"], "ab") as f:
            f.write(b"\0")
    elif kind == "unknown weight format only":
        shutil.copyfile(folder / weights["source"], folder / "weights.h5")
        rdf["weights"] = {
            "keras_hdf5": {"source": "weights.h5", "sha256": _sha(folder / "weights.h5"), "tensorflow_version": "2.15"}
        }
    elif kind == "broken architecture":
        weights["architecture"]["callable"] = "NoSuchNet"
    path.write_text(yaml.safe_dump(rdf))
    return folder


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("missing weights", "weights.pytorch_state_dict.source"),
        ("sha256 mismatch", "weights.pytorch_state_dict"),
        ("unknown weight format only", "weights: the package has only keras_hdf5"),
        ("time axes", "inputs[0].axes[2] is a time axis"),
        ("broken architecture", "weights.pytorch_state_dict.architecture 'NoSuchNet'"),
    ],
)
def test_bad_packages_give_one_line_naming_the_field(packages, tmp_path, kind, field):
    package = _broken(kind, packages["state"], tmp_path)
    with pytest.raises(InputError) as info:
        load_bioimageio(package)
    message = str(info.value)
    assert field in message
    assert "\n" not in message
    if kind == "sha256 mismatch":
        assert "sha" in message.lower()


def _compress(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["compress", *args], catch_exceptions=False)
    return result.exit_code, result.output


def _export_with_qdq_and_test(artifact: Path, images: Path, zip_path: Path) -> Path:
    """``ebai export --bioimageio --data images/`` (int8 QDQ calibrated on them), then bioimageio.core's ``test_model``."""
    from bioimageio.core import test_model

    export = ["export", str(artifact), "--bioimageio", "--no-benchmark", "--data", str(images), "-o", str(zip_path)]
    result = CliRunner().invoke(cli, export)
    assert result.exit_code == 0, result.output
    summary = test_model(zip_path)
    assert summary.status == "passed", [e.msg for d in summary.details for e in d.errors]
    return zip_path


@pytest.mark.parametrize("which", ["torchscript", "onnx"])
def test_fixed_graph_packages_are_quantized_and_exported_and_refuse_pruning(packages, images, tmp_path, which):
    import zipfile

    package = str(packages[which])
    common = ["--bioimageio", package, "--data", str(images), "--tile", "64,64", "--int8"]
    code, out = _compress(*common, "--prune", "l1:0.5", "-o", str(tmp_path / "refused.ebai"))
    assert code != 0
    line = out.strip().splitlines()[-1]
    assert f"{which} weights hold a fixed graph" in line and "--prune none" in line
    assert not (tmp_path / "refused.ebai").exists()

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "prune: {method: none}\ncalibration: {samples: 4}\nfidelity: {held_out: 1, tiles: 2, threshold: 0.95}\n"
    )
    code, out = _compress(*common, "--recipe", str(recipe), "-o", str(tmp_path / "m.ebai"))
    assert code == 0, out
    assert "reproducibility tolerance: relative 0.001, absolute 0.001, 100 mismatched per million (stated)" in out
    manifest = json.loads((tmp_path / "m.ebai" / "manifest.json").read_text())
    target = manifest["targets"][0]
    assert target["precision"] == "int8" and target["fidelity"]["passed"]
    assert target["calibration"]["held_out_tiles"] == 3  # 2 from the user's held-out image + the package's test input

    zip_path = _export_with_qdq_and_test(tmp_path / "m.ebai", images, tmp_path / "exported.zip")
    # int8 is far outside the stated 1e-3 tolerance: the QDQ network is calibrated but left out, and the page says why
    names = zipfile.ZipFile(zip_path).namelist()
    assert "ebai_int8_qdq.onnx" not in names
    doc = zipfile.ZipFile(zip_path).read("README.md").decode()
    assert "the int8 QDQ network (ONNX Runtime's quantizer, calibrated on 16 tiles" in doc and "is not included" in doc


def test_int8_qdq_network_is_attached_where_onnx_runtime_runs_it_within_the_stated_tolerance(images, tmp_path):
    import zipfile

    import onnx
    import onnxruntime as ort

    from ebai.core.metrics import pearson

    # a package stating the largest tolerance bioimage.io accepts (1% relative + 1% of the test output's
    # maximum, 0.5% of elements beyond it), which int8 meets on this network; at the default (1e-3) it
    # does not (test above)
    package = bp.tiny_package(tmp_path, "onnx", zip_it=True, tolerance="largest")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("calibration: {samples: 4}\nfidelity: {held_out: 1, tiles: 2, threshold: 0.95}\n")
    args = ["--bioimageio", str(package), "--data", str(images), "--tile", "64,64", "--int8", "--prune", "none"]
    code, out = _compress(*args, "--recipe", str(recipe), "-o", str(tmp_path / "m.ebai"))
    assert code == 0, out
    zip_path = _export_with_qdq_and_test(tmp_path / "m.ebai", images, tmp_path / "exported.zip")
    with zipfile.ZipFile(zip_path) as z:
        assert "attachment `ebai_int8_qdq.onnx`: the int8 QDQ network" in z.read("README.md").decode()
        z.extract("ebai_int8_qdq.onnx", tmp_path)
        z.extract("weights.onnx", tmp_path)
        x = np.load(z.open("test_input.npy"))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ebai_int8_qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    norm = ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)  # the package's zero-mean unit-variance
    sessions = [
        ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
        for f in ("ebai_int8_qdq.onnx", "weights.onnx")
    ]
    outs = [s.run(None, {s.get_inputs()[0].name: norm})[0] for s in sessions]
    assert pearson(outs[0], outs[1]) >= 0.99


def test_state_dict_package_is_pruned_quantized_exported_with_benchmark(packages, images, tmp_path):
    import zipfile

    from bioimageio.core import predict, test_model
    from bioimageio.spec import load_model_description

    from ebai.core.metrics import pearson

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("calibration: {samples: 4}\nfidelity: {held_out: 1, tiles: 2, threshold: 0.9}\n")
    code, out = _compress(
        "--bioimageio",
        str(packages["state_zip"]),
        "--data",
        str(images),
        "--tile",
        "64,64",
        "--prune",
        "l1:0.5",
        "--int8",
        "--steps",
        "30",
        "--recipe",
        str(recipe),
        "-o",
        str(tmp_path / "m.ebai"),
    )
    assert code == 0, out
    manifest = json.loads((tmp_path / "m.ebai" / "manifest.json").read_text())
    assert manifest["pruning"]["params_after"] < manifest["pruning"]["params_before"]
    zip_path = tmp_path / "exported.zip"
    result = CliRunner().invoke(
        cli,
        ["export", str(tmp_path / "m.ebai"), "--bioimageio", "--repeats", "2", "--trust-source", "-o", str(zip_path)],
    )
    assert result.exit_code == 0, result.output
    summary = test_model(zip_path)
    assert summary.status == "passed", [e.msg for d in summary.details for e in d.errors]
    descr = load_model_description(zip_path)
    assert str(descr.parent.id) == "ebai-test-model"
    # the ONNX weights take any size the original allowed (min 16 + n*16), not only the tile
    space = [a.size for a in descr.inputs[0].axes if a.type == "space"]
    assert [(s.min, s.step) for s in space] == [(16, 16), (16, 16)]
    x = bp.smooth((48, 80), 21)[np.newaxis, np.newaxis]
    ours, theirs = (
        next(iter(predict(model=d, inputs=x).members.values())).data.values
        for d in (descr, load_model_description(packages["state_zip"]))
    )
    assert ours.shape == theirs.shape == (1, 1, 48, 80)
    assert pearson(ours, theirs) >= 0.9  # the guard's threshold in the recipe above
    assert [a.name for a in descr.authors] == ["ebai tests"] and str(descr.license) == "MIT"
    assert descr.weights.onnx is not None and descr.weights.pytorch_state_dict is None
    names = zipfile.ZipFile(zip_path).namelist()
    assert "ebai_openvino_int8.xml" in names and "ebai_openvino_int8.bin" in names
    doc = zipfile.ZipFile(zip_path).read("README.md").decode()
    assert "## Validation" in doc and "## Benchmark" in doc and "## Recipe" in doc
    assert "the ONNX weights take any input size the axes allow (checked in ONNX Runtime at 16x16, 80x80" in doc
    bench = doc.split("## Benchmark")[1]
    assert "precision" in bench and "J/image" in bench and "pytorch eager (original model)" in bench
    # the int8 lowering keeps a layer in int8 only where that is faster here: a tiny net may keep none
    assert "openvino:int8" in bench and (
        "int8 (other layers" in bench or "int8 target with no layer quantized" in bench
    )
    # exporting again without --overwrite is refused
    again = CliRunner().invoke(cli, ["export", str(tmp_path / "m.ebai"), "--bioimageio", "-o", str(zip_path)])
    assert again.exit_code != 0 and "exists" in again.output
