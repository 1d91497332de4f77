"""Entry-point spec of the ``task`` adapter; importing this module imports only ``ebai.core``."""

from __future__ import annotations

from ebai.core.install_hints import install_line
from ebai.core.plugins import PluginSpec

__all__ = ["task"]

task = PluginSpec(
    name="task",
    package="ebai-tasks",
    target="ebai.tasks._adapter:TaskAdapter",
    requires=("torch", "monai", "safetensors"),
    install=install_line("tasks"),
)
