"""Entry-point specs of the built-in adapters; importing this module imports only ``ebai.core``.

Each :class:`~ebai.core.PluginSpec` names the adapter class, the modules it needs (checked without
importing them) and the ``pip install`` line that provides them, which ``ebai info`` and
:func:`ebai.core.get_adapter` show when something is missing.
"""

from __future__ import annotations

from ebai.core.install_hints import install_line
from ebai.core.plugins import PluginSpec

__all__ = ["cellpose", "mmv_im2im", "monai", "torch"]

torch = PluginSpec(
    name="torch",
    package="ebai-adapters",
    target="ebai.adapters._torch:TorchAdapter",
    requires=("torch",),
    install=install_line("torch"),
)

monai = PluginSpec(
    name="monai",
    package="ebai-adapters",
    target="ebai.adapters._monai:MonaiAdapter",
    requires=("torch", "monai"),
    install=install_line("monai"),
)

cellpose = PluginSpec(
    name="cellpose",
    package="ebai-adapters",
    target="ebai.adapters._cellpose:CellposeAdapter",
    requires=("torch", "cellpose", "fastremap"),
    install=install_line("cellpose"),
)

mmv_im2im = PluginSpec(
    name="mmv_im2im",
    package="ebai-adapters",
    target="ebai.adapters._mmv_im2im:MmvIm2ImAdapter",
    requires=("torch", "mmv_im2im"),
    install=install_line("mmv_im2im"),
)
