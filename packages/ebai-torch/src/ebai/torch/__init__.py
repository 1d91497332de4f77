"""ebai.torch: compressed networks on any NVIDIA GPU without TensorRT, and back inside PyTorch tools.

The ``torch`` target of an artifact is the (pruned, fine-tuned) network as a ``torch.export``
program (``model.pt2``: the graph as JSON, weights as raw tensors; no pickled code, no source
needed to load it). It runs in fp32, TF32, fp16 or bf16 on a CUDA GPU or the CPU; the layout
(channels-last), ``torch.compile`` and CUDA graphs are measured on the user's machine at first
load and the choice cached per GPU, torch and CUDA version.

>>> import ebai.torch                                                       # doctest: +SKIP
>>> net = ebai.torch.load_module("denoiser.ebai", precision="fp16")        # a torch.nn.Module
>>> from monai.inferers import sliding_window_inference
>>> out = sliding_window_inference(image, (32, 128, 128), 8, net)

Importing this package does not import torch; :func:`load_module` and the backend's ``load`` do.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("ebai-torch")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from ebai.torch._archive import check_archive, load_program
from ebai.torch._backend import ENTRY_FILE, LOAD_OPTIONS, TorchBackend
from ebai.torch._choice import ChoiceStore, DeviceIdentity, choice_key
from ebai.torch._config import MODES, PRECISIONS, RunConfig
from ebai.torch._engine import TorchEngine

if TYPE_CHECKING:
    from ebai.core.artifact import Artifact
    from ebai.torch._module import TorchModule

__all__ = [
    "ENTRY_FILE",
    "LOAD_OPTIONS",
    "MODES",
    "PRECISIONS",
    "ChoiceStore",
    "DeviceIdentity",
    "RunConfig",
    "TorchBackend",
    "TorchEngine",
    "TorchModule",
    "__version__",
    "check_archive",
    "choice_key",
    "load_module",
    "load_program",
]


def load_module(artifact: str | Path | Artifact, precision: str | None = None, **options: Any) -> TorchModule:
    """Give a PyTorch tool the compressed network of ``artifact`` as a ready ``torch.nn.Module``.

    Parameters
    ----------
    artifact
        An ``.ebai`` folder (verified on opening) or an opened :class:`~ebai.core.Artifact`.
    precision
        Which torch target to use (``fp32``, ``tf32``, ``fp16``, ``bf16``); ``None`` takes the
        artifact's first torch target.
    **options
        Load options of the torch target: ``device`` (``auto``: a CUDA GPU if torch sees one),
        ``tune``, ``batch``, ``channels_last``, ``compile``, ``cuda_graph``, ``cache_dir``
        (see :class:`TorchBackend`).

    Returns
    -------
    TorchModule
        ``module(x)`` takes a tensor ``(N, C, *tile)`` on any device and returns the network's output
        in ``x``'s dtype and device. Inference only; call ``module.close()`` to free GPU memory.

    Raises
    ------
    InputError
        For an unknown precision name or option.
    ebai.core.errors.ArtifactError
        When the artifact has no torch target at that precision, or its program is damaged.
    """
    from ebai.core.artifact import Artifact
    from ebai.torch._config import check_precision
    from ebai.torch._module import TorchModule

    if precision is not None:
        check_precision(str(precision))
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    target = art.target("torch", precision)
    engine = TorchBackend().load(art.path / target.directory, target.lowering(), **options)
    return TorchModule(engine)


def __getattr__(name: str) -> Any:
    if name == "TorchModule":  # imports torch, so only when asked for
        from ebai.torch._module import TorchModule

        return TorchModule
    msg = f"module 'ebai.torch' has no attribute {name!r}"
    raise AttributeError(msg)
