"""The reference tasks' trained weights: safetensors files shipped inside the package.

Floating-point tensors are stored in float16 (half the size; every file stays under 2 MB) and cast
back to float32 on load, so the network that is tested, compressed and benchmarked is exactly the
one the file holds. safetensors holds tensors only: loading runs no code, unlike a pickled
checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ebai.core.errors import ArtifactError, InputError, MissingDependencyError

__all__ = ["load_into", "read_metadata", "save_weights", "shipped_weights"]

_FORMAT = "ebai-task-weights/1"
_INSTALL = "pip install safetensors"


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch as st
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL) from exc
    return st


def shipped_weights(task: str) -> Path:
    """Path of the weights file shipped for ``task`` (``<package>/tasks/weights/<task>.safetensors``)."""
    from importlib.resources import files

    resource = files("ebai.tasks").joinpath("weights", f"{task}.safetensors")
    path = Path(str(resource))
    if not path.is_file():
        msg = (
            f"the trained weights of task {task!r} are missing from the package ({path}): "
            "reinstall ebai-tasks, or train them with packages/ebai-tasks/scripts/train_tasks.py"
        )
        raise ArtifactError(msg)
    return path


def save_weights(module: Any, path: Path | str, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``module``'s state dict to ``path`` as safetensors, floats in float16, atomically.

    A tensor the module registers under several names (MONAI's DynUNet lists its blocks twice) is
    stored once, the other names recorded as aliases in the header. ``metadata`` (JSON-ready) is
    stored in the header too, e.g. how the weights were trained.
    """
    import torch

    from ebai.core.files import atomic_file

    st = _safetensors_torch()
    state: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[int, tuple[int, ...], str], str] = {}
    for key, value in module.state_dict().items():
        ident = (value.data_ptr(), tuple(value.shape), str(value.dtype))
        if value.numel() and ident in first:
            aliases[key] = first[ident]
            continue
        first[ident] = key
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor.contiguous().clone()
    header = {
        "format": _FORMAT,
        "metadata": json.dumps(dict(metadata or {}), sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
    }
    path = Path(path)
    with atomic_file(path, overwrite=True) as tmp:
        st.save_file(state, str(tmp), metadata=header)
    return path


def read_metadata(path: Path | str) -> dict[str, Any]:
    """Read the metadata :func:`save_weights` stored in a weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
    if header.get("format") != _FORMAT:
        msg = f"{str(path)!r} is not an ebai task weights file (format {header.get('format')!r})"
        raise InputError(msg)
    return dict(json.loads(header.get("metadata", "{}")))


def load_into(module: Any, task: str, path: Path | str | None = None) -> None:
    """Load the weights of ``task`` (the shipped file, or ``path``) into ``module``, floats as float32."""
    st = _safetensors_torch()
    path = shipped_weights(task) if path is None else Path(path)
    from safetensors import safe_open

    try:
        state = st.load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            aliases = json.loads((fh.metadata() or {}).get("aliases", "{}"))
        state.update({alias: state[key] for alias, key in aliases.items()})
    except Exception as exc:
        msg = f"weights file {str(path)!r} cannot be read ({exc}): reinstall ebai-tasks"
        raise ArtifactError(msg) from exc
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        msg = (
            f"weights {str(path)!r} do not fit the {task} network (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "the package is inconsistent, reinstall ebai-tasks"
        )
        raise ArtifactError(msg)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
