"""Structured channel pruning with Torch-Pruning's dependency graph (DepGraph).

Whole channels are removed, so the pruned network is physically smaller and faster on any
backend (no sparse kernels needed). DepGraph finds the channels that must go together: the
two inputs of a residual addition, the parts of a skip concatenation, a convolution and its
BatchNorm, a transposed convolution and the layers it feeds.

Two things in common bioimaging networks trip Torch-Pruning 1.6 on torch 2.x, and are handled
here without changing the network's arithmetic: in-place activations (``ReLU(inplace=True)`` in
MONAI's BasicUNet) hide the layer before them from the tracer, so they run out of place while the
graph is traced; and a ``PReLU`` with one shared slope (MONAI's UNet) has no channel count of its
own, which breaks the channel bookkeeping of a following concatenation, so the count each such
PReLU sees is measured and kept up to date by a small custom pruner.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ebai.compress._recipe import PRUNE_METHODS, PruneSettings
from ebai.core.errors import InputError

__all__ = ["PruneResult", "count_macs_and_params", "output_layers", "prunable_layers", "prune"]

logger = logging.getLogger("ebai")

#: Each layer keeps at least this fraction of its channels under global pruning.
_MAX_LAYER_RATIO = 0.9


@dataclass(frozen=True)
class PruneResult:
    """A pruned network and what pruning did to it.

    Attributes
    ----------
    model
        The pruned ``torch.nn.Module`` (a new object; the input network is left untouched).
    settings
        The pruning settings used (method, ratio, layers kept, rounding).
    macs_before, macs_after, params_before, params_after
        Multiply-accumulates for one input of the example's shape (Torch-Pruning's counter, with
        each call site of a shared module counted once), and parameter counts.
    kept
        Names of the layers whose output channels were not pruned.
    channels
        Output channels of every convolution/linear layer, ``name -> (before, after)``.
    """

    model: Any
    settings: PruneSettings
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    kept: tuple[str, ...] = ()
    channels: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def mac_reduction(self) -> float:
        """How many times fewer MACs the pruned network needs."""
        return self.macs_before / max(self.macs_after, 1)

    @property
    def param_reduction(self) -> float:
        """How many times fewer parameters the pruned network has."""
        return self.params_before / max(self.params_after, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the artifact manifest (without the model)."""
        return {
            "method": self.settings.method,
            "ratio": self.settings.ratio,
            "global_pruning": self.settings.global_pruning,
            "round_to": self.settings.round_to,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "mac_reduction": round(self.mac_reduction, 3),
            "kept": list(self.kept),
            "channels": {k: list(v) for k, v in self.channels.items()},
            "tool": "torch-pruning",
        }


def _torch() -> Any:
    import torch

    return torch


def _example(example_input: Any) -> Any:
    torch = _torch()
    if isinstance(example_input, torch.Tensor):
        return example_input.detach().float()
    if isinstance(example_input, Sequence) and all(isinstance(s, int) for s in example_input):
        return torch.randn(tuple(example_input), generator=torch.Generator().manual_seed(0))
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:200]}"


def _prunable(module: Any) -> bool:
    torch = _torch()
    return isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))


