"""Import OpenVINO and NNCF on first use, with the exact install line when they are missing."""

from __future__ import annotations

from types import ModuleType

from ebai.core.errors import MissingDependencyError
from ebai.core.install_hints import install_line

__all__ = ["require_nncf", "require_openvino"]

_INSTALL = f"{install_line('openvino')}  (or: pip install 'openvino>=2025.0' 'nncf>=2.16')"


def require_openvino() -> ModuleType:
    """Return the ``openvino`` module, or raise :class:`MissingDependencyError` with the pip line."""
    try:
        import openvino
    except ImportError as exc:
        msg = f"OpenVINO is not installed ({exc}): {_INSTALL}"
        raise MissingDependencyError(msg) from exc
    return openvino


def require_nncf() -> ModuleType:
    """Return the ``nncf`` module (needed for int8 only), or raise with the pip line."""
    try:
        import nncf
    except ImportError as exc:
        msg = f"NNCF is not installed ({exc}), it is needed for int8: {_INSTALL}"
        raise MissingDependencyError(msg) from exc
    return nncf
