"""The adapter of a reference task, so its network goes through ``ebai compress`` like any other.

An artifact made from a task records ``{"adapter": "task", "config": {"task": ...}}``; ``ebai run``
rebuilds this adapter from it to post-process (cellpose dynamics for the nuclei, argmax for the
semantic segmentation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ebai.adapters._adapter import Adapter
from ebai.core.specs import OutputSpec
from ebai.tasks._registry import get_task
from ebai.tasks._task import TEST_SEED, Task

__all__ = ["TaskAdapter", "test_scores"]


class TaskAdapter(Adapter):
    """A reference task's network with its trained weights, pre/post-processing and metric.

    Parameters
    ----------
    task
        Name of the task (see :data:`~ebai.tasks.TASK_NAMES`).
    weights
        A safetensors file written by ``packages/ebai-tasks/scripts/train_tasks.py``; ``None`` (default) uses the
        weights shipped in the package.
    """

    name = "task"
    path_keys = ("weights",)

    def __init__(self, task: str, weights: str | Path | None = None) -> None:
        self.task = get_task(task)
        self.weights = str(Path(weights).expanduser().resolve()) if weights is not None else None
        self.input_spec = self.task.input_spec

    @property
    def output_spec(self) -> OutputSpec:
        """Output layout of the task's network."""
        return self.task.output_spec

    @property
    def pointwise_postprocess(self) -> bool:
        """Whether the task's post-processing is voxel-wise (``ebai run`` may then apply it block by block)."""
        return bool(getattr(self.task, "pointwise_postprocess", False))

    def load_module(self) -> Any:
        """Return a fresh copy of the trained network, in eval mode on the CPU."""
        if self.weights is None:
            return self.task.load_trained()
        from ebai.tasks._weights import load_into

        module = self.task.build_model()
        load_into(module, self.task.name, self.weights)
        return module.eval()

    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Normalise a raw image as the task does."""
        return self.task.preprocess(sample)

    def run_tiled(
        self,
        image: np.ndarray,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int = 4,
        overlap: float | None = None,
        fixed_tile: bool = True,
        progress_desc: str | None = None,
    ) -> np.ndarray:
        """Tile as the task's tool does (cellpose's padding and tiles for the nuclei), else ebai's tiler."""
        tool = self.task.tool_adapter()
        runner = super() if tool is None else tool
        return runner.run_tiled(
            image, infer, batch_size=batch_size, overlap=overlap, fixed_tile=fixed_tile, progress_desc=progress_desc
        )

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Turn a network output into the task's result (an image, or a label image)."""
        return self.task.postprocess(output)

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Score a result against another with the task metric (the guard passes the original model's)."""
        return {self.task.metric: float(self.task.score(prediction, target))}

    def config(self) -> dict[str, Any]:
        """Return settings that rebuild this adapter."""
        return {"task": self.task.name, "weights": self.weights}


def test_scores(
    task: Task | str,
    module: Any | None = None,
    *,
    infer: Callable[[np.ndarray], np.ndarray] | None = None,
    count: int | None = None,
) -> list[float]:
    """The task metric of a network on each image of the task's held-out synthetic set.

    The images are generated with :data:`~ebai.tasks.TEST_SEED` (never seen in training),
    :attr:`~Task.test_count` images of :attr:`~Task.test_shape` by default, and run whole through
    the tiler, as ``ebai run`` would.

    Parameters
    ----------
    task
        The task or its name.
    module
        The torch network to score; by default the shipped one.
    infer
        Instead of ``module``, any batch function (an engine of a compressed artifact).
    count
        Number of held-out images (default :attr:`~Task.test_count`).
    """
    task = get_task(task) if isinstance(task, str) else task
    adapter = TaskAdapter(task.name)
    if infer is None:
        infer = adapter.torch_infer(module)
    inputs, targets = task.make_samples(count or task.test_count, TEST_SEED, task.test_shape)
    return [float(task.score(adapter.predict(x, infer, batch_size=1), y)) for x, y in zip(inputs, targets, strict=True)]
