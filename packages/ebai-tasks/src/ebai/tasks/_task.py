"""The reference task: synthetic data, a network, its trained weights, pre/post-processing, metric.

Each of ebai's four reference tasks (the bioimage tasks of the EfficientBioAI paper's Table 1) is a
:class:`Task` subclass. A task is what ``ebai demo`` and ``ebai report`` compress and measure, and
what ``packages/ebai-tasks/scripts/train_tasks.py`` trains; its data come from a seeded generator, so results can
be reproduced anywhere without downloading anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.core.specs import InputSpec, Normalization, OutputSpec

__all__ = ["CALIBRATION_SEED", "TEST_SEED", "TRAIN_SEED", "PearsonTask", "Task", "TrainingPlan", "standardize"]

#: Seeds of the three disjoint synthetic sets: training, held-out test, and the "user's own
#: images" the demo calibrates and distils on.
TRAIN_SEED = 1
TEST_SEED = 2
CALIBRATION_SEED = 3


def standardize(image: np.ndarray) -> np.ndarray:
    """``image`` shifted and scaled to zero mean and unit variance (float32).

    Image-to-image tasks train on standardised targets: a network whose last layer must produce
    sparse fluorescence of standard deviation 0.07 learns slowly with Adam (Pearson 0.72 after 400
    steps on the denoising task, against 0.98 with standardised targets), and Pearson, the metric,
    does not depend on the output's scale.
    """
    x = np.asarray(image, dtype=np.float32)
    std = float(x.std())
    return ((x - float(x.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


@dataclass(frozen=True)
class TrainingPlan:
    """How ``packages/ebai-tasks/scripts/train_tasks.py`` trains a task's network (deterministically, on a CPU).

    Attributes
    ----------
    samples
        Synthetic training images generated with :data:`TRAIN_SEED`.
    shape
        Spatial shape of each generated training image.
    crop
        Spatial shape of the random crops the network is trained on.
    steps, batch, lr
        Optimiser steps (Adam, cosine-decayed learning rate), crops per step, peak learning rate.
    seed
        Seed of torch and of the crop positions.
    """

    samples: int
    shape: tuple[int, ...]
    crop: tuple[int, ...]
    steps: int
    batch: int
    lr: float = 2e-3
    seed: int = 0


class Task(ABC):
    """One reference task; subclasses fill in the class attributes and the abstract methods.

    Attributes
    ----------
    name
        Short name users type (``ebai report --tasks denoising,nuclei``).
    title
        What the task is, for tables.
    metric
        Name of the accuracy metric against ground truth (``pearson``, ``ap50``, ``dice``).
    min_metric
        The shipped network reaches at least this on the held-out synthetic set
        (:meth:`make_samples` with :data:`TEST_SEED`, :attr:`test_count` images of :attr:`test_shape`);
        the tests check it, so a training regression is caught.
    axes, channels, out_channels, tile, divisor, overlap, normalization
        The network's input/output layout and tiling hints (see :class:`ebai.core.InputSpec`).
    shape
        Default spatial shape of a generated image.
    test_shape, test_count
        The held-out set the minimum metric is stated on.
    stream
        Random stream of the task's generator, so tasks never share draws.
    plan
        How the shipped weights were trained.
    requires, install
        Modules the network and its post-processing need, and the line that installs them.
    guard_metric, guard_thresholds
        What ``ebai compress``'s accuracy guard checks a compressed network by (against the
        original network's output, on held-out tiles) and its lowest accepted value, for a
        quantized network and for a pruned, distilled and quantized one.
    min_distill_steps
        Fewest distillation steps a pruned network of this task needs before its guard can pass;
        quick modes never go below it (cellpose's flows need about 150, the U-Nets far fewer).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    metric: ClassVar[str]
    min_metric: ClassVar[float]
    axes: ClassVar[str]
    channels: ClassVar[int] = 1
    out_channels: ClassVar[int] = 1
    tile: ClassVar[tuple[int, ...]]
    divisor: ClassVar[int] = 1
    overlap: ClassVar[float] = 0.25
    normalization: ClassVar[Normalization] = Normalization()
    shape: ClassVar[tuple[int, ...]]
    test_shape: ClassVar[tuple[int, ...]]
    test_count: ClassVar[int] = 2
    stream: ClassVar[int]
    plan: ClassVar[TrainingPlan]
    requires: ClassVar[tuple[str, ...]] = ("torch", "monai", "safetensors")
    install: ClassVar[str] = install_line("tasks")
    guard_metric: ClassVar[str] = "pearson"
    guard_thresholds: ClassVar[tuple[float, float]] = (0.95, 0.9)
    min_distill_steps: ClassVar[int] = 0

    def check_available(self) -> None:
        """Raise :class:`~ebai.core.MissingDependencyError` with the install line if a needed module is missing."""
        import importlib.util

        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            msg = f"the {self.name} task needs {', '.join(missing)}: {self.install}"
            raise MissingDependencyError(msg)

    def guard_threshold(self, pruned: bool) -> float:
        """Return the guard's threshold for a quantized (``pruned=False``) or pruned and quantized network."""
        return self.guard_thresholds[1 if pruned else 0]

    # ----------------------------------------------------------------------------- data
    def make_samples(self, n: int, seed: int, shape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generate ``n`` synthetic images and their ground truth, the same for the same seed.

        Parameters
        ----------
        n
            Number of images.
        seed
            Seed of the set; image ``i`` depends only on ``seed`` and ``i``, so the first images of
            a larger set equal those of a smaller one.
        shape
            Spatial shape of each image (default :attr:`shape`).

        Returns
        -------
        tuple
            ``inputs`` float32 ``(n, channels, *shape)`` as a microscope would record them (raw,
            not normalised), and ``targets``: the clean image ``(n, 1, *shape)`` for image-to-image
            tasks, or an integer label image ``(n, *shape)`` for segmentation tasks.
        """
        shape = self._check_shape(self.shape if shape is None else shape)
        if int(n) < 1:
            msg = f"the number of samples must be at least 1, got {n}"
            raise InputError(msg)
        pairs = [self._sample(int(seed), i, shape) for i in range(int(n))]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _check_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        ndim = len(self.axes) - 2
        if len(shape) != ndim or min(shape) < 8:
            msg = f"{self.name} images are {ndim}D with every size at least 8, got shape {shape}: give {ndim} sizes"
            raise InputError(msg)
        return shape

    @abstractmethod
    def _sample(self, seed: int, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """One raw input ``(channels, *shape)`` and its ground truth."""

    # -------------------------------------------------------------------------- network
    @abstractmethod
    def build_model(self) -> Any:
        """Build a freshly initialised network of this task's architecture (``torch.nn.Module``)."""

    def load_trained(self) -> Any:
        """Return the network with the weights shipped in the package, in eval mode on the CPU."""
        from ebai.tasks._weights import load_into

        self.check_available()
        module = self.build_model()
        load_into(module, self.name)
        return module.eval()

    def adapter(self) -> Any:
        """Return the :class:`~ebai.tasks.TaskAdapter` (an :class:`ebai.adapters.Adapter`) of this task."""
        from ebai.tasks._adapter import TaskAdapter

        return TaskAdapter(self.name)

    def tool_adapter(self) -> Any | None:
        """Return the tool's adapter whose padding and tiling the network needs; ``None``: ebai's tiler."""
        return None

    @property
    def input_spec(self) -> InputSpec:
        """Input layout, tile and tiling hints of the network."""
        return InputSpec(
            axes=self.axes,
            channels=self.channels,
            tile=self.tile,
            normalization=self.normalization,
            overlap=self.overlap,
            divisor=self.divisor,
        )

    @property
    def output_spec(self) -> OutputSpec:
        """Output layout of the network."""
        return OutputSpec(axes=self.axes, channels=self.out_channels)

    # ---------------------------------------------------------------- pre/post, metric
    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Raw image ``(C, *spatial)`` to network input: the spec's normalisation."""
        sample = np.asarray(sample)
        self.input_spec.check_sample(sample)
        return self.normalization.apply(sample)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Network output ``(C_out, *spatial)`` to the result compared with ground truth."""
        return np.asarray(output, dtype=np.float32)

    @abstractmethod
    def score(self, prediction: np.ndarray, target: np.ndarray) -> float:
        """Score a postprocessed prediction against a target with the task metric (:attr:`metric`)."""

    # ------------------------------------------------------------------------- training
    def training_target(self, target: np.ndarray) -> np.ndarray:
        """Return what the network is trained to output for one ground truth (float32, ``(C_out, *spatial)``)."""
        return np.asarray(target, dtype=np.float32)

    @abstractmethod
    def loss(self, output: Any, target: Any) -> Any:
        """Training loss (a scalar tensor) of a network output batch against training targets."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.title}>"


class PearsonTask(Task):
    """An image-to-image task (denoising, label-free), scored by Pearson to the ground truth.

    Trained by MSE to the standardised ground truth: Pearson ignores the scale standardising removes.
    """

    metric = "pearson"

    def score(self, prediction: np.ndarray, target: np.ndarray) -> float:
        """Pearson correlation of the predicted with the true image."""
        from ebai.core.metrics import pearson

        return pearson(prediction, target)

    def training_target(self, target: np.ndarray) -> np.ndarray:
        """Return the ground truth standardised (see :func:`standardize`)."""
        return standardize(target)

    def loss(self, output: Any, target: Any) -> Any:
        """Mean squared error to the standardised ground truth."""
        import torch

        return torch.nn.functional.mse_loss(output, target)