def output_layers(model: Any, example_input: Any) -> list[str]:
    """Names of the layers whose output channels are the network's output channels.

    Found by walking the autograd graph back from the output until a convolution or linear layer
    is met, so normalisations, activations or a final addition after the last convolution do not
    hide it. Pruning these layers would change the number of output channels.
    """
    torch = _torch()
    x = _example(example_input).clone().requires_grad_(True)
    grad_fn_to_name: dict[Any, str] = {}

    def record(name: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                grad_fn_to_name[output.grad_fn] = name

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if _prunable(m)]
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    tensors = [t for t in _flatten(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    found: list[str] = []
    seen: set[Any] = set()
    stack = [t.grad_fn for t in tensors]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in grad_fn_to_name:
            name = grad_fn_to_name[fn]
            if name not in found:
                found.append(name)
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def _flatten(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _flatten(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _flatten(item)
    else:
        yield obj


def _importance(method: str) -> Any:
    import torch_pruning as tp

    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    msg = f"unknown pruning method {method!r}: use one of {', '.join(m for m in PRUNE_METHODS if m != 'none')}"
    raise InputError(msg)


def _match(model: Any, patterns: Sequence[str], what: str) -> dict[str, Any]:
    """Modules whose names match any of ``patterns`` (exact names or globs); unknown ones refused."""
    names = {n: m for n, m in model.named_modules() if n}
    out: dict[str, Any] = {}
    for pattern in patterns:
        hits = {n: m for n, m in names.items() if n == pattern or fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            sample = ", ".join(list(n for n, m in names.items() if _prunable(m))[:6])
            msg = f"{what} {pattern!r} matches no layer of the network: use module names such as {sample}"
            raise InputError(msg)
        out.update(hits)
    return out


def prunable_layers(model: Any, keep: Sequence[str] = ()) -> list[str]:
    """Names of the convolution and linear layers, in network order, outside the modules in ``keep``.

    ``keep`` holds module names or globs, as ``prune.keep`` does; a kept module keeps every layer
    inside it. Unknown names are refused with one line.
    """
    kept = _match(model, keep, "layer to keep") if keep else {}
    inside = {id(sub) for module in kept.values() for sub in module.modules()}
    return [n for n, m in model.named_modules() if n and _prunable(m) and id(m) not in inside]


@contextlib.contextmanager
def _tracing_friendly(model: Any) -> Iterator[None]:
    """Run in-place modules out of place and let every parameter take gradients, then restore."""
    inplace = [m for m in model.modules() if isinstance(getattr(m, "inplace", None), bool) and m.inplace]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for m in inplace:
        m.inplace = False
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for m in inplace:
            m.inplace = True
        for p in frozen:
            p.requires_grad_(False)


def _prelu_pruner(model: Any, example: Any) -> dict[Any, Any]:
    """Build a custom Torch-Pruning pruner for ``nn.PReLU`` that knows the channels each one sees."""
    torch = _torch()
    import torch_pruning as tp

    seen: dict[Any, set[int]] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        seen.setdefault(module, set()).add(int(args[0].shape[1]) if args[0].dim() > 1 else 1)

    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    if not prelus:
        return {}
    handles = [m.register_forward_hook(hook) for m in prelus]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()

    class SharedSlopePReLUPruner(tp.pruner.function.PReLUPruner):
        """Tracks the channel count of one-slope PReLUs as their neighbours are pruned."""

        def __init__(self, channels: dict[Any, int | None]) -> None:
            super().__init__()
            self.channels = channels

        def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
            if self.channels.get(layer) is not None:
                self.channels[layer] -= len(idxs)
            return super().prune_out_channels(layer, idxs)

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: Any) -> int | None:
            if layer.num_parameters > 1:
                return layer.num_parameters
            return self.channels.get(layer)

        get_in_channels = get_out_channels

    # a PReLU reused at places of different widths has no single channel count
    channels = {m: (next(iter(s)) if len(s) == 1 else None) for m, s in seen.items()}
    return {torch.nn.PReLU: SharedSlopePReLUPruner(channels)}


def _loose_scalars(model: Any) -> list[Any]:
    """Single-value parameters held by container modules (cellpose's ``diam_mean``), not by a layer.

    Torch-Pruning finds them outside any layer it knows and warns that it may prune them; a single
    value has no channel to prune, so they are declared and ignored instead.
    """
    loose = []
    for module in model.modules():
        if next(module.children(), None) is None:
            continue  # a layer: its parameters belong to its pruner
        loose.extend(p for p in module.parameters(recurse=False) if p.numel() == 1)
    return loose


def _unshare(model: Any) -> None:
    """Give every module reached from two parents its own copy, in place.

    Torch-Pruning's operation counter (ptflops') walks the module tree with ``Module.apply``, which
    meets a module shared by two parents twice: it then prints "variables __flops__ or __params__
    are already defined ... ptflops can affect your code!" once per visit and counts that
    module's operations under both parents. A copy per parent leaves each call site one module.
    """
    seen: set[int] = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in seen:
                setattr(parent, name, copy.deepcopy(child))
            else:
                seen.add(id(child))


def count_macs_and_params(model: Any, example: Any) -> tuple[int, int]:
    """Multiply-accumulates of one call on ``example`` and the number of parameters of ``model``.

    The network is left as it was, without counter attributes and without any output, however
    often it is counted.
    """
    import torch_pruning as tp

    counted = copy.deepcopy(model)
    _unshare(counted)
    macs, _ = tp.utils.count_ops_and_params(counted, example)
    return int(macs), int(sum(p.numel() for p in model.parameters()))


def _channels(model: Any) -> dict[str, int]:
    torch = _torch()
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, torch.nn.Linear):
            out[name] = int(m.out_features)
    return out


def prune(model: Any, example_input: Any, settings: PruneSettings | None = None) -> PruneResult:
    """Remove the least important channels of a network, keeping its input and output layout.

    Parameters
    ----------
    model
        A ``torch.nn.Module``; it is copied, never changed.
    example_input
        One input batch (tensor or array ``(N, C, *tile)``) or its shape; used to trace the
        channel dependencies and to count MACs.
    settings
        Method, ratio, layers to keep, per-layer ratios, global ranking and rounding, as a
        recipe's ``prune`` section holds them; by default L1 importance at ratio 0.5. The output
        layer(s) (found with :func:`output_layers`) are always kept.

    Returns
    -------
    PruneResult
        The pruned copy with MACs/parameters before and after.

    Raises
    ------
    InputError
        For settings that ask for no pruning, a ``keep`` name that matches no layer, or a network
        whose channel dependencies Torch-Pruning cannot follow.
    """
    torch = _torch()
    import torch_pruning as tp

    settings = PruneSettings(method="l1") if settings is None else settings
    if not settings.enabled:
        msg = "prune() was given method 'none': name a method (l1, l2, fpgm) or skip pruning"
        raise InputError(msg)
    importance = _importance(settings.method)

    if isinstance(model, torch.jit.ScriptModule):
        msg = (
            "a TorchScript model cannot be pruned (its channels cannot be traced): give the Python factory and "
            "weights instead, or use prune method 'none'"
        )
        raise InputError(msg)
    net = copy.deepcopy(model).cpu().eval()
    example = _example(example_input)
    before = _channels(net)
    with torch.no_grad():
        reference_shape = tuple(net(example).shape)
    macs_before, params_before = count_macs_and_params(net, example)
    with _tracing_friendly(net), torch.enable_grad():  # DepGraph traces with autograd, even under a caller's no_grad
        outputs = output_layers(net, example)
        ignored = {n: net.get_submodule(n) for n in outputs}
        ignored.update(_match(net, settings.keep, "layer to keep"))
        ratio_dict = {}
        for pattern, value in settings.layer_ratios.items():
            for module in _match(net, [pattern], "layer ratio key").values():
                for sub in module.modules():
                    if _prunable(sub):
                        ratio_dict[sub] = value
        customized = _prelu_pruner(net, example)
        scalars = _loose_scalars(net)
        try:
            pruner = tp.pruner.BasePruner(
                net,
                example,
                importance=importance,
                pruning_ratio=settings.ratio,
                pruning_ratio_dict=ratio_dict or None,
                global_pruning=settings.global_pruning,
                max_pruning_ratio=_MAX_LAYER_RATIO if settings.global_pruning else 1.0,
                ignored_layers=[*ignored.values(), *scalars],
                unwrapped_parameters=[(p, 0) for p in scalars] or None,
                round_to=settings.round_to if settings.round_to > 1 else None,
                customized_pruners=customized or None,
            )
            pruner.step()
        except InputError:
            raise
        except Exception as exc:
            msg = (
                f"Torch-Pruning cannot follow the channels of {type(model).__name__} ({_first_line(exc)}); "
                "prune with method 'none', or keep the layers involved with prune.keep"
            )
            raise InputError(msg) from exc
    net.eval()
    try:
        with torch.no_grad():
            shape = tuple(net(example).shape)
    except Exception as exc:
        msg = f"the pruned network no longer runs ({_first_line(exc)}): keep the layers named in the error with prune.keep"
        raise InputError(msg) from exc
    if shape != reference_shape:
        msg = f"pruning changed the output shape from {reference_shape} to {shape}: keep the output layers with prune.keep"
        raise InputError(msg)
    macs_after, params_after = count_macs_and_params(net, example)
    after = _channels(net)
    result = PruneResult(
        model=net,
        settings=settings,
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
        kept=tuple(sorted(ignored)),
        channels={n: (before[n], after.get(n, before[n])) for n in before},
    )
    logger.info(
        "pruned %s (%s, ratio %.2f): MACs %.3g -> %.3g (%.2fx), parameters %d -> %d",
        type(model).__name__,
        settings.method,
        settings.ratio,
        macs_before,
        macs_after,
        result.mac_reduction,
        params_before,
        params_after,
    )
    return result
