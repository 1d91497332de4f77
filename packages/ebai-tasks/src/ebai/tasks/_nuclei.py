"""Task 2: 2D nuclei instance segmentation with cellpose's network and flows (AP at IoU 0.5).

The synthetic images hold touching elliptical nuclei with chromatin texture, blurred and with
camera noise; the ground truth is their label image. The network is cellpose 3's own ``CPnet``
(smaller than cellpose's built-in models so its weights ship in the package), trained on
cellpose's flow representation (``cellpose.dynamics.masks_to_flows``) with cellpose's loss, and its
output becomes masks through cellpose's own dynamics, by way of
:class:`ebai.adapters._cellpose.CellposeAdapter`. This task therefore needs cellpose 3
(``pip install 'ebai-adapters[cellpose]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ebai.adapters._cellpose import CellposeAdapter
from ebai.core.errors import InputError
from ebai.core.install_hints import install_line
from ebai.core.specs import Normalization
from ebai.tasks import _synthetic as syn
from ebai.tasks._task import Task, TrainingPlan

__all__ = ["NucleiTask"]

#: CPnet channel widths (input channels first) of the shipped network (0.41 M parameters).
NBASE = (1, 16, 32, 64)
#: Mean nucleus diameter in pixels of the synthetic images.
DIAMETER = 17.0
#: cellpose scales flows by 5 in training and divides by 5 when following them.
_FLOW_SCALE = 5.0


class _TaskCellpose(CellposeAdapter):
    """cellpose's normalisation, padding, tiling and dynamics around the task's network.

    It has no weights of its own: the task's network is the shipped one
    (:class:`~ebai.tasks.TaskAdapter`), so it refuses to build a (random) network.
    """

    def load_module(self) -> Any:
        """Refuse: the network of the nuclei task comes with the task's weights, not from here."""
        msg = (
            "the nuclei task's cellpose adapter holds no weights and would run a random network: "
            "use TaskAdapter('nuclei') for the shipped network, or pass infer= to predict"
        )
        raise InputError(msg)


class NucleiTask(Task):
    """Nuclei instance segmentation: image in, cellpose flows out, label masks after dynamics."""

    name = "nuclei"
    title = "2D nuclei instance segmentation (cellpose CPnet)"
    metric = "ap50"
    min_metric = 0.9
    axes = "bcyx"
    out_channels = 3
    tile = (128, 128)
    divisor = 4
    overlap = 0.1
    normalization = Normalization(kind="percentile", low=1.0, high=99.0)
    shape = (128, 128)
    test_shape = (256, 256)
    test_count = 4
    stream = 2
    requires = ("torch", "cellpose", "fastremap", "safetensors")
    install = install_line("tasks-cellpose")
    guard_metric = "ap50"
    guard_thresholds = (0.8, 0.7)
    # pruned 50%: AP50 vs the original 0.0 after 40 distillation steps, 0.96 after 150, 0.97 after 400
    min_distill_steps = 150
    plan = TrainingPlan(samples=64, shape=(128, 128), crop=(96, 96), steps=800, batch=8, lr=2e-3)

    def _cellpose_settings(self) -> dict[str, Any]:
        return {
            "nbase": list(NBASE),
            "nout": 3,
            "sz": 3,
            "diam_mean": DIAMETER,
            "channels": 1,
            "tile": list(self.tile),
            "overlap": self.overlap,
            "percentile": (self.normalization.low, self.normalization.high),
        }

    def _cellpose_adapter(self) -> CellposeAdapter:
        return _TaskCellpose(None, **self._cellpose_settings())

    def tool_adapter(self) -> CellposeAdapter:
        """Return the cellpose adapter: the network runs on cellpose's padded tiles."""
        return self._cellpose_adapter()

    def _sample(self, seed: int, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        rng = syn.sample_rng(seed, index, self.stream)
        labels = np.zeros(shape, dtype=np.int32)
        signal = np.zeros(shape, dtype=np.float32)
        texture = syn.smooth_noise(rng, shape, 1.5)
        wanted = int(rng.poisson(float(np.prod(shape)) / 520.0))
        centers: list[tuple[np.ndarray, float]] = []
        for _ in range(wanted * 6):
            if len(centers) >= wanted:
                break
            c = np.array([rng.uniform(0, s) for s in shape])
            r = rng.uniform(0.8, 1.2) * DIAMETER / 2.0
            if any(np.linalg.norm(c - c2) < 0.85 * (r + r2) for c2, r2 in centers):
                continue
            centers.append((c, r))
            aspect = rng.uniform(0.7, 1.0)
            radii = (r * aspect, r / np.sqrt(aspect))
            rot = syn.random_rotation(rng, 2)
            box, soft = syn.paint_ellipsoid(shape, c, radii, rot, softness=1.5)
            inside = labels[box]
            inside[(inside == 0) & (soft >= 0.5)] = len(centers)
            brightness = rng.uniform(0.35, 1.0)
            signal[box] = np.maximum(signal[box], soft * brightness * (1.0 + 0.2 * texture[box]))
        labels = _drop_small(labels, min_size=20)
        clean = syn.gaussian_blur(signal, 1.0) + 0.05
        image = syn.poisson_gaussian(rng, clean, photons=rng.uniform(20.0, 60.0), read_noise=0.02)
        return image[None], labels

    def build_model(self) -> Any:
        """Cellpose's ``CPnet`` with :data:`NBASE`, returning flows and cell probability only."""
        return CellposeAdapter(None, **self._cellpose_settings()).load_module().train()

    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Cellpose's own normalisation (1st-99th percentile)."""
        return self._cellpose_adapter().preprocess(sample)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Flows and cell probability to a label image with cellpose's dynamics."""
        return self._cellpose_adapter().postprocess(output)

    def score(self, prediction: np.ndarray, target: np.ndarray) -> float:
        """Average precision at IoU 0.5 of predicted against true nuclei."""
        from ebai.core.metrics import average_precision

        return average_precision(prediction, target, threshold=0.5)

    def training_target(self, target: np.ndarray) -> np.ndarray:
        """Cellpose's training target: Y and X flows (times 5) and the foreground mask."""
        import torch

        from ebai.adapters._cellpose import _cellpose

        dynamics = _cellpose("dynamics")
        labels = np.asarray(target).astype(np.int64)
        flows = dynamics.masks_to_flows(labels, device=torch.device("cpu"))
        return np.concatenate(
            [_FLOW_SCALE * np.asarray(flows, dtype=np.float32), (labels > 0)[None].astype(np.float32)]
        )

    def loss(self, output: Any, target: Any) -> Any:
        """Cellpose's loss: half the MSE of the flows plus BCE of the cell probability logits."""
        import torch.nn.functional as F

        flow_loss = F.mse_loss(output[:, :2], target[:, :2]) / 2.0
        prob_loss = F.binary_cross_entropy_with_logits(output[:, 2], target[:, 2])
        return flow_loss + prob_loss


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects smaller than ``min_size`` pixels (slivers left by occlusion) and renumber."""
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids[(ids != 0) & (counts >= min_size)]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[labels]
