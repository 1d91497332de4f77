"""Plugin discovery through entry points, loading only what is asked for.

Three groups: ``ebai.backends`` and ``ebai.adapters`` name a :class:`PluginSpec` (a small object
in a module that imports only ``ebai.core``), ``ebai.cli`` names a click command. Looking a plugin
up never imports another plugin's code, and a missing or broken one is reported with the exact
``pip install`` line that fixes it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from ebai.core.errors import BackendUnavailableError, InputError, MissingDependencyError, PluginNotFoundError
from ebai.core.install_hints import plugin_install_line

__all__ = [
    "ADAPTERS",
    "BACKENDS",
    "CLI",
    "Availability",
    "PluginSpec",
    "build_adapter",
    "clear_cache",
    "get_adapter",
    "get_backend",
    "get_plugin",
    "import_object",
    "plugin_names",
]

BACKENDS = "ebai.backends"
ADAPTERS = "ebai.adapters"
CLI = "ebai.cli"

_KIND = {BACKENDS: "backend", ADAPTERS: "adapter", CLI: "command"}


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
        try:
            return import_object(self.target)
        except ImportError as exc:
            if isinstance(exc, MissingDependencyError):
                raise
            msg = f"{self.name!r} cannot be imported ({exc}): {self.install_line}"
            raise MissingDependencyError(msg) from exc


def import_object(ref: str) -> Any:
    """Return the object named by ``package.module:attr`` or ``path/to/file.py:attr``.

    The one ``module:attr`` resolver of ebai: entry-point targets, model factories
    (``ebai compress model.py:build``) and fine-tuning callbacks all go through it. The attribute
    may be dotted (``module:Class.build``) or empty (the module itself). A ``.py`` file is imported
    once under a name made from its path, with its folder importable meanwhile so that its own
    sibling imports work.

    Raises
    ------
    FileNotFoundError
        When a ``.py`` file is named and does not exist.
    ImportError
        When the module cannot be imported (as Python raised it, so callers can name the install).
    AttributeError
        When the module has no such attribute.
    """
    left, sep, attr = ref.rpartition(":")
    if not sep:
        left, attr = ref, ""
    if left.endswith(".py"):
        path = Path(left).expanduser()
        if not path.is_file():
            msg = f"no such Python file: {left!r}"
            raise FileNotFoundError(msg)
        obj: Any = _import_file(path)
    else:
        obj = importlib.import_module(left)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _import_file(path: Path) -> Any:
    """Import a Python file as a uniquely named module (its folder is importable meanwhile)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_ebai_user_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"{str(path)!r} cannot be imported as Python: give a .py file"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


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
        home = plugin_install_line(group, name)
        if home:
            msg = f"{kind} {name!r} is not installed: {home}"
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


def build_adapter(description: Mapping[str, Any] | str, config: Mapping[str, Any] | None = None) -> Any:
    """Rebuild an adapter from its description (a manifest's ``source``), or from a name and its config.

    The one way ebai rebuilds an adapter (``ebai.adapters.build_adapter`` is this function). The
    class is looked up in the ``ebai.adapters`` entry-point group, so only installed code runs: a
    third-party tool's adapter is rebuilt as readily as a built-in one, and a missing tool raises
    :class:`~ebai.core.MissingDependencyError` with its ``pip install`` line. The settings are only
    passed to the adapter's constructor, which builds pre/post-processing; the network the settings
    name is built by ``load_module`` alone, which ebai calls on a manifest's adapter only when the
    user passes ``--trust-source``.

    Parameters
    ----------
    description
        ``{"adapter": name, "config": {...}}`` (a manifest's ``source``), or the adapter name.
    config
        Settings when ``description`` is a name, or settings that override the description's.
    """
    if isinstance(description, str):
        name, settings = description, dict(config or {})
    else:
        if not isinstance(description, Mapping) or "adapter" not in description:
            shown = dict(description) if isinstance(description, Mapping) else description
            msg = f"adapter description {shown!r} names no adapter: it needs an 'adapter' key"
            raise InputError(msg)
        settings = description.get("config") or {}
        if not isinstance(settings, Mapping):
            msg = f"adapter description's config is a {type(settings).__name__}, not a mapping of settings"
            raise InputError(msg)
        name, settings = description["adapter"], {**settings, **(config or {})}
    cls = get_adapter(str(name))
    return cls.from_config(settings)
