"""A small denoising tool; its network is :func:`ebai_example_tool.model.build_denoiser`."""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
