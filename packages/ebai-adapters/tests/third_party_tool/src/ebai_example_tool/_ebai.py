"""The entry point ebai discovers: a PluginSpec that imports only ebai.core (cheap to list)."""

from __future__ import annotations

from ebai.core import PluginSpec

adapter = PluginSpec(
    name="example-denoiser",
    package="ebai-example-tool",
    target="ebai_example_tool.adapter:DenoiserAdapter",
    requires=("torch",),
    install="pip install ebai-example-tool",
)
