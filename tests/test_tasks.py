"""The reference tasks: deterministic generators and shipped networks that still reach their metric."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("safetensors")

from ebai.adapters.tasks import TASK_NAMES, TEST_SEED, get_task, shipped_weights
from ebai.adapters.tasks import test_scores as held_out_scores
from ebai.core.errors import ArtifactError

#: Tasks whose trained weights ship in this release (semantic is not trained yet).
SHIPPED = ("denoising", "labelfree", "nuclei")


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


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_network_reaches_its_stated_metric(name):
    import torch

    torch.set_num_threads(1)
    task = get_task(name)
    weights = shipped_weights(name)
    assert weights.stat().st_size < 2_000_000, "shipped weights must stay under 2 MB"
    scores = held_out_scores(task)
    assert len(scores) == task.test_count and TEST_SEED is not None
    assert min(scores) >= task.min_metric, (
        f"{name}: held-out {task.__class__.__name__} scores {scores} < {task.min_metric}"
    )


@pytest.mark.parametrize("name", sorted(set(TASK_NAMES) - set(SHIPPED)))
def test_missing_weights_give_a_clear_error(name, monkeypatch):
    import importlib.resources
    from pathlib import Path

    from ebai.adapters.tasks import _weights

    monkeypatch.setattr(importlib.resources, "files", lambda _pkg: Path("/nonexistent"))
    with pytest.raises(ArtifactError, match="train them with benchmarks/train_tasks.py"):
        _weights.shipped_weights(name)
