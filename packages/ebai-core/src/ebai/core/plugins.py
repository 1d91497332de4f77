"""Plugin discovery through entry points, loading only what is asked for.

Three groups: ``ebai.backends`` and ``ebai.adapters`` name a :class:`PluginSpec` (a small object
in a module that imports only ``ebai.core``), ``ebai.cli`` names a click command. Looking a plugin
up never imports another plugin's code, and a missing or broken one is reported with the exact
``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ebai.core.errors import BackendUnavailableError, MissingDependencyError, PluginNotFoundError

__all__ = [
    "ADAPTERS",
    "BACKENDS",
    "CLI",
    "Availability",
    "PluginSpec",
    "clear_cache",
    "get_adapter",
    "get_backend",
    "get_plugin",
    "plugin_names",
]

BACKENDS = "ebai.backends"
ADAPTERS = "ebai.adapters"
CLI = "ebai.cli"

_KIND = {BACKENDS: "backend", ADAPTERS: "adapter", CLI: "command"}
#: Where a plugin that is not installed at all comes from, for the error message.
_KNOWN_HOMES = {
    (BACKENDS, "openvino"): "ebai-openvino",
    (BACKENDS, "tensorrt"): "ebai-tensorrt",
    (ADAPTERS, "torch"): "ebai-adapters",
    (ADAPTERS, "monai"): "ebai-adapters[monai]",
    (ADAPTERS, "cellpose"): "ebai-adapters[cellpose]",
    (ADAPTERS, "mmv_im2im"): "ebai-adapters[mmv_im2im]",
    (CLI, "compress"): "ebai-compress",
    (ADAPTERS, "task"): "ebai-tasks",
    (CLI, "demo"): "ebai-tasks",
    (CLI, "report"): "ebai-tasks",
    (CLI, "sweep"): "ebai-tasks",
}


@dataclass(frozen=True)
class Availability:
    """Whether a plugin can be used here; ``reason`` says why not and what to do."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class PluginSpec:
    """A lightweight description of a backend or adapter, named by an entry point.

    Attributes
    ----------
    name
        The name users type (``"openvino"``, ``"cellpose"``).
    package
        Distribution that provides the plugin, for messages and ``ebai info``.
    target
        ``"module:attribute"`` of the implementation, imported by :meth:`load` only.
    requires
        Importable modules the implementation needs; checked without importing them.
    install
        The pip line that provides ``requires`` (default ``pip install <package>``).
    probe
        Optional check run by :meth:`is_available` after ``requires`` (a GPU, a driver);
        returns ``None`` when fine, else the reason.
    details
        Optional one-line description of what the plugin found (library version, GPU, driver),
        shown by ``ebai info``; must be cheap and must not import the implementation.
    """

    name: str
    package: str
    target: str
    requires: tuple[str, ...] = ()
    install: str = ""
    probe: Callable[[], str | None] | None = None
    details: Callable[[], str] | None = None

    @property
    def install_line(self) -> str:
        """The exact command that installs what this plugin needs."""
        return self.install or f"pip install {self.package}"

    def missing(self) -> list[str]:
        """List required modules that cannot be found (checked without importing them)."""
        out = []
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(mod)
        return out

    def is_available(self) -> Availability:
        """Check ``requires`` and the probe; never raises."""
        missing = self.missing()
        if missing:
            return Availability(False, f"needs {', '.join(missing)}: {self.install_line}")
        if self.probe is not None:
            try:
                reason = self.probe()
            except Exception as exc:  # a probe must never break discovery
                reason = f"availability check failed: {exc}"
            if reason:
                return Availability(False, reason)
        return Availability(True)

    def load(self) -> Any:
        """Import and return the implementation; a missing dependency names its install line."""
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if isinstance(exc, MissingDependencyError):
                raise
            msg = f"{self.name!r} cannot be imported ({exc}): {self.install_line}"
            raise MissingDependencyError(msg) from exc
        obj: Any = module
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def clear_cache() -> None:
    """Forget discovered entry points (after installing a package in the same process)."""
    _entry_points.cache_clear()
    _load_spec.cache_clear()


def plugin_names(group: str) -> list[str]:
    """Sorted names registered in ``group``; nothing is imported."""
    return sorted(_entry_points(group))


def entry_point(group: str, name: str) -> EntryPoint:
    """Return the entry point ``name`` of ``group``, or raise a :class:`PluginNotFoundError` with the fix."""
    eps = _entry_points(group)
    if name not in eps:
        kind = _KIND.get(group, "plugin")
        home = _KNOWN_HOMES.get((group, name))
        if home:
            msg = f"{kind} {name!r} is not installed: pip install {home}"
            raise PluginNotFoundError(msg)
        known = ", ".join(sorted(eps)) or "none"
        msg = f"unknown {kind} {name!r}: installed {kind}s are {known}"
        raise PluginNotFoundError(msg)
    return eps[name]


@cache
def _load_spec(group: str, name: str) -> PluginSpec:
    ep = entry_point(group, name)
    try:
        spec = ep.load()
    except Exception as exc:
        dist = ep.dist.name if ep.dist else "its package"
        msg = f"{_KIND.get(group, 'plugin')} {name!r} is broken ({exc}): reinstall {dist}"
        raise PluginNotFoundError(msg) from exc
    if not isinstance(spec, PluginSpec):
        msg = f"entry point {name!r} in {group} does not name a PluginSpec: report this to its package"
        raise PluginNotFoundError(msg)
    return spec


def get_plugin(group: str, name: str) -> PluginSpec:
    """Return the :class:`PluginSpec` registered as ``name`` in ``group`` (only it is imported)."""
    return _load_spec(group, name)


def get_backend(name: str) -> Any:
    """Return an instance of the backend ``name``, refusing with the reason when it cannot run here."""
    spec = get_plugin(BACKENDS, name)
    avail = spec.is_available()
    if not avail:
        msg = f"backend {name!r} is not available: {avail.reason}"
        raise BackendUnavailableError(msg)
    return spec.load()()


def get_adapter(name: str) -> Any:
    """Return the adapter class registered as ``name``, with an install hint when its tool is missing."""
    spec = get_plugin(ADAPTERS, name)
    avail = spec.is_available()
    if not avail:
        msg = f"adapter {name!r} needs: {spec.install_line}"
        raise MissingDependencyError(msg)
    return spec.load()
