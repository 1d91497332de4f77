"""Task 3: 3D label-free prediction, transmitted light to a nuclear stain, with an fnet-style net.

The synthetic cells are ellipsoids of slightly higher refractive index than the medium, each with
a nucleus of higher index and chromatin texture, one or two nucleoli, and small lipid droplets of
high index in the cytoplasm. The "transmitted light" input is what a bright-field microscope
records of such phase objects near focus (a blurred image of the index plus its edge contrast,
uneven illumination and noise); the target is the DNA stain: the nuclei, darker in the nucleoli,
blurred by the fluorescence PSF. The network must tell nuclei from droplets and cytoplasm by
shape and texture, as fnet does (Ounkomol et al., 2018). Metric: Pearson to the clean stain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ebai.core.install_hints import install_line
from ebai.core.specs import Normalization
from ebai.tasks import _synthetic as syn
from ebai.tasks._task import PearsonTask, TrainingPlan

__all__ = ["LabelFreeTask"]

#: :class:`~ebai.tasks._fnet.FNet3D` arguments of the shipped network (0.43 M parameters).
FNET_ARGS: dict[str, Any] = {"in_channels": 1, "out_channels": 1, "base": 16, "depth": 2}


class LabelFreeTask(PearsonTask):
    """Label-free prediction: transmitted-light volume in, nuclear stain out; Pearson to ground truth."""

    name = "labelfree"
    title = "3D label-free prediction (fnet-style)"
    min_metric = 0.9
    axes = "bczyx"
    tile = (32, 64, 64)
    divisor = 4
    normalization = Normalization(kind="zscore")
    shape = (32, 96, 96)
    test_shape = (32, 128, 128)
    test_count = 2
    stream = 3
    requires = ("torch", "safetensors")
    install = install_line("tasks")
    # pruned 50%, Pearson to the original after distillation: 0.70 at 40 steps, 0.85 at 200, 0.92 at 300, 0.94 at 500
    min_distill_steps = 400
    plan = TrainingPlan(samples=24, shape=(32, 96, 96), crop=(16, 64, 64), steps=1500, batch=2, lr=2e-3)

    def _sample(self, seed: int, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        rng = syn.sample_rng(seed, index, self.stream)
        index_map = np.zeros(shape, dtype=np.float32)  # refractive index above the medium
        stain = np.zeros(shape, dtype=np.float32)
        chromatin = syn.smooth_noise(rng, shape, (0.8, 1.2, 1.2))
        cytoplasm = syn.smooth_noise(rng, shape, 2.0)
        cells = max(1, int(rng.poisson(float(np.prod(shape)) / 15000.0)))
        for _ in range(cells):
            center = np.array([rng.uniform(0.2 * shape[0], 0.8 * shape[0])] + [rng.uniform(0, s) for s in shape[1:]])
            r = rng.uniform(10.0, 16.0)
            cell_radii = (r * rng.uniform(0.4, 0.55), r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15))
            rot = syn.random_rotation(rng, 3)
            box, cell = syn.paint_ellipsoid(shape, center, cell_radii, rot, softness=1.5)
            index_map[box] = np.maximum(index_map[box], cell * (0.25 + 0.05 * cytoplasm[box]))
            # nucleus: off-centre inside the cell
            n_center = center + rng.uniform(-0.2, 0.2, size=3) * np.array(cell_radii)
            n_radii = tuple(float(a) * rng.uniform(0.45, 0.6) for a in cell_radii)
            n_box, nucleus = syn.paint_ellipsoid(shape, n_center, n_radii, rot, softness=1.0)
            dna = nucleus * rng.uniform(0.6, 1.0) * (1.0 + 0.25 * chromatin[n_box])
            index_map[n_box] = np.maximum(index_map[n_box], nucleus * (0.5 + 0.12 * chromatin[n_box]))
            stain[n_box] = np.maximum(stain[n_box], dna)
            for _ in range(int(rng.integers(1, 3))):  # nucleoli: dense, DNA-poor
                o_center = n_center + rng.uniform(-0.4, 0.4, size=3) * np.array(n_radii)
                o_box, nucleolus = syn.paint_ellipsoid(shape, o_center, (1.5, 2.2, 2.2), None, softness=0.8)
                index_map[o_box] = np.maximum(index_map[o_box], nucleolus * 0.85)
                stain[o_box] *= 1.0 - 0.6 * nucleolus
            for _ in range(int(rng.integers(4, 12))):  # lipid droplets in the cytoplasm: dense, unstained
                d_center = center + rng.uniform(-0.8, 0.8, size=3) * np.array(cell_radii)
                d = rng.uniform(1.0, 1.8)
                d_box, droplet = syn.paint_ellipsoid(shape, d_center, (d * 0.8, d, d), None, softness=0.6)
                index_map[d_box] = np.maximum(index_map[d_box], droplet * 1.0)
        target = syn.gaussian_blur(stain, (1.2, 0.8, 0.8))
        near = syn.gaussian_blur(index_map, (1.0, 0.7, 0.7))
        far = syn.gaussian_blur(index_map, (2.5, 1.8, 1.8))
        illumination = 1.0 + 0.05 * syn.smooth_noise(rng, shape, 16.0)
        light = illumination * (1.0 - 0.15 * far + 0.8 * (near - far))
        light = light + rng.normal(0.0, 0.025, size=shape).astype(np.float32)
        return light[None].astype(np.float32), target[None].astype(np.float32)

    def build_model(self) -> Any:
        """Build the fnet-style :class:`~ebai.tasks._fnet.FNet3D` with :data:`FNET_ARGS`."""
        from ebai.tasks._fnet import FNet3D

        return FNet3D(**FNET_ARGS)
