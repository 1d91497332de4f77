"""One way to run a torch network on numpy batches, for everything that compares against torch.

It lives in the core, which never imports torch at import time, so that the adapters (the
original network behind ``Adapter.predict``) and ebai-compress (the guard's reference outputs)
share it without either package depending on the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["torch_infer"]


def torch_infer(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Return a numpy-in, numpy-out function running ``module`` in eval mode without gradients.

    Parameters
    ----------
    module
        A ``torch.nn.Module`` (or TorchScript module); it is put in eval mode.

    Returns
    -------
    Callable
        Maps a float32 batch ``(N, C, *spatial)`` to the network's output as float32 numpy.
    """
    import torch

    module.eval()

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return out.detach().float().cpu().numpy()

    return infer
