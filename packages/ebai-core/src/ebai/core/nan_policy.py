"""What ``ebai run`` does with NaN/Inf input values (``--nan-policy``), for whole images and blocks.

NaN or Inf in an input spreads through normalisation (a z-score over the image becomes NaN) and
through every tile that sees it, so by default an image holding any is refused; ``zero`` sets them
to 0 first (the statistics are then taken over the zeroed image), ``ignore`` passes them on. The
in-memory path applies the policy to the whole image, the block path to every region it reads
(the statistics pass and each block), which gives the same result.
"""

from __future__ import annotations

import numpy as np

from ebai.core.errors import InputError

__all__ = ["NAN_POLICIES", "apply_nan_policy", "count_nonfinite"]

#: What ``--nan-policy`` does with NaN/Inf input pixels: refuse the image, set them to 0, or pass them on.
NAN_POLICIES = ("error", "zero", "ignore")


def count_nonfinite(x: np.ndarray) -> int:
    """Count NaN/Inf values, in slices so no image-sized mask is allocated."""
    if not np.issubdtype(x.dtype, np.floating):
        return 0
    flat = x.reshape(-1)
    step = 1 << 22
    return sum(
        int(flat[i : i + step].size - np.count_nonzero(np.isfinite(flat[i : i + step])))
        for i in range(0, flat.size, step)
    )


def apply_nan_policy(sample: np.ndarray, policy: str, what: str) -> tuple[np.ndarray, int]:
    """Apply ``policy`` to ``sample``; return it (zeroed in place under ``zero``) and its NaN/Inf count.

    ``what`` names the image (and region) in the error ``error`` raises. Under ``ignore`` nothing
    is counted (0 is returned).
    """
    if policy not in NAN_POLICIES:
        msg = f"unknown NaN policy {policy!r}: use one of {', '.join(NAN_POLICIES)}"
        raise InputError(msg)
    if policy == "ignore":
        return sample, 0
    bad = count_nonfinite(sample)
    if not bad:
        return sample, 0
    if policy == "zero":
        # in place unless the array is a read-only view (a memory-mapped NPY region)
        return np.nan_to_num(sample, copy=not sample.flags.writeable, nan=0.0, posinf=0.0, neginf=0.0), bad
    msg = (
        f"{what} holds {bad} NaN/Inf value(s) of {sample.size}: fix the image, or pass --nan-policy zero "
        "(set them to 0) or --nan-policy ignore (keep them; they spread through normalisation and the model)"
    )
    raise InputError(msg)
