"""Entry point of the ``openvino`` backend: a small spec that imports only ebai.core."""

from __future__ import annotations

from ebai.core.install_hints import install_line
from ebai.core.plugins import PluginSpec

backend = PluginSpec(
    name="openvino",
    package="ebai-openvino",
    target="ebai.openvino._backend:OpenVINOBackend",
    requires=("openvino", "nncf"),
    install=install_line("openvino"),
)
