"""``prune.spare``: keep whole the layers whose cut costs the most accuracy for the least time.

MACs are a poor guide to where pruning buys time. On the label-free reference network, cutting
half of every layer's channels removes 3.9x of the MACs but only 1.39x of the int8 latency, and the
layers whose cut hurts most are thin full-resolution ones that save least: cutting
``body.convs.1.0`` alone dropped Pearson to the original to 0.21 and saved 0.54 of 19.8 ms.

So each prunable layer is cut alone at its ratio, and two things are measured: the time saved on
the target backend at the target precision (every variant lowered and timed in the same
interleaved rounds as the unpruned network), and the fidelity to the original on the validation
tiles before any distillation. Layers are then spared (kept whole) in order of fidelity lost per
second saved, while the time they would have saved stays within ``spare`` of the summed savings.
A layer whose cut costs no fidelity is never spared; one that saves no time but costs fidelity is
spared first. When the single-layer savings together come to less than 5% of the unpruned time,
they cannot be told from timing noise, and no layer is spared.

Single-layer savings do not add up exactly to the saving of cutting every layer (on label-free
they sum to 7.4 ms against 5.6 ms), so the budget is a share of the summed single-layer savings:
a ranking, not a latency prediction. Layers tied by a residual addition are cut together by
Torch-Pruning; probed alone with their partner kept, such a layer shows no saving and no loss and
is not spared.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ebai.compress._guard import run_batches, score_per_tile
from ebai.compress._onnx_export import export_onnx
from ebai.compress._pruning import output_layers, prunable_layers, prune
from ebai.compress._recipe import PruneSettings
from ebai.core.interfaces import Backend, Engine
from ebai.core.latency import measure_interleaved
from ebai.core.torch_runner import torch_infer

__all__ = ["LayerCost", "Sparing", "backend_timer", "choose_spared", "resolved", "spare_layers"]

logger = logging.getLogger("ebai")

#: Single-layer savings summing to less than this share of the unpruned time are timing noise.
_RESOLVABLE = 0.05
#: Name under which the unpruned network is timed alongside the single-layer cuts.
_WHOLE = "(unpruned)"
_BATCH = 4


@dataclass(frozen=True)
class LayerCost:
    """What cutting one layer alone costs and buys.

    Attributes
    ----------
    name
        Module name of the layer.
    fidelity
        The guard's metric against the original on the validation tiles, with only this layer cut
        and no distillation.
    loss
        ``fidelity`` below that of the original against itself (the metric's best value).
    saved_s
        Median time per call saved on the target backend against the unpruned network (may be
        slightly negative: a cut that buys nothing, within the timing noise).
    """

    name: str
    fidelity: float
    loss: float
    saved_s: float

    @property
    def gain(self) -> float:
        """The saving, where there is one: a cut measured slower than the whole network saves nothing."""
        return max(self.saved_s, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the manifest."""
        return {
            "layer": self.name,
            "fidelity": round(self.fidelity, 5),
            "loss": round(self.loss, 5),
            "saved_ms": round(self.saved_s * 1e3, 4),
        }


@dataclass(frozen=True)
class Sparing:
    """The layers kept whole, and the per-layer measurements that chose them.

    Attributes
    ----------
    share
        The ``prune.spare`` asked for: share of the summed single-layer savings that may be given up.
    spared
        Names of the layers kept whole, the worst trade first.
    costs
        Every layer probed, in network order.
    whole_s
        Median time per call of the unpruned network on the target backend.
    backend, precision
        Where the time was measured.
    metric
        Name of the fidelity metric.
    seconds
        Wall time of the probes (pruning, scoring, lowering, timing).
    """

    share: float
    spared: tuple[str, ...]
    costs: tuple[LayerCost, ...]
    whole_s: float
    backend: str
    precision: str
    metric: str
    seconds: float

    @property
    def given_up_s(self) -> float:
        """Summed single-layer savings of the spared layers."""
        spared = set(self.spared)
        return sum(c.gain for c in self.costs if c.name in spared)

    @property
    def saved_s(self) -> float:
        """Summed single-layer savings of every probed layer."""
        return _summed(self.costs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the manifest's pruning section."""
        return {
            "share": self.share,
            "spared": list(self.spared),
            "given_up_ms": round(self.given_up_s * 1e3, 4),
            "saved_ms": round(self.saved_s * 1e3, 4),
            "whole_ms": round(self.whole_s * 1e3, 4),
            "backend": self.backend,
            "precision": self.precision,
            "metric": self.metric,
            "seconds": round(self.seconds, 1),
            "resolved": resolved(self.costs, self.whole_s),
            "layers": [c.to_dict() for c in self.costs],
        }


def resolved(costs: Sequence[LayerCost], whole_s: float) -> bool:
    """Whether the single-layer savings rise above the timing noise: together at least 5% of the whole time.

    In one ``ebai report`` run on the denoising reference network (a MONAI UNet), with unit tests
    running beside it, the single-layer cuts saved 0.1 ms of 8.1 ms in all: every saving was noise,
    so "saves nothing" made every sensitive layer free to keep and the "50%" network ended with
    1.05x fewer MACs. Rerun on the idle CPU they saved 4.8 of 16 ms (29%); on the label-free,
    nuclei and semantic networks 48-63%.
    """
    return _summed(costs) >= _RESOLVABLE * whole_s


def _summed(costs: Sequence[LayerCost]) -> float:
    return sum(c.gain for c in costs)


def choose_spared(costs: Sequence[LayerCost], share: float) -> tuple[str, ...]:
    """Layers to keep whole: most fidelity lost per second saved first, within ``share`` of the savings.

    A layer that saves nothing (``saved_s <= 0``) but loses fidelity costs no time to spare and
    comes first; a layer that loses no fidelity is never spared. A layer too expensive for what
    is left of the budget is passed over, and cheaper ones after it may still be spared. (Whether
    the savings can be told from noise at all is :func:`resolved`'s question, asked first.)
    """
    budget = share * _summed(costs)
    lossy = [c for c in costs if c.loss > 0]
    ranked = sorted(lossy, key=lambda c: c.loss / c.saved_s if c.saved_s > 0 else float("inf"), reverse=True)
    spared: list[str] = []
    given = 0.0
    for cost in ranked:
        if given + cost.gain <= budget + 1e-15:
            spared.append(cost.name)
            given += cost.gain
    return tuple(spared)


#: ``time_models(models) -> median seconds per call`` of each named network on the target backend.
TimeModels = Callable[[Mapping[str, Any]], Mapping[str, float]]


def backend_timer(
    backend: Backend,
    precision: str,
    input_spec: Any,
    calibration: Sequence[np.ndarray],
    batch: np.ndarray,
    *,
    opset: int,
    exporter: str,
    rounds: int,
    warmup: int,
    repeats: int = 3,
) -> TimeModels:
    """Return a ``time_models`` that lowers each network with ``backend`` at ``precision`` and times them together.

    Every network is lowered as the target's first variant lowers it (exported to ONNX first,
    unless the backend runs torch modules), loaded, and timed on ``batch`` in the same
    interleaved rounds; the scratch files go when the timing is done.
    """
    options = dict(next(iter(backend.variants(precision)), {}))
    example = batch[:1]
    tiles = list(calibration)
    lower = backend.lower_module if backend.lowers_module else backend.lower

    def time_models(models: Mapping[str, Any]) -> dict[str, float]:
        root = Path(tempfile.mkdtemp(prefix="ebai-spare-"))
        engines: dict[str, Engine] = {}
        try:
            for i, (name, module) in enumerate(models.items()):
                folder = root / f"probe{i}"
                folder.mkdir()
                # a backend that runs torch modules gets the module, any other its ONNX export
                source = (
                    module
                    if backend.lowers_module
                    else export_onnx(module, root / f"probe{i}.onnx", example, opset=opset, exporter=exporter).path
                )
                lowering = lower(
                    source, folder, precision=precision, input_spec=input_spec, calibration=tiles, options=options
                )
                engines[name] = backend.load(folder, lowering)
            calls = {name: (lambda e=engine: e.infer(batch)) for name, engine in engines.items()}
            stats = measure_interleaved(calls, rounds=rounds, repeats=repeats, warmup=warmup)
        finally:
            for engine in engines.values():
                engine.close()
            shutil.rmtree(root, ignore_errors=True)
        return {name: s.median_s for name, s in stats.items()}

    return time_models


def spare_layers(
    original: Any,
    example: Any,
    settings: PruneSettings,
    validation: Sequence[np.ndarray],
    validation_original: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    time_models: TimeModels,
    *,
    metric_name: str,
    backend: str,
    precision: str,
) -> Sparing:
    """Probe every prunable layer cut alone and choose the layers to keep whole.

    Parameters
    ----------
    original
        The network to prune (never changed).
    example
        One input batch, to trace channels.
    settings
        The recipe's ``prune`` section: its method, ratio, ``layer_ratios``, ``keep`` and
        ``round_to`` shape each probe; ``spare`` is the share of the savings that may be given up.
    validation, validation_original
        Validation tiles and the original's outputs on them.
    metric
        ``metric(candidate, reference)`` on output batches, higher is better (the guard's).
    time_models
        Lowers each named network for the target and returns its median time per call, all timed
        in the same interleaved rounds.
    metric_name, backend, precision
        For the record.
    """
    started = time.perf_counter()
    ignored = set(output_layers(original, example))
    candidates = [n for n in prunable_layers(original, settings.keep) if n not in ignored]
    perfect = score_per_tile(metric, validation_original, validation_original)
    probes: dict[str, Any] = {_WHOLE: original}
    fidelity: dict[str, float] = {}
    # each probe alone: per layer, never ranked across layers
    alone = replace(settings, rounds=1, global_pruning=False, spare=0.0)
    for name in candidates:
        others = tuple(n for n in candidates if n != name)
        cut = prune(original, example, replace(alone, keep=(*settings.keep, *others))).model
        probes[name] = cut
        fidelity[name] = score_per_tile(metric, run_batches(torch_infer(cut), validation, _BATCH), validation_original)
    logger.info("timing %d single-layer cuts on %s %s to choose layers to spare", len(candidates), backend, precision)
    medians = time_models(probes)
    whole = float(medians[_WHOLE])
    costs = tuple(
        LayerCost(name, fidelity[name], max(perfect - fidelity[name], 0.0), whole - float(medians[name]))
        for name in candidates
    )
    clear = resolved(costs, whole)
    spared = choose_spared(costs, settings.spare) if clear else ()
    if not clear:
        logger.warning(
            "prune.spare: the single-layer cuts saved %.3g ms of %.3g ms in all, within the timing noise; "
            "no layer is kept whole, every layer is pruned at its ratio",
            _summed(costs) * 1e3,
            whole * 1e3,
        )
    sparing = Sparing(
        share=settings.spare,
        spared=spared,
        costs=costs,
        whole_s=whole,
        backend=backend,
        precision=precision,
        metric=metric_name,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "sparing %d of %d layers (%s): %.3g of %.3g ms of single-layer savings given up",
        len(spared),
        len(costs),
        ", ".join(spared) or "none",
        sparing.given_up_s * 1e3,
        sparing.saved_s * 1e3,
    )
    return sparing
