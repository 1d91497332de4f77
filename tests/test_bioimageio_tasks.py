"""Each reference task as a bioimage.io 0.5 package (pytorch_state_dict) through the whole round trip.

import (``ebai compress --bioimageio``) -> ``--prune l1:0.5 --int8`` -> ``ebai export --bioimageio`` ->
bioimageio.core's ``test_model`` passes on the exported package, and bioimageio.core's ``predict``
with it on the task's held-out synthetic set, at a size other than the test tensor's (the exported
space axes are ``min + n*step``), scores, by the task's metric against the original package's
prediction, at least the task's guard limit for a pruned and quantized network.

What a round trip costs is mostly distillation (steps x tile volume: label-free needs 600 steps in
5 rounds, nuclei and semantic 150) plus fixed costs (two ONNX exports, the OpenVINO lowerings, the
packages' own ``predict`` calls). CI runs small tiles (``PLANS["small"]``) with the steps each task
needs; the ``heavy`` variant runs tiles 3-9x larger.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")
pytest.importorskip("torch")
pytest.importorskip("openvino")

# The reference tasks: this is the one place naming the package they live in.
import ebai.tasks as tasks

_spec = importlib.util.spec_from_file_location(
    "ebai_bioimageio_packages",
    Path(__file__).parents[1] / "packages" / "ebai-adapters" / "tests" / "fixtures" / "bioimageio_packages.py",
)
bp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bp)

ARCHITECTURE = f'''
def build(task):
    """The reference task's network, untrained (the package's state dict holds the weights)."""
    from {tasks.__name__} import get_task

    return get_task(task).build_model()
'''

#: Per task: tile (a valid size of each package: min = step = the network's divisor), distillation steps
#: (``None``: the fewest the task needs, :attr:`ebai.tasks.Task.min_distill_steps`), the user's images
#: (each twice the tile) and the held-out images. ``small`` is what CI runs; ``large`` (marked heavy) the
#: same round trip on tiles 3-9x larger.
PLANS = {
    "small": {
        "denoising": {"tile": (16, 32, 32), "steps": 40, "images": 4, "held_out": 2},
        "nuclei": {"tile": (32, 32), "steps": None, "images": 4, "held_out": 2},
        "labelfree": {
            "tile": (16, 32, 32),
            "steps": 600,
            "rounds": 5,
            "schedule": "cosine",
            "images": 8,
            "held_out": 2,
        },
        "semantic": {"tile": (16, 32, 32), "steps": None, "images": 4, "held_out": 2},
    },
    "large": {
        "denoising": {"tile": (16, 48, 48), "steps": 40, "images": 4, "held_out": 2},
        "nuclei": {"tile": (64, 64), "steps": None, "images": 4, "held_out": 2},
        "labelfree": {
            "tile": (32, 64, 64),
            "steps": 600,
            "rounds": 5,
            "schedule": "cosine",
            "images": 8,
            "held_out": 2,
        },
        "semantic": {"tile": (16, 48, 48), "steps": None, "images": 4, "held_out": 2},
    },
}
#: Label-free: cut at once, 50% pruning destroys the network's function (Pearson -0.19 to the original)
#: and 400 distillation steps reached 0.70 on the guard's held-out tiles. It is cut in 5 rounds, each
#: followed by 120 cosine-scheduled steps, on 8 images: the guard passes and the exported package
#: scores 0.936 against the original (0.934 on one thread: other arithmetic, the same verdict). Before
#: the rounds went to the one cut's channel counts, they floored them round after round and ended at
#: 25% of a 32-channel layer instead of 50% (5.7x fewer MACs instead of 3.9x): 0.84 at best.


def _preprocessing(task, spatial: str) -> list:
    norm = task.normalization
    if norm.kind == "zscore":
        return [bp.zmuv(spatial)]
    if norm.kind == "percentile":
        return [bp.scale_range(spatial, norm.low, norm.high)]
    raise AssertionError(f"no bioimage.io preprocessing written for {norm.kind}")


def _write_package(task, folder: Path, tile: tuple[int, ...]) -> Path:
    import torch
    from bioimageio.core import predict
    from bioimageio.spec.model import v0_5 as v

    folder.mkdir(parents=True)
    (folder / "task_network.py").write_text(ARCHITECTURE)
    net = task.load_trained()
    torch.save(net.state_dict(), folder / "weights.pt")
    weights = {
        "pytorch_state_dict": v.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt",
            architecture=v.ArchitectureFromFileDescr(
                source=folder / "task_network.py", callable=v.Identifier("build"), kwargs={"task": task.name}
            ),
            pytorch_version=v.Version(torch.__version__.split("+")[0]),
        )
    }
    axes = task.axes
    spatial = axes[2:]
    x, _ = task.make_samples(1, tasks.TEST_SEED + 10, shape=tile)
    placeholder = np.ones((1, task.out_channels, *tile), dtype=np.float32)  # replaced by the real output below
    common = {
        "axes": axes,
        "preprocessing": _preprocessing(task, spatial),
        "out_channels": task.out_channels,
        "min_size": task.divisor,
        "step": task.divisor,
        "model_id": f"ebai-{task.name}",
        "name": f"ebai {task.name} reference",
    }
    draft = bp.describe(folder, weights, test_input=x, test_output=placeholder, **common)
    sample = predict(model=draft, inputs=x)
    out = next(iter(sample.members.values())).data.transpose(*[str(a.id) for a in draft.outputs[0].axes]).values
    descr = bp.describe(folder, weights, test_input=x, test_output=np.asarray(out, dtype=np.float32), **common)
    return bp.save_zip(descr, folder.parent / f"{task.name}.zip")


def _predict(package, images: np.ndarray) -> list[np.ndarray]:
    from bioimageio.core import predict

    out = []
    for x in images:
        sample = predict(model=package, inputs=x[np.newaxis])
        tensor = next(iter(sample.members.values()))
        out.append(np.asarray(tensor.data.values)[0])
    return out


def _round_trip(name: str, plan: dict, tmp_path: Path) -> None:
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description
    from click.testing import CliRunner

    from ebai.core.cli import cli

    task = tasks.get_task(name)
    task.check_available()
    tile = plan["tile"]
    steps = plan["steps"] or task.min_distill_steps
    package = _write_package(task, tmp_path / "package", tile)

    data = tmp_path / "data"
    data.mkdir()
    images, _ = task.make_samples(plan["images"], tasks.CALIBRATION_SEED, shape=[2 * t for t in tile])
    for i, image in enumerate(images):
        np.save(data / f"image{i}.npy", image)
    # the guard decides by Pearson to the original's raw output: at the task's own limit where the task
    # metric is Pearson; for the segmentation tasks the task metric is checked below, on the exported package
    limit = task.guard_threshold(pruned=True)
    guard = limit if task.guard_metric == "pearson" else 0.8
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"calibration: {{samples: 8}}\nfidelity: {{held_out: 1, tiles: 4, threshold: {guard}}}\n"
        + (f"fine_tune: {{schedule: {plan['schedule']}}}\n" if plan.get("schedule") else "")
    )
    runner = CliRunner()
    artifact = tmp_path / f"{name}.ebai"
    args = ["--bioimageio", str(package), "--data", str(data), "--tile", ",".join(map(str, tile))]
    args += ["--prune", "l1:0.5", "--int8", "--steps", str(steps), "--recipe", str(recipe), "-o", str(artifact)]
    if plan.get("rounds"):
        args += ["--prune-rounds", str(plan["rounds"])]
    compressed = runner.invoke(cli, ["compress", *args])
    assert compressed.exit_code == 0, compressed.output
    exported = tmp_path / f"{name}-ebai.zip"
    result = runner.invoke(cli, ["export", str(artifact), "--bioimageio", "--no-benchmark", "-o", str(exported)])
    assert result.exit_code == 0, result.output

    summary = test_model(exported)
    assert summary.status == "passed", [e.msg for d in summary.details for e in d.errors]

    # the held-out synthetic set, at a size other than the test tensor's (the exported package's
    # space axes are min + n*step, as the original's): twice the tile plus one divisor, so that even
    # two images hold enough nuclei for AP50 to mean something
    shape = [2 * t + task.divisor for t in tile]
    inputs, truth = task.make_samples(plan["held_out"], tasks.TEST_SEED, shape=shape)
    original = _predict(load_model_description(package), inputs)
    compressed_out = _predict(load_model_description(exported), inputs)
    assert compressed_out[0].shape[-len(shape) :] == tuple(shape)
    vs_original = [
        task.score(task.postprocess(c), task.postprocess(o)) for c, o in zip(compressed_out, original, strict=True)
    ]
    assert float(np.mean(vs_original)) >= limit, (task.metric, vs_original, limit)
    vs_truth = [task.score(task.postprocess(c), t) for c, t in zip(compressed_out, truth, strict=True)]
    print(
        f"{name}: {task.metric} vs original {np.mean(vs_original):.4f} (limit {limit}), vs truth {np.mean(vs_truth):.4f}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLANS["small"]))
def test_task_package_round_trip(name, tmp_path):
    """Small tiles, few held-out images: what CI runs."""
    _round_trip(name, PLANS["small"][name], tmp_path)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(PLANS["large"]))
def test_task_package_round_trip_large(name, tmp_path):
    """The same round trip on larger tiles (minutes per task)."""
    _round_trip(name, PLANS["large"][name], tmp_path)
