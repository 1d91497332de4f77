"""Setting up a run of an artifact, shared by ``ebai run`` and ``ebai benchmark``.

Picking the target, parsing engine options and rebuilding the adapter named in the manifest.
The adapter is rebuilt from installed code only, for its pre/post-processing; the network its
settings name is never built here (see :func:`ebai.core.plugins.build_adapter`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click
import yaml

from ebai.core.artifact import Artifact
from ebai.core.errors import EbaiError, InputError
from ebai.core.install_hints import install_line
from ebai.core.manifest import TargetRecord
from ebai.core.plugins import ADAPTERS, build_adapter, plugin_names

logger = logging.getLogger("ebai")

__all__ = ["engine_option", "engine_options", "load_adapter", "parse_target", "pick_target"]


def parse_target(value: str | None) -> tuple[str | None, str | None]:
    """Split ``backend:precision`` (either part may be left out, e.g. ``openvino`` or ``:int8``)."""
    if not value:
        return None, None
    backend, _, precision = value.partition(":")
    return backend or None, precision or None


def pick_target(artifact: Artifact, value: str | None) -> TargetRecord:
    """Return the target ``--target`` names, or the artifact's first (preferred) one."""
    backend, precision = parse_target(value)
    return artifact.target(backend, precision)


def engine_option(help_text: str) -> Any:
    """Declare the repeatable ``-O/--engine-option KEY=VALUE`` option, collected as ``options``."""
    return click.option("-O", "--engine-option", "options", multiple=True, metavar="KEY=VALUE", help=help_text)


def engine_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` engine options; values are read as YAML scalars (``4``, ``f32``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            msg = f"engine option {pair!r} is not KEY=VALUE: write e.g. -O num_threads=2"
            raise InputError(msg)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def load_adapter(source: dict[str, Any] | Any) -> tuple[Any | None, str]:
    """Rebuild the adapter the manifest's ``source`` names; ``(None, why)`` when that is not possible.

    The artifact runs without its adapter (raw model output); the reason tells the user what is lost.
    """
    name = (source or {}).get("adapter") if hasattr(source, "get") else None
    if not name:
        return None, "the artifact names no adapter"
    if name not in plugin_names(ADAPTERS):
        return None, f"adapter {name!r} is not installed here ({install_line('adapters')})"
    try:
        adapter = build_adapter(source)
    except (EbaiError, ImportError, TypeError, ValueError) as exc:
        return None, f"adapter {name!r} cannot be rebuilt ({exc})"
    return adapter, ""
