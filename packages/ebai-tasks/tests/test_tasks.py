"""The reference tasks: deterministic generators and shipped networks that still reach their metric."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("safetensors")

from ebai.core.errors import ArtifactError, InputError, MissingDependencyError
from ebai.tasks import (
    TASK_NAMES,
    TaskAdapter,
    get_task,
    load_into,
    read_metadata,
    save_weights,
    shipped_weights,
    train_task,
)
from ebai.tasks import test_scores as held_out_scores


def _available(task):
    try:
        task.check_available()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generator_is_deterministic(name):
    task = get_task(name)
    shape = task.test_shape
    a_in, a_gt = task.make_samples(2, seed=123, shape=shape)
    b_in, b_gt = task.make_samples(2, seed=123, shape=shape)
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_gt, b_gt)
    c_in, _ = task.make_samples(2, seed=124, shape=shape)
    assert not np.array_equal(a_in, c_in), "a different seed must give different images"
    # image i depends on (seed, i) only: a smaller set is a prefix of a larger one
    one_in, one_gt = task.make_samples(1, seed=123, shape=shape)
    np.testing.assert_array_equal(one_in[0], a_in[0])
    np.testing.assert_array_equal(one_gt[0], a_gt[0])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generator_layout(name):
    task = get_task(name)
    inputs, targets = task.make_samples(2, seed=5)
    assert inputs.dtype == np.float32 and inputs.shape == (2, task.channels, *task.shape)
    assert np.isfinite(inputs).all()
    if task.metric == "pearson":  # image-to-image: a clean image per input
        assert targets.shape == (2, 1, *task.shape) and targets.std() > 0
    else:  # segmentation: integer labels with objects in every image
        assert targets.shape == (2, *task.shape) and np.issubdtype(targets.dtype, np.integer)
        assert all(t.max() > 0 for t in targets)
    with pytest.raises(InputError, match="give"):
        task.make_samples(1, seed=5, shape=(4,) * len(task.shape))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shipped_network_reaches_its_stated_metric(name):
    import torch

    torch.set_num_threads(1)
    task = get_task(name)
    _available(task)
    weights = shipped_weights(name)
    assert weights.stat().st_size < 2_000_000, "shipped weights must stay under 2 MB"
    meta = read_metadata(weights)
    assert meta["task"] == name and meta["test_metric"] == task.metric
    scores = held_out_scores(task)
    assert len(scores) == task.test_count
    assert min(scores) >= task.min_metric, f"{name}: held-out {task.metric} {scores} < {task.min_metric}"


def test_missing_weights_give_a_clear_error(monkeypatch):
    import importlib.resources
    from pathlib import Path

    from ebai.tasks import _weights

    monkeypatch.setattr(importlib.resources, "files", lambda _pkg: Path("/nonexistent"))
    with pytest.raises(ArtifactError, match="train them with packages/ebai-tasks/scripts/train_tasks.py"):
        _weights.shipped_weights("denoising")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(InputError, match="denoising, nuclei, labelfree, semantic"):
        get_task("segmentation")


def test_weights_round_trip_in_float16_with_shared_tensors(tmp_path):
    """DynUNet registers its blocks twice; the file stores them once and loads every name."""
    import torch

    task = get_task("semantic")
    torch.manual_seed(0)
    net = task.build_model()
    path = save_weights(net, tmp_path / "w.safetensors", {"note": "test"})
    assert path.stat().st_size < 0.6 * sum(v.numel() * 4 for v in net.state_dict().values())
    other = task.build_model()
    load_into(other, "semantic", path)
    for key, value in net.state_dict().items():
        want = value.half().float() if value.is_floating_point() else value
        assert torch.equal(other.state_dict()[key], want), key
    assert read_metadata(path) == {"note": "test"}


def test_training_is_deterministic():
    import torch

    task = get_task("labelfree")
    torch.set_num_threads(1)
    a, losses_a = train_task(task, steps=2)
    b, losses_b = train_task(task, steps=2)
    assert losses_a == losses_b
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), key


def test_task_adapter_is_rebuilt_from_its_description():
    from ebai.adapters import build_adapter

    adapter = TaskAdapter("denoising")
    rebuilt = build_adapter(adapter.describe())
    assert isinstance(rebuilt, TaskAdapter) and rebuilt.config() == adapter.config()
    assert rebuilt.input_spec == get_task("denoising").input_spec
    noisy, clean = get_task("denoising").make_samples(1, seed=9)
    assert rebuilt.evaluate(clean[0], clean[0]) == {"pearson": pytest.approx(1.0)}


@pytest.mark.parametrize("name", ["denoising", "semantic"])
def test_task_adapter_keeps_the_contract(name):
    from ebai.core.testing import check_adapter

    out = check_adapter(TaskAdapter(name))
    assert out["description"]["adapter"] == "task" and out["description"]["config"]["task"] == name
