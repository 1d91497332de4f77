"""The reference task networks on small tiles, for the ebai-torch tests.

The reference tasks (package ebai-tasks) are imported here and nowhere else in these tests.
"""

from __future__ import annotations

import numpy as np

from ebai.core.specs import InputSpec
from ebai.tasks import TASK_NAMES, get_task  # the one import of the reference tasks

#: Smaller tiles than the tasks' own (same divisors), so exports and runs stay quick on 2 cores.
SMALL_TILES = {"denoising": (16, 32, 32), "nuclei": (64, 64), "labelfree": (16, 32, 32), "semantic": (16, 32, 32)}

__all__ = ["SMALL_TILES", "TASK_NAMES", "TaskCase", "task_case"]


class TaskCase:
    """A task's trained network, a small input spec for it and two preprocessed sample tiles."""

    def __init__(self, name: str) -> None:
        import torch

        torch.manual_seed(0)
        task = get_task(name)
        task.check_available()
        self.name = name
        self.module = task.load_trained().eval()
        tile = SMALL_TILES[name]
        self.spec = InputSpec(axes=task.axes, channels=task.channels, tile=tile)
        raw, _ = task.make_samples(2, seed=11, shape=tile)
        self.samples = np.stack([task.preprocess(s) for s in raw]).astype(np.float32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The original torch network's fp32 output."""
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


_CASES: dict[str, TaskCase] = {}


def task_case(name: str) -> TaskCase:
    """One :class:`TaskCase` per task for the whole session (loading weights is not free)."""
    if name not in _CASES:
        _CASES[name] = TaskCase(name)
    return _CASES[name]
