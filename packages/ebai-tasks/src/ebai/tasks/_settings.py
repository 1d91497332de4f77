"""How much work a Table-1 measurement takes: the full and quick presets, and what follows from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ebai.tasks._task import Task

__all__ = ["BenchSettings", "distill_steps", "held_out_volume"]


@dataclass(frozen=True)
class BenchSettings:
    """How much work a table takes; :meth:`full` and :meth:`quick` are the two presets.

    Attributes
    ----------
    volume
        Spatial shape of the held-out volume, or ``None`` for twice the task's tile (capped) so
        that it is larger than one tile.
    volumes
        Number of held-out volumes the accuracy is averaged over.
    user_images
        Synthetic "own images" (calibration seed) given to compression: some are held out by the
        accuracy guard, the rest calibrate int8 and feed distillation.
    calibration
        Tiles int8 is calibrated on.
    guard_tiles
        Held-out tiles the accuracy guard scores.
    distill_steps
        Distillation budget of the pruned network.
    distill_minutes
        Wall-time budget of that distillation (``None``: only the steps count).
    prune_method, prune_ratio
        Pruning criterion and fraction of channels removed.
    prune_rounds
        Steps in which the ratio is reached, each followed by its share of the distillation (with
        more than one, the learning rate warms up and decays on a cosine in every round).
    prune_spare
        Share of the pruning's measured int8 time saving given up to keep whole the layers whose
        cut costs the most fidelity per millisecond saved (``prune.spare``; 0 prunes every layer).
    distill_on_training_crops
        Distil on random crops of the shape the task's network was trained on instead of whole
        tiles (cheaper steps, more of them within ``distill_minutes``).
    rounds
        Interleaved latency rounds (one timed call of every variant per round).
    energy_seconds
        Least duration of each energy window.
    energy_rounds
        Interleaved energy windows per variant; their range is the spread the table prints.
    gpu
        Add TensorRT rows: ``None`` when the backend is available, ``True``/``False`` to force.
    """

    volume: tuple[int, ...] | None = None
    volumes: int = 1
    user_images: int = 6
    calibration: int = 16
    guard_tiles: int = 4
    distill_steps: int = 150
    distill_minutes: float | None = None
    prune_method: str = "l1"
    prune_ratio: float = 0.5
    prune_rounds: int = 1
    prune_spare: float = 0.0
    distill_on_training_crops: bool = False
    rounds: int = 10
    energy_seconds: float = 2.0
    energy_rounds: int = 3
    gpu: bool | None = None

    @classmethod
    def full(cls, **changes: Any) -> BenchSettings:
        """Return the settings ``ebai report`` uses by default: the accuracy a user would get.

        Pruned networks are cut in 5 rounds and distilled on the crops the task's network was
        trained on, for up to 4000 steps or 9 minutes: cut at once and distilled for 150 steps on
        whole tiles, the semantic task's pruned 50% + int8 network lost 0.057 Dice against the
        fp32 network (0.8898 -> 0.8328); this way it lost 0.0106 (0.8792, 1787 steps in 9.1 min).
        """
        base = {
            "distill_steps": 4000,
            "distill_minutes": 9.0,
            "prune_rounds": 5,
            "prune_spare": 0.2,
            "distill_on_training_crops": True,
        }
        return cls(**{**base, **changes})

    @classmethod
    def quick(cls, **changes: Any) -> BenchSettings:
        """Fewer images, steps and rounds, for CI (the numbers are noisier, the checks the same)."""
        base = {
            "user_images": 4,
            "calibration": 8,
            "guard_tiles": 2,
            "distill_steps": 40,
            "rounds": 4,
            "energy_seconds": 0.5,
        }
        return cls(**{**base, **changes})


def distill_steps(task: Task, settings: BenchSettings) -> int:
    """Distillation budget for ``task``: the settings' steps, never fewer than the task needs."""
    return max(int(settings.distill_steps), int(task.min_distill_steps))


def held_out_volume(task: Task, settings: BenchSettings) -> tuple[int, ...]:
    """Return the held-out volume shape: the settings' or, by default, one larger than a tile."""
    if settings.volume is not None:
        return tuple(int(v) for v in settings.volume)
    return task.test_shape if np.prod(task.test_shape) > np.prod(task.tile) else tuple(2 * t for t in task.tile)
