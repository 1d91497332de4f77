"""A received artifact is data and the user's images are sacred: ``ebai run`` / ``ebai benchmark`` end to end.

The artifacts here hold a small numpy "model" (``numpy_backend.py``), so every test runs the real
CLI, artifact checks, tiler and writer without OpenVINO. The code-execution routes use a manifest
source that would create a marker file if anything it names were ever imported or called.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from ebai.core.artifact import MANIFEST, write_artifact
from ebai.core.cli import cli
from ebai.core.manifest import DIGEST_KEY, Manifest, TargetRecord
from ebai.core.plugins import ADAPTERS, BACKENDS, CLI
from ebai.core.search_curve import curve_lines, metric_name, search_record
from ebai.core.sparing_record import sparing_lines, sparing_record
from ebai.core.specs import InputSpec, Normalization, OutputSpec

HERE = Path(__file__).parent


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def plugins(fake_entry_points, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    table = {
        BACKENDS: {"numpy": "numpy_backend:spec"},
        CLI: {
            "run": "ebai.core.commands.run:run",
            "benchmark": "ebai.core.commands.benchmark:benchmark",
            "clean": "ebai.core.commands.clean:clean",
        },
    }
    try:
        import ebai.adapters  # noqa: F401

        table[ADAPTERS] = {"torch": "ebai.adapters._plugins:torch"}
    except ImportError:
        pass
    fake_entry_points(table)


def make_artifact(folder: Path, *, source: dict | None = None, normalization: str = "none") -> Path:
    params = folder / "params.json"
    folder.mkdir(parents=True, exist_ok=True)
    params.write_text(json.dumps({"scale": 2.0, "shift": 1.0}), encoding="utf-8")
    spec = InputSpec(axes="bcyx", channels=1, tile=(16, 16), normalization=Normalization(normalization))
    manifest = Manifest(
        name="twice",
        input=spec,
        output=OutputSpec(axes="bcyx", channels=1),
        targets=(
            TargetRecord(
                backend="numpy", precision="fp32", directory="numpy-fp32", files=("params.json",), entry="params.json"
            ),
        ),
        source=source or {},
    )
    path = folder / "twice.ebai"
    write_artifact(path, manifest, {"numpy-fp32/params.json": params})
    return path


def edit_manifest(path: Path, rehash: bool, **changes: object) -> None:
    """Change manifest fields as an attacker would: with ``rehash`` the manifest's own digest is redone."""
    data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    data.update(changes)
    if rehash:
        text = Manifest.from_dict(data).to_json()
    else:
        text = json.dumps(data, indent=2)
    (path / MANIFEST).write_text(text, encoding="utf-8")


