"""Task 1: 3D denoising of fluorescence volumes with a MONAI UNet (pixel-wise Pearson to ground truth).

The synthetic volumes hold blobs (vesicles, nuclei) and filaments (microtubules) blurred by an
anisotropic point-spread function; the input adds Poisson shot noise at 5-20 photons per unit
intensity and Gaussian read noise, the regime where CARE-style denoisers pay off.

The network is MONAI's ``UNet`` without residual units, batch norm and ReLU: every activation is
then non-negative and every skip concatenation joins two such tensors, so OpenVINO runs all of its
convolutions, transposed convolutions included, in int8 (with MONAI's residual units the sums are
signed and OpenVINO keeps the transposed convolutions in float, capping the int8 speed-up near 2x
on this project's CPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ebai.core.specs import Normalization
from ebai.tasks import _synthetic as syn
from ebai.tasks._task import PearsonTask, TrainingPlan

__all__ = ["DenoisingTask"]

#: MONAI ``UNet`` constructor arguments of the shipped denoiser (0.58 M parameters).
UNET_ARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": (32, 48, 64, 96),
    "strides": (2, 2, 2),
    "num_res_units": 0,
    "norm": "batch",
    "act": "relu",
}
_PSF_SIGMA = (1.2, 0.9, 0.9)


class DenoisingTask(PearsonTask):
    """3D denoising: noisy fluorescence volume in, clean volume out; Pearson to ground truth."""

    name = "denoising"
    title = "3D denoising (MONAI UNet)"
    min_metric = 0.975
    axes = "bczyx"
    tile = (32, 128, 128)
    divisor = 8
    normalization = Normalization(kind="zscore")
    shape = (32, 96, 96)
    test_shape = (32, 128, 128)
    test_count = 2
    stream = 1
    plan = TrainingPlan(samples=32, shape=(32, 96, 96), crop=(16, 48, 48), steps=3000, batch=4, lr=2e-3)

    def _sample(self, seed: int, index: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        rng = syn.sample_rng(seed, index, self.stream)
        volume = float(np.prod(shape))
        objects = np.zeros(shape, dtype=np.float32)
        for _ in range(int(rng.poisson(volume / 6000.0))):
            r = rng.uniform(1.5, 5.0)
            radii = (r * rng.uniform(0.5, 0.8), r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2))
            center = [rng.uniform(0, s) for s in shape]
            box, occ = syn.paint_ellipsoid(shape, center, radii, syn.random_rotation(rng, 3), softness=1.0)
            objects[box] = np.maximum(objects[box], occ * rng.uniform(0.3, 1.0))
        points, weights = [], []
        for _ in range(1 + int(rng.poisson(volume / 40000.0))):
            pts = syn.tube_points(rng, shape, length=rng.uniform(40.0, 160.0), stiffness=0.95)
            points.append(pts)
            # a line of unit density blurred by the PSF peaks near 1/(2 pi sigma^2): undo that
            weights.append(np.full(len(pts), rng.uniform(0.3, 0.8) * 0.5 * 2.0 * np.pi * _PSF_SIGMA[1] ** 2))
        objects += syn.splat_points(shape, np.concatenate(points), np.concatenate(weights))
        background = 0.03 + 0.01 * syn.smooth_noise(rng, shape, 8.0)
        clean = syn.gaussian_blur(objects, _PSF_SIGMA) + np.clip(background, 0.0, None)
        noisy = syn.poisson_gaussian(rng, clean, photons=rng.uniform(5.0, 20.0), read_noise=rng.uniform(0.01, 0.03))
        return noisy[None], clean[None].astype(np.float32)

    def build_model(self) -> Any:
        """MONAI ``UNet`` with :data:`UNET_ARGS`, randomly initialised."""
        from monai.networks.nets import UNet

        return UNet(**UNET_ARGS)
