"""Pruning in rounds: the ratio reached in equal cuts, each followed by its share of the distillation.

Cutting half the channels at once can destroy a network's function, which distillation must then
rebuild almost from scratch; cut in steps, each distillation only repairs a small change. Used by
a fixed ratio (``prune.rounds``) and by every probe of the ``--prune auto`` search alike, so a
searched ratio is judged as the chosen network will be made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ebai.compress._distillation import distill
from ebai.compress._pruning import prune
from ebai.compress._recipe import FineTuneSettings, PruneSettings

__all__ = ["prune_in_rounds", "round_cut"]

logger = logging.getLogger("ebai")


def round_cut(
    settings: PruneSettings, targets: Mapping[str, tuple[int, int]], current: Mapping[str, int], i: int
) -> PruneSettings:
    """Return round ``i``'s settings: each layer cut ``i / rounds`` of the way from its original channels to its last.

    Torch-Pruning keeps ``int(channels * (1 - ratio))`` of a layer, so equal ratios per round would
    floor the counts round after round, and rounding to ``round_to`` at the last cut would floor them
    again (a 32-channel layer of the label-free network ended at 8 instead of 16 after 5 rounds to 50%).
    Each round therefore names every layer's own count: layers already there are kept whole.
    """
    ratios, keep = {}, list(settings.keep)
    for name, (before, after) in targets.items():
        goal = before - round((before - after) * i / settings.rounds)
        have = current[name]
        if goal < have:
            ratios[name] = 1.0 - (goal + 0.5) / have  # int(have * (1 - ratio)) == goal
        else:
            keep.append(name)
    return replace(
        settings,
        layer_ratios=ratios,
        keep=tuple(keep),
        global_pruning=False,
        rounds=1,
        round_to=1,
    )


def prune_in_rounds(
    model: Any,
    teacher: Any,
    example: Any,
    settings: PruneSettings,
    tuning: FineTuneSettings,
    train: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    *,
    tile: Sequence[int],
    seed: int,
    metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Prune ``model`` to ``settings.ratio`` in ``settings.rounds`` equal cuts, distilling from ``teacher`` after each.

    The channels each layer ends with are those of one cut at the full ratio (same ranking and
    rounding); after round ``i`` each layer has gone ``i / rounds`` of the way there. The
    distillation's steps and time budget are shared equally. Returns the network and two records
    that read as one pruning (MACs and channels from the original to the last cut) and one
    distillation (steps and seconds summed, fidelity before the first and after the last), each
    with its per-round details.
    """
    rounds = settings.rounds
    share = replace(
        tuning,
        steps=max(1, tuning.steps // rounds),
        budget_minutes=None if tuning.budget_minutes is None else tuning.budget_minutes / rounds,
    )
    cuts: list[dict[str, Any]] = []
    tunes: list[dict[str, Any]] = []
    # one cut at the full ratio (the recipe's ranking, global or per layer, and rounding) says how
    # many channels each layer ends with; the rounds get there in steps
    final = prune(model, example, replace(settings, rounds=1))
    targets = dict(final.channels)
    current = {name: before for name, (before, _) in targets.items()}

    for i in range(1, rounds + 1):
        pruned = prune(model, example, round_cut(settings, targets, current, i))
        current = {name: after for name, (_, after) in pruned.channels.items()}
        result = distill(
            pruned.model, teacher, train, share, tile=tile, validation=validation, seed=seed, metric=metric
        )
        model, tuned = result.model, result.to_dict()
        left = 1 - settings.ratio * i / rounds
        cuts.append({"left": round(left, 4), "macs_after": pruned.macs_after})
        tunes.append(tuned)
        logger.info(
            "pruning round %d/%d: %.0f%% of the original channels left, validation pearson %.4f after %d steps",
            i,
            rounds,
            100 * left,
            tuned.get("pearson_after", float("nan")),
            tuned.get("steps", 0),
        )
    # the original's MACs, parameters and channels are the one cut's "before"; the rest is the last round's
    pruning = pruned.to_dict()
    pruning.update(
        {
            "ratio": settings.ratio,
            "global_pruning": settings.global_pruning,
            "round_to": settings.round_to,
            "kept": list(final.kept),
            "rounds": rounds,
            "per_round": cuts,
            "macs_before": final.macs_before,
            "params_before": final.params_before,
            "mac_reduction": round(final.macs_before / max(pruned.macs_after, 1), 3),
            "channels": {k: [targets[k][0], after] for k, (_, after) in pruned.channels.items()},
        }
    )
    fine_tuning = dict(tunes[-1])
    fine_tuning.update(
        {
            "steps": sum(t.get("steps", 0) for t in tunes),
            "budget": tuning.steps,
            "seconds": round(sum(t.get("seconds", 0.0) for t in tunes), 2),
            "pearson_before": tunes[0].get("pearson_before"),
            "loss_before": tunes[0].get("loss_before"),
            "rounds": [{k: t.get(k) for k in ("steps", "pearson_before", "pearson_after", "seconds")} for t in tunes],
        }
    )
    return model, pruning, fine_tuning