def images(folder: Path, count: int, shape: tuple[int, ...] = (20, 24)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        p = folder / f"img{i:02d}.tif"
        tifffile.imwrite(p, rng.random(shape).astype(np.float32))
        out.append(p)
    return out


def malicious_sources(marker: Path, cache_file: Path) -> list[dict]:
    """Sources that run code on import or call: a module function with arguments, and a factory file."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\ndef build():\n    import torch\n"
        "    return torch.nn.Identity()\n",
        encoding="utf-8",
    )
    base = {"axes": "bcyx", "channels": 1, "tile": [16, 16], "out_channels": 1}
    return [
        {
            "adapter": "torch",
            "config": {**base, "model": "subprocess:run", "model_kwargs": {"args": ["touch", str(marker)]}},
        },
        {"adapter": "torch", "config": {**base, "model": f"{cache_file}:build"}},
    ]


# ------------------------------------------------------------------------------ code execution

ROUTES = pytest.mark.parametrize("which", [0, 1], ids=["module-function", "factory-file-in-unhashed-cache"])


def tampered(tmp_path: Path, which: int, rehash: bool) -> tuple[Path, Path]:
    """An artifact whose manifest source names code that would touch the returned marker."""
    art = make_artifact(tmp_path / "a")
    marker = tmp_path / "marker"
    edit_manifest(art, rehash=rehash, source=malicious_sources(marker, art / "cache" / "evil.py")[which])
    return art, marker


@ROUTES
def test_edited_manifest_without_rehash_is_refused(plugins, tmp_path: Path, which: int) -> None:
    art, marker = tampered(tmp_path, which, rehash=False)
    for args in (
        ("benchmark", art, "--against-torch", "--trust-source", "--no-energy", "--repeats", "1"),
        ("run", art, images(tmp_path / "in", 1)[0], "-o", tmp_path / "out"),
    ):
        result = invoke(*args)
        assert result.exit_code == 1
        assert "does not match its own sha256" in one_error_line(result.output)
    assert not marker.exists()


@ROUTES
def test_rehashed_manifest_code_is_never_run_without_trust(plugins, tmp_path: Path, which: int) -> None:
    art, marker = tampered(tmp_path, which, rehash=True)
    result = invoke("benchmark", art, "--against-torch", "--no-energy", "--repeats", "1", "--warmup", "0")
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert "would run code the artifact names" in line and "--torch-model" in line and "--trust-source" in line
    # the artifact alone still runs and benchmarks fully
    result = invoke("run", art, images(tmp_path / "in", 2)[0].parent, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img00.tif", "img01.tif"]
    result = invoke("benchmark", art, "--no-energy", "--repeats", "1", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "numpy:fp32" in result.output
    assert not marker.exists()


def test_trust_source_prints_what_runs_then_runs_it(plugins, tmp_path: Path) -> None:
    """The gate is what stops the code: with --trust-source the factory does run, after being named."""
    pytest.importorskip("torch")
    pytest.importorskip("ebai.adapters")
    art = make_artifact(tmp_path / "a")
    marker = tmp_path / "marker"
    source = malicious_sources(marker, tmp_path / "factory" / "net.py")[1]
    edit_manifest(art, rehash=True, source=source)
    result = invoke("benchmark", art, "--against-torch", "--trust-source", "--no-energy", "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert (
        f"--trust-source: building the PyTorch model as the artifact says, running: {json.dumps(source, sort_keys=True)}"
        in result.output
    )
    assert marker.exists()


def test_torch_row_from_the_users_own_model(plugins, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("ebai.adapters")
    art = make_artifact(tmp_path / "a")
    net = tmp_path / "mine.py"
    net.write_text("import torch\n\ndef build():\n    return torch.nn.Identity()\n", encoding="utf-8")
    result = invoke("benchmark", art, "--torch-model", f"{net}:build", "--no-energy", "--repeats", "1", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["name"] for r in rows] == ["pytorch eager (original model)", "numpy:fp32"]


@pytest.mark.parametrize(
    "directory", ["../other.ebai/numpy-fp32", "/tmp/elsewhere/numpy-fp32"], ids=["dot-dot", "absolute"]
)
def test_target_path_leaving_the_artifact_is_refused(plugins, tmp_path: Path, directory: str) -> None:
    art = make_artifact(tmp_path / "a")
    other = make_artifact(tmp_path / "b")  # a model that was never hashed into `art`
    shutil.move(other, art.parent / "other.ebai")
    data = json.loads((art / MANIFEST).read_text(encoding="utf-8"))
    target = {**data["targets"][0], "directory": directory}
    edit_manifest(art, rehash=True, targets=[target])
    result = invoke("run", art, images(tmp_path / "in", 1)[0], "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "not a path inside the artifact" in one_error_line(result.output)
    assert not (tmp_path / "out" / "img00.tif").exists()


def test_symbolic_link_out_of_the_artifact_is_refused(plugins, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"scale": 5.0, "shift": 0.0}), encoding="utf-8")
    params = art / "numpy-fp32" / "params.json"
    params.unlink()
    params.symlink_to(outside)
    result = invoke("run", art, images(tmp_path / "in", 1)[0], "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "leads outside the artifact" in one_error_line(result.output)


def test_manifest_digest_is_written_and_survives_reformatting(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    data = json.loads((art / MANIFEST).read_text(encoding="utf-8"))
    assert len(data[DIGEST_KEY]) == 64
    (art / MANIFEST).write_text(json.dumps(data, indent=None), encoding="utf-8")  # same content, other layout
    from ebai.core.artifact import Artifact

    Artifact.open(art)


# ------------------------------------------------------------------------------- the user's data


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_image_is_never_replaced(plugins, tmp_path: Path, overwrite: bool) -> None:
    art = make_artifact(tmp_path / "a")
    inputs = images(tmp_path / "in", 3)
    before = [p.read_bytes() for p in inputs]
    args = ["run", art, tmp_path / "in", "-o", tmp_path / "in"] + (["--overwrite"] if overwrite else [])
    result = invoke(*args)
    assert result.exit_code == 1
    assert "would replace the input image" in one_error_line(result.output)
    assert [p.read_bytes() for p in inputs] == before
    # the same through another spelling of the folder
    result = invoke("run", art, inputs[0], "-o", tmp_path / "in" / ".." / "in", "--overwrite")
    assert result.exit_code == 1 and inputs[0].read_bytes() == before[0]
    # and through a hard link to the input where the prediction would go
    (tmp_path / "linked").mkdir()
    os.link(inputs[1], tmp_path / "linked" / inputs[1].name)
    result = invoke("run", art, inputs[1], "-o", tmp_path / "linked", "--overwrite")
    assert result.exit_code == 1 and "would replace the input image" in one_error_line(result.output)


def test_one_corrupt_tiff_among_ten(plugins, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    inputs = images(tmp_path / "in", 10, shape=(40, 40))
    data = inputs[4].read_bytes()
    inputs[4].write_bytes(data[: len(data) // 2])  # truncated
    result = invoke("run", art, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for p in inputs if p != inputs[4])
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "img04.tif" in failed[0] and "damaged or truncated" in failed[0]
    assert "1 of 10 image(s) were not predicted" in one_error_line(result.output)
    got = tifffile.imread(tmp_path / "out" / "img00.tif")
    np.testing.assert_allclose(got, tifffile.imread(inputs[0]) * 2 + 1, rtol=1e-5)


def test_empty_npy_and_garbage_tiff_are_one_line_each(plugins, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    images(tmp_path / "in", 1)
    (tmp_path / "in" / "empty.npy").write_bytes(b"")
    (tmp_path / "in" / "junk.tif").write_bytes(b"not a tiff at all")
    result = invoke("run", art, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "Aborted" not in result.output and "Traceback" not in result.output
    failed = sorted(line for line in result.output.splitlines() if line.startswith("failed:"))
    assert len(failed) == 2
    assert "empty.npy" in failed[0] and "the file is empty" in failed[0]
    assert "junk.tif" in failed[1]
    assert (tmp_path / "out" / "img00.tif").exists()


@pytest.fixture
def nan_image(tmp_path: Path) -> Path:
    image = np.ones((20, 24), np.float32)
    image[3, 4] = np.nan
    image[5, 6] = np.inf
    folder = tmp_path / "nan"
    folder.mkdir()
    tifffile.imwrite(folder / "n.tif", image)
    return folder / "n.tif"


def test_nan_is_an_error_by_default(plugins, tmp_path: Path, nan_image: Path) -> None:
    art = make_artifact(tmp_path / "a", normalization="percentile")
    good = images(tmp_path / "nan", 1)[0]
    result = invoke("run", art, nan_image.parent, "-o", tmp_path / "out")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert (
        len(failed) == 1 and "n.tif" in failed[0] and "2 NaN/Inf value(s)" in failed[0] and "--nan-policy" in failed[0]
    )
    assert not (tmp_path / "out" / "n.tif").exists() and (tmp_path / "out" / good.name).exists()


def test_nan_policy_zero_and_ignore(plugins, tmp_path: Path, nan_image: Path) -> None:
    art = make_artifact(tmp_path / "a")
    result = invoke("run", art, nan_image, "-o", tmp_path / "zero", "--nan-policy", "zero")
    assert result.exit_code == 0, result.output
    got = tifffile.imread(tmp_path / "zero" / "n.tif")
    assert np.isfinite(got).all() and got[3, 4] == 1.0 and got[5, 6] == 1.0 and got[0, 0] == 3.0
    result = invoke("run", art, nan_image, "-o", tmp_path / "keep", "--nan-policy", "ignore")
    assert result.exit_code == 0, result.output
    got = tifffile.imread(tmp_path / "keep" / "n.tif")
    assert np.isnan(got[3, 4]) and np.isinf(got[5, 6]) and got[0, 0] == 3.0


def test_output_blocked_by_a_file_is_refused_before_any_work(plugins, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "a")
    images(tmp_path / "in", 2)
    (tmp_path / "blocked").write_text("a file", encoding="utf-8")
    result = invoke("run", art, tmp_path / "in", "-o", tmp_path / "blocked")
    assert result.exit_code == 1
    assert "is a file, not a folder" in one_error_line(result.output)
    result = invoke("run", art, tmp_path / "in", "-o", tmp_path / "blocked" / "sub")
    assert result.exit_code == 1 and "cannot be created" in one_error_line(result.output)


def test_memory_estimate_refuses_with_the_number_and_the_fix(plugins, tmp_path: Path, monkeypatch) -> None:
    import ebai.core.memory

    art = make_artifact(tmp_path / "a")
    images(tmp_path / "in", 1, shape=(512, 512))  # 1 MiB float32: needs 2 MiB to predict
    monkeypatch.setattr(ebai.core.memory, "available_memory", lambda: 1 << 20)
    result = invoke("run", art, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    line = one_error_line(result.output)
    assert "needs about 2.0 MiB of memory to predict but 1.0 MiB is free" in line and "smaller files" in line
    assert not (tmp_path / "out" / "img00.tif").exists()
    monkeypatch.setattr(ebai.core.memory, "available_memory", lambda: 64 << 20)
    assert invoke("run", art, tmp_path / "in", "-o", tmp_path / "out").exit_code == 0


def test_prediction_bytes_stages() -> None:
    from ebai.core.memory import prediction_bytes

    mib = 1 << 20
    # 256 MiB float32, one channel in and out: the sample and the output at once
    assert prediction_bytes((64, 1024, 1024), 1, 1, 4) == 512 * mib
    # uint16 stored, read then converted: both at once is not the peak; predicting is
    assert prediction_bytes((64, 1024, 1024), 1, 1, 2) == 512 * mib
    # three output channels
    assert prediction_bytes((64, 1024, 1024), 1, 3, 4) == 1024 * mib


def test_info_shows_provenance_without_running_the_source(tmp_path: Path, fake_entry_points) -> None:
    fake_entry_points({CLI: {"info": "ebai.core.commands.info:info"}})
    art = make_artifact(tmp_path / "a")
    marker = tmp_path / "marker"
    source = malicious_sources(marker, tmp_path / "f" / "net.py")[0]
    edit_manifest(art, rehash=True, source=source, versions={"ebai-compress": "0.1.0"})
    result = invoke("info", art)
    assert result.exit_code == 0, result.output
    assert "made with: ebai-compress 0.1.0" in result.output
    assert "never imported or run without --trust-source" in result.output and "subprocess:run" in result.output
    assert "target numpy:fp32: no guard record" in result.output
    data = json.loads(invoke("info", art, "--json").output)
    assert data["source"] == source and len(data["manifest_sha256"]) == 64
    assert not marker.exists()
    edit_manifest(art, rehash=False, name="renamed")
    result = invoke("info", art)
    assert result.exit_code == 1 and "does not match its own sha256" in one_error_line(result.output)


# ebai info ARTIFACT: the trade-off curve a --prune auto search recorded, printed and plotted

PNG = b"\x89PNG\r\n\x1a\n"


def _probe(method: str, ratio: float, value: float, passed: bool, macs: float, degenerate: bool = False) -> dict:
    return {
        "method": method,
        "ratio": ratio,
        "pearson": value,
        "passed": passed,
        "degenerate": degenerate,
        "mac_reduction": macs,
        "params_after": 1000,
        "steps": 40,
        "seconds": 3.5,
    }


SEARCH = {
    "target": 0.98,
    "metric": "pearson",
    "chosen": {"method": "l1", "ratio": 0.65},
    "probes": [
        _probe("l1", 0.5, 0.9912, True, 3.9),
        _probe("l1", 0.65, 0.9851, True, 9.5),
        _probe("l1", 0.8, 0.9402, False, 20.1),
        _probe("fpgm", 0.5, 0.9890, True, 3.9),
        _probe("fpgm", 0.65, 0.9731, False, 9.5),
        _probe("fpgm", 0.8, 0.9910, False, 3.9, degenerate=True),
    ],
    "seconds": 289.4,
    "budget_spent": False,
}


@pytest.fixture
def info_cli(fake_entry_points) -> None:
    fake_entry_points({CLI: {"info": "ebai.core.commands.info:info"}})


def _searched(tmp_path: Path) -> Path:
    art = make_artifact(tmp_path / "a.ebai")
    edit_manifest(art, rehash=True, pruning={"method": "l1", "ratio": 0.65, "search": SEARCH})
    return art


def test_curve_lines_order_probes_and_mark_the_choice() -> None:
    lines = curve_lines(SEARCH)
    assert lines[0] == "--prune auto: pearson >= 0.98 against the original; 6 probes in 289 s"
    rows = lines[2:]
    assert [r.split()[:2] for r in rows] == [
        ["fpgm", "0.50"],
        ["fpgm", "0.65"],
        ["fpgm", "0.80"],
        ["l1", "0.50"],
        ["l1", "0.65"],
        ["l1", "0.80"],
    ]
    assert rows[4].endswith("pass  <- chosen") and "9.50x" in rows[4]
    assert "fail (cuts no more MACs than a smaller ratio)" in rows[2]
    assert sum("chosen" in r for r in rows) == 1


def test_metric_name_of_a_record_that_does_not_name_it() -> None:
    # artifacts made before the record named its metric: the probes' one unknown field
    older = {k: v for k, v in SEARCH.items() if k != "metric"}
    assert metric_name(older) == "pearson"
    assert search_record({"method": "l1", "ratio": 0.5}) is None and search_record(None) is None


def test_info_prints_the_curve_and_plots_it(tmp_path: Path, info_cli) -> None:
    art = _searched(tmp_path)
    result = invoke("info", art)
    assert result.exit_code == 0, result.output
    assert '"search"' not in result.output  # the curve is a table, not a JSON line
    assert "--prune auto: pearson >= 0.98" in result.output and "<- chosen" in result.output
    png = tmp_path / "out" / "curve.png"
    result = invoke("info", art, "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == PNG and f"trade-off curve written to {png}" in result.output
    # never replaced unasked; the old file stays whole
    before = png.read_bytes()
    result = invoke("info", art, "--plot", png)
    assert result.exit_code == 1 and "already exists: pass --overwrite" in one_error_line(result.output)
    assert png.read_bytes() == before
    assert invoke("info", art, "--plot", png, "--overwrite").exit_code == 0
    assert [p.name for p in png.parent.iterdir()] == ["curve.png"]  # no temporary file left


def test_plot_refusals_are_one_line(tmp_path: Path, info_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = make_artifact(tmp_path / "plain.ebai")
    result = invoke("info", plain, "--plot", tmp_path / "c.png")
    line = one_error_line(result.output)
    assert result.exit_code == 1 and "was not pruned with --prune auto" in line and "--min-fidelity" in line
    result = invoke("info", "--plot", tmp_path / "c.png")
    assert result.exit_code == 2 and "name the ARTIFACT too" in result.output
    monkeypatch.setattr("ebai.core.search_curve.figure", lambda *a, **k: None)  # matplotlib not installed
    result = invoke("info", _searched(tmp_path), "--plot", tmp_path / "c.png")
    line = one_error_line(result.output)
    assert result.exit_code == 1 and "needs matplotlib" in line and "ebai-core[plot]" in line
    assert not (tmp_path / "c.png").exists()


# ebai info ARTIFACT: the per-layer costs --prune-spare measured, printed as a table

SPARING = {
    "share": 0.2,
    "spared": ["body.convs.1.0"],
    "given_up_ms": 0.54,
    "saved_ms": 3.1,
    "whole_ms": 19.84,
    "backend": "openvino",
    "precision": "int8",
    "metric": "pearson",
    "seconds": 95.0,
    "layers": [
        {"layer": "body.convs.0.0", "fidelity": 0.7611, "loss": 0.2389, "saved_ms": 0.27},
        {"layer": "body.convs.1.0", "fidelity": 0.2119, "loss": 0.7881, "saved_ms": 0.54},
        {"layer": "body.sub.down.0", "fidelity": 0.9877, "loss": 0.0123, "saved_ms": 2.29},
    ],
}


def test_sparing_lines_list_every_layer_in_order_and_mark_those_kept() -> None:
    lines = sparing_lines(SPARING)
    assert lines[0].startswith("--prune-spare 0.2: 1 of 3 layers kept whole, 0.54 of 3.10 ms")
    assert "timed on openvino int8, unpruned 19.84 ms" in lines[0]
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == ["body.convs.0.0", "body.convs.1.0", "body.sub.down.0"]
    assert rows[1].endswith("<- kept whole") and "0.2119" in rows[1] and "0.540" in rows[1]
    assert sum("kept whole" in r for r in rows) == 1
    assert sparing_record({"method": "l1"}) is None and sparing_record(None) is None


def test_info_prints_the_layers_kept_whole_as_a_table(tmp_path: Path, info_cli) -> None:
    art = make_artifact(tmp_path / "s.ebai")
    edit_manifest(art, rehash=True, pruning={"method": "l1", "ratio": 0.5, "sparing": SPARING})
    result = invoke("info", art)
    assert result.exit_code == 0, result.output
    assert '"sparing"' not in result.output and '"ratio": 0.5' in result.output
    assert "--prune-spare 0.2: 1 of 3 layers kept whole" in result.output and "<- kept whole" in result.output
