"""Deterministic training of a reference task's network on its synthetic data, on a CPU.

``packages/ebai-tasks/scripts/train_tasks.py`` calls :func:`train_task` to make the weights shipped in the package.
Everything random is seeded (the data by :data:`~ebai.tasks._task.TRAIN_SEED`, torch and
the crop positions by the task's :class:`~ebai.tasks._task.TrainingPlan`) and torch runs
deterministic algorithms, so the same machine, thread count and library versions give the same
weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ebai.core.progress import progress
from ebai.tasks._task import TRAIN_SEED, Task

__all__ = ["train_task"]


def _crop_batch(
    rng: np.random.Generator, inputs: np.ndarray, targets: np.ndarray, crop: tuple[int, ...], batch: int
) -> tuple[np.ndarray, np.ndarray]:
    spatial = inputs.shape[2:]
    xs, ts = [], []
    for i in rng.integers(0, len(inputs), size=batch):
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(spatial, crop, strict=True)]
        window = tuple(slice(a, a + c) for a, c in zip(starts, crop, strict=True))
        xs.append(inputs[(int(i), slice(None), *window)])
        ts.append(targets[(int(i), slice(None), *window)])
    return np.stack(xs), np.stack(ts)


def train_task(
    task: Task,
    *,
    steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Any, list[float]]:
    """Train ``task``'s network from scratch as its :attr:`~Task.plan` says.

    Parameters
    ----------
    task
        The reference task.
    steps
        Override the plan's number of optimiser steps (e.g. for a smoke test).
    on_step
        Called with ``(step, loss)`` after every step.

    Returns
    -------
    tuple
        The trained network in eval mode and the loss of every step.
    """
    import torch

    plan = task.plan if steps is None else replace(task.plan, steps=int(steps))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(plan.seed)
        rng = np.random.default_rng(plan.seed)
        raw, truth = task.make_samples(plan.samples, TRAIN_SEED, plan.shape)
        inputs = np.stack([task.preprocess(x) for x in raw]).astype(np.float32)
        targets = np.stack([task.training_target(t) for t in truth]).astype(np.float32)
        model = task.build_model()
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=plan.lr)
        warmup = max(1, plan.steps // 20)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, plan.steps - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
        losses: list[float] = []
        for step in progress(range(plan.steps), desc=f"training {task.name}", total=plan.steps, unit="step"):
            xb, tb = _crop_batch(rng, inputs, targets, plan.crop, plan.batch)
            out = model(torch.from_numpy(xb))
            loss = task.loss(out, torch.from_numpy(tb))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return model.eval(), losses
