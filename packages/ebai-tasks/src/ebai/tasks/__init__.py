"""The four reference tasks of ebai, after the EfficientBioAI paper's Table 1.

Each task couples a seeded synthetic data generator, a small network trained on it (weights
shipped in this package as safetensors, trained by ``packages/ebai-tasks/scripts/train_tasks.py``), its pre- and
post-processing and its metric against ground truth:

=============  =================================================  ==========
name           task and network                                   metric
=============  =================================================  ==========
``denoising``  3D denoising, MONAI UNet                           Pearson
``nuclei``     2D nuclei instance segmentation, cellpose CPnet    AP at 0.5
``labelfree``  3D label-free prediction, fnet-style U-Net         Pearson
``semantic``   3D semantic segmentation, MONAI DynUNet            Dice
=============  =================================================  ==========

``ebai demo`` compresses the denoiser and prints the paper's table for it; ``ebai report`` does so
for every task and ``ebai sweep`` compares pruning criteria and ratios (the paper's Fig. 2).
Importing this package imports numpy and ``ebai.core`` only.

Examples
--------
>>> from ebai.tasks import get_task, test_scores        # doctest: +SKIP
>>> task = get_task("denoising")
>>> noisy, clean = task.make_samples(2, seed=7)
>>> test_scores(task)                                            # the shipped network
"""

from __future__ import annotations

from ebai.tasks._adapter import TaskAdapter, test_scores
from ebai.tasks._registry import TASK_NAMES, get_task
from ebai.tasks._task import CALIBRATION_SEED, TEST_SEED, TRAIN_SEED, Task, TrainingPlan, standardize
from ebai.tasks._training import train_task
from ebai.tasks._weights import load_into, read_metadata, save_weights, shipped_weights

__all__ = [
    "CALIBRATION_SEED",
    "TASK_NAMES",
    "TEST_SEED",
    "TRAIN_SEED",
    "Task",
    "TaskAdapter",
    "TrainingPlan",
    "get_task",
    "load_into",
    "read_metadata",
    "save_weights",
    "shipped_weights",
    "standardize",
    "test_scores",
    "train_task",
]
