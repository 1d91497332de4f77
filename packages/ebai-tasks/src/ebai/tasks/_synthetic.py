"""Drawing synthetic microscopy images in numpy: shapes, optical blur and camera noise.

The reference tasks make their training and test images here, so ebai's evidence needs no download.
Every function takes a :class:`numpy.random.Generator` and draws from it in a fixed order, so an
image depends on its seed alone. Sizes are in voxels with axes ``(Z, Y, X)`` or ``(Y, X)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "gaussian_blur",
    "grid",
    "paint_ellipsoid",
    "poisson_gaussian",
    "random_rotation",
    "sample_rng",
    "smooth_noise",
    "splat_points",
    "tube_points",
]


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Return the generator of sample ``index`` of a set seeded ``seed``.

    Each sample has its own stream, so the first ``k`` samples of a set do not depend on how many
    are asked for, and two tasks (``stream``) never share draws.
    """
    return np.random.default_rng([int(stream), int(seed), int(index)])


def _kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float | Sequence[float]) -> np.ndarray:
    """Separable Gaussian blur with reflected borders, one ``sigma`` per axis (0 skips an axis).

    The optical point-spread function of a widefield or confocal microscope is close to an
    anisotropic Gaussian (wider along Z), which is what this models.
    """
    out = np.asarray(image, dtype=np.float32)
    sigmas = [float(sigma)] * out.ndim if np.isscalar(sigma) else [float(s) for s in sigma]  # type: ignore[arg-type]
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        k = _kernel(s)
        r = len(k) // 2
        size = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect" if size > r else "edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out


def grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Open coordinate grids (broadcastable) of an array of ``shape``, as float32."""
    return [g.astype(np.float32) for g in np.ogrid[tuple(slice(0, int(s)) for s in shape)]]


def random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Draw a random rotation matrix (``ndim`` x ``ndim``), uniformly distributed."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def paint_ellipsoid(
    shape: Sequence[int],
    center: Sequence[float],
    radii: Sequence[float],
    rotation: np.ndarray | None = None,
    softness: float = 0.0,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Compute the occupancy (0-1) of an ellipsoid (ellipse in 2D) inside its bounding box.

    Parameters
    ----------
    shape
        Shape of the whole image.
    center, radii
        Centre and semi-axes in voxels, one per axis.
    rotation
        Rotation applied to the ellipsoid's axes (from :func:`random_rotation`); ``None`` keeps them
        aligned with the image axes.
    softness
        Width in voxels of a smooth edge; 0 gives a hard 0/1 mask.

    Returns
    -------
    tuple
        The bounding-box slices and the occupancy array of that box's shape (empty when the
        ellipsoid lies outside the image).
    """
    ndim = len(shape)
    reach = float(max(radii)) + 2.0 * softness + 1.0
    lo = [max(0, int(np.floor(c - reach))) for c in center]
    hi = [min(int(s), int(np.ceil(c + reach)) + 1) for c, s in zip(center, shape, strict=True)]
    box = tuple(slice(a, max(a, b)) for a, b in zip(lo, hi, strict=True))
    sub = [b.stop - b.start for b in box]
    if min(sub) <= 0:
        return box, np.zeros(sub, dtype=np.float32)
    coords = np.stack(
        np.meshgrid(
            *[np.arange(b.start, b.stop, dtype=np.float32) - c for b, c in zip(box, center, strict=True)], indexing="ij"
        ),
        axis=-1,
    )
    if rotation is not None:
        coords = coords @ rotation.astype(np.float32)
    r = np.sqrt(sum((coords[..., i] / float(radii[i])) ** 2 for i in range(ndim)))
    if softness <= 0:
        return box, (r <= 1.0).astype(np.float32)
    # distance to the surface approximated in voxels along the mean radius
    mean_radius = float(np.mean(radii))
    return box, np.clip(0.5 - (r - 1.0) * mean_radius / softness, 0.0, 1.0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """Smooth random texture with zero mean and unit standard deviation (blurred white noise)."""
    field = gaussian_blur(rng.standard_normal(tuple(int(s) for s in shape)).astype(np.float32), sigma)
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def tube_points(
    rng: np.random.Generator,
    shape: Sequence[int],
    length: float,
    step: float = 0.5,
    stiffness: float = 0.9,
) -> np.ndarray:
    """Points along a random smooth curve (a filament: microtubule, actin, neurite).

    The curve starts at a random point, keeps its direction with weight ``stiffness`` at every step,
    and stops after ``length`` voxels; points are ``step`` voxels apart, shape ``(n, ndim)``.
    """
    ndim = len(shape)
    pos = np.array([rng.uniform(0, s) for s in shape], dtype=np.float64)
    direction = rng.normal(size=ndim)
    direction /= np.linalg.norm(direction) + 1e-12
    n = max(2, int(length / step))
    points = np.empty((n, ndim), dtype=np.float64)
    for i in range(n):
        points[i] = pos
        turn = rng.normal(size=ndim)
        direction = stiffness * direction + (1.0 - stiffness) * turn
        direction /= np.linalg.norm(direction) + 1e-12
        pos = pos + step * direction
    return points


def splat_points(shape: Sequence[int], points: np.ndarray, weights: np.ndarray | float = 1.0) -> np.ndarray:
    """Accumulate weighted points into an image with linear interpolation (points outside are dropped)."""
    shape = tuple(int(s) for s in shape)
    out = np.zeros(shape, dtype=np.float32)
    pts = np.asarray(points, dtype=np.float64)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), (len(pts),))
    base = np.floor(pts).astype(np.int64)
    frac = pts - base
    ndim = len(shape)
    for corner in range(2**ndim):
        offs = np.array([(corner >> a) & 1 for a in range(ndim)])
        idx = base + offs
        cw = np.prod(np.where(offs == 1, frac, 1.0 - frac), axis=1) * w
        ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        np.add.at(out, tuple(idx[ok].T), cw[ok].astype(np.float32))
    return out


def poisson_gaussian(rng: np.random.Generator, clean: np.ndarray, photons: float, read_noise: float) -> np.ndarray:
    """Camera noise: shot noise at ``photons`` photons per unit intensity plus Gaussian read noise.

    The result stays in the units of ``clean`` (divided back by ``photons``), so a denoiser's target
    is ``clean`` itself.
    """
    counts = rng.poisson(np.clip(clean, 0.0, None).astype(np.float64) * photons)
    noisy = counts / photons + rng.normal(0.0, read_noise, size=clean.shape)
    return noisy.astype(np.float32)
