"""ebai.adapters: the SDK tool authors build on, and adapters for torch, MONAI, cellpose, mmv_im2im, bioimage.io.

Importing this package imports numpy and ``ebai.core`` only; torch and each tool are imported when
an adapter first needs them, and a missing one raises
:class:`~ebai.core.MissingDependencyError` whose message is the ``pip install`` line.

A tool author subclasses :class:`Adapter` and registers it under the ``ebai.adapters`` entry-point
group with a :class:`ebai.core.PluginSpec` (see the package README for a complete example).
"""

from __future__ import annotations

from ebai.adapters._adapter import Adapter, build_adapter, normalization_from
from ebai.adapters._bioimageio import BioImageIOAdapter, load_bioimageio
from ebai.adapters._bioimageio_export import export_bioimageio
from ebai.adapters._bioio import BioImageFiles, list_bioimages, read_bioimage
from ebai.adapters._cellpose import CellposeAdapter
from ebai.adapters._loading import load_state_dict, load_weights, module_from_reference, seeded_init
from ebai.adapters._mmv_im2im import MmvIm2ImAdapter
from ebai.adapters._monai import MonaiAdapter
from ebai.adapters._torch import TorchAdapter

__all__ = [
    "Adapter",
    "BioImageFiles",
    "BioImageIOAdapter",
    "CellposeAdapter",
    "MmvIm2ImAdapter",
    "MonaiAdapter",
    "TorchAdapter",
    "build_adapter",
    "export_bioimageio",
    "list_bioimages",
    "load_bioimageio",
    "load_state_dict",
    "load_weights",
    "module_from_reference",
    "normalization_from",
    "read_bioimage",
    "seeded_init",
]
