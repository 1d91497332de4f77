"""Building torch modules from what users point at: factories, TorchScript files, state dicts.

Loading a pickled object runs its code, so state dicts are read with ``weights_only=True`` and a
whole pickled model is read only when the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line

__all__ = [
    "INIT_SEED",
    "SCRIPT_SUFFIXES",
    "import_factory",
    "import_torch",
    "is_factory_ref",
    "load_state_dict",
    "load_weights",
    "module_from_reference",
]

#: File suffixes taken as a saved model (TorchScript, or a pickled model with trust_pickle).
SCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
#: Keys under which training frameworks nest a state dict inside a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


#: Seed every network is built under, so that two builds without weights are the same network.
INIT_SEED = 0


@contextlib.contextmanager
def seeded_init(seed: int = INIT_SEED) -> Iterator[None]:
    """Build networks under a fixed torch seed without touching the caller's random state.

    ``load_module`` promises a fresh copy of the same network on every call; a network built
    without weights is randomly initialised, so it must be initialised identically each time.
    """
    torch = import_torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def import_torch(extra: str = "torch") -> Any:
    """Import torch, or raise :class:`MissingDependencyError` with the install line for ``extra``."""
    try:
        import torch
    except ImportError as exc:
        msg = install_line(extra)
        raise MissingDependencyError(msg) from exc
    return torch


def is_factory_ref(ref: str) -> bool:
    """Whether ``ref`` reads as ``path/to/file.py:factory`` or ``package.module:factory``."""
    if Path(ref).suffix.lower() in SCRIPT_SUFFIXES:
        return False
    left, sep, attr = ref.rpartition(":")
    if not sep or not left or not _DOTTED.match(attr):
        return False
    return left.endswith(".py") or bool(_DOTTED.match(left))


def import_factory(ref: str) -> Callable[..., Any]:
    """Return the callable named by ``path/to/file.py:factory`` or ``package.module:factory``.

    The attribute may be dotted (``module:Class.build``).
    """
    from ebai.core.plugins import import_object

    left, _, attr = ref.rpartition(":")
    try:
        obj = import_object(ref)
    except FileNotFoundError:
        msg = f"model file {left!r} does not exist: check the path before ':{attr}'"
        raise InputError(msg) from None
    except ModuleNotFoundError as exc:
        if left.endswith(".py"):
            raise
        msg = (
            f"module {left!r} of {ref!r} cannot be imported ({exc}): install its package or give path/to/file.py:{attr}"
        )
        raise InputError(msg) from exc
    except AttributeError:
        msg = f"{left!r} has no {attr!r}: name a function or class defined there"
        raise InputError(msg) from None
    if not callable(obj):
        msg = f"{ref!r} is a {type(obj).__name__}, not a function or class: name the factory that builds the network"
        raise InputError(msg)
    return obj


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state dict safely (``weights_only=True``), unwrapping common checkpoint layouts.

    Accepts a bare state dict, a checkpoint that nests one under ``state_dict``,
    ``model_state_dict``, ``model``, ``net`` or ``network`` (Lightning, plain training loops), and
    strips a ``module.`` prefix left by ``DataParallel``.
    """
    torch = import_torch()
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"weights file {str(path)!r} does not exist: give the path of a saved state dict"
        raise InputError(msg)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = (
            f"weights {str(path)!r} cannot be read as a state dict ({type(exc).__name__}): save them with "
            "torch.save(model.state_dict(), path); a whole pickled model needs trust_pickle=True"
        )
        raise InputError(msg) from exc
    if isinstance(data, Mapping) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        for key in _NESTED_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data:
        msg = f"weights {str(path)!r} hold a {type(data).__name__}, not a state dict: save model.state_dict()"
        raise InputError(msg)
    state = dict(data)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(module: Any, weights: str | Path, *, strip_prefix: str = "") -> None:
    """Load the state dict at ``weights`` into ``module`` strictly, naming mismatched keys.

    Parameters
    ----------
    module
        The network to fill.
    weights
        Path of a state dict (see :func:`load_state_dict`).
    strip_prefix
        A prefix every key carries and the module lacks (e.g. ``"net."`` in a Lightning checkpoint).
    """
    state = load_state_dict(weights)
    if strip_prefix:
        state = {k[len(strip_prefix) :] if k.startswith(strip_prefix) else k: v for k, v in state.items()}
    own = set(module.state_dict())
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        msg = (
            f"weights {str(weights)!r} do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}"
            f"{' (and more)' if len(missing) > 5 or len(unexpected) > 5 else ''}; check the architecture settings"
        )
        raise InputError(msg)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        msg = f"weights {str(weights)!r} do not fit the network ({detail}): check the architecture settings"
        raise InputError(msg) from exc


def _load_saved_model(path: Path, trust_pickle: bool) -> Any:
    torch = import_torch()
    if not path.is_file():
        msg = f"model file {str(path)!r} does not exist: give a TorchScript file or path/to/file.py:factory"
        raise InputError(msg)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        if not trust_pickle:
            msg = (
                f"{str(path)!r} is not TorchScript; if it is a whole pickled model, loading it runs its code: pass "
                "trust_pickle=True (--trust-pickle) only if you trust its author, or give module:factory with weights"
            )
            raise InputError(msg) from exc
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        msg = f"{str(path)!r} holds a {type(model).__name__}, not a network: give module:factory with the state dict as weights"
        raise InputError(msg)
    return model


def module_from_reference(
    model: Any,
    *,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Build a fresh eval-mode CPU module from an ``nn.Module``, a factory reference or a saved file.

    Parameters
    ----------
    model
        An ``nn.Module`` (deep-copied), ``"path/to/file.py:factory"``, ``"package.module:factory"``
        (called with ``model_kwargs`` under a fixed seed, so that every call without weights
        builds the same network), or a TorchScript file (``.pt``, ``.pth``, ``.ts``).
    weights
        State dict loaded into the module (not allowed with a TorchScript file, which holds its own).
    trust_pickle
        Allow a ``.pt``/``.pth`` file that is a whole pickled model, which runs code on load.
    model_kwargs
        Keyword arguments of the factory.
    """
    torch = import_torch()
    if isinstance(model, torch.nn.Module):
        import copy

        module = copy.deepcopy(model)
    elif isinstance(model, (str, Path)):
        ref = str(model)
        if is_factory_ref(ref):
            factory = import_factory(ref)
            with seeded_init():
                module = factory(**dict(model_kwargs or {}))
            if not isinstance(module, torch.nn.Module):
                msg = f"{ref!r} returned a {type(module).__name__}, not a torch.nn.Module: return the network"
                raise InputError(msg)
        elif Path(ref).suffix.lower() in SCRIPT_SUFFIXES:
            module = _load_saved_model(Path(ref).expanduser(), trust_pickle)
            if weights is not None and isinstance(module, torch.jit.ScriptModule):
                msg = f"{ref!r} is TorchScript and holds its own weights: drop the weights {str(weights)!r}"
                raise InputError(msg)
        else:
            msg = (
                f"model {ref!r} is not understood: give path/to/file.py:factory, package.module:factory, "
                f"or a TorchScript file ending in {', '.join(SCRIPT_SUFFIXES)}"
            )
            raise InputError(msg)
    else:
        msg = f"model is a {type(model).__name__}: give a torch.nn.Module, 'module:factory' or a TorchScript file"
        raise InputError(msg)
    if weights is not None:
        load_weights(module, weights)
    return module.eval().cpu()
