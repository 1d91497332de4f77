"""``--prune auto``: the largest pruning ratio whose distilled network still reaches a stated fidelity.

Users know the accuracy they need, not the ratio that gives it. Each probe prunes the original
network with one criterion at one ratio, distils it as a fixed ratio would be, and scores it with
the guard's metric against the original on the validation tiles (cut from the training images,
so the guard's held-out images still decide the final verdict unseen). Fidelity falls as the
ratio grows, so the ratios are bisected on a grid; every probe, kept or not, is recorded as the
trade-off curve, and the search stops when its time budget is spent. A probe must clear the target
by ``search.margin`` (int8 lowering loses a little more, and the guard then holds the lowered
network to the target itself); the passing probe that cuts the most MACs is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ebai.compress._distillation import distill
from ebai.compress._guard import run_batches, score_per_tile
from ebai.compress._pruning import prune
from ebai.compress._recipe import FineTuneSettings, PruneSettings, SearchSettings
from ebai.compress._rounds import prune_in_rounds
from ebai.core.errors import FidelityError
from ebai.core.torch_runner import torch_infer

__all__ = ["SearchResult", "search_ratio"]

logger = logging.getLogger("ebai")


@dataclass(frozen=True)
class SearchResult:
    """The network of the largest passing ratio and every probe of the search.

    Attributes
    ----------
    model
        The pruned and distilled network chosen.
    pruning, fine_tuning
        Its pruning and distillation records, as a fixed ratio would give them.
    probes
        Every probe: criterion, ratio, validation fidelity, passed, MAC reduction, steps, seconds.
    target
        The fidelity asked for.
    metric
        Name of the fidelity metric (the probes' key for it).
    seconds
        Wall time of the search.
    budget_spent
        Whether the time budget ended the search before the grid was exhausted.
    """

    model: Any
    pruning: dict[str, Any]
    fine_tuning: dict[str, Any]
    probes: list[dict[str, Any]]
    target: float
    metric: str
    seconds: float
    budget_spent: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the search (the trade-off curve), for the manifest."""
        return {
            "target": self.target,
            "metric": self.metric,
            "chosen": {"method": self.pruning["method"], "ratio": self.pruning["ratio"]},
            "probes": self.probes,
            "seconds": round(self.seconds, 1),
            "budget_spent": self.budget_spent,
        }


def _grid(settings: SearchSettings) -> list[float]:
    count = int(round((settings.high - settings.low) / settings.step)) + 1
    return [round(settings.low + i * settings.step, 4) for i in range(count)]


def _probe(
    original: Any,
    example: Any,
    settings: PruneSettings,
    fine_tune: FineTuneSettings,
    train: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    *,
    tile: Sequence[int],
    seed: int,
    metric: Callable[[np.ndarray, np.ndarray], float],
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Prune and distil one probe as a fixed ratio would be: in ``settings.rounds`` cuts, or at once."""
    if settings.rounds > 1 and fine_tune.enabled:
        return prune_in_rounds(
            original, original, example, settings, fine_tune, train, validation, tile=tile, seed=seed, metric=metric
        )
    pruned = prune(original, example, settings)
    tuned = distill(
        pruned.model, original, train, fine_tune, tile=tile, validation=validation, seed=seed, metric=metric
    )
    return tuned.model, pruned.to_dict(), tuned.to_dict()


def search_ratio(
    original: Any,
    example: Any,
    train: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    validation_original: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    prune_settings: PruneSettings,
    fine_tune: FineTuneSettings,
    search: SearchSettings,
    target: float,
    metric_name: str,
    tile: Sequence[int],
    seed: int = 0,
) -> SearchResult:
    """Bisect the pruning ratio, per criterion, for the largest that reaches ``target``.

    Parameters
    ----------
    original
        The network to prune (never changed) and the distillation teacher.
    example
        One input batch, to trace channels and count MACs.
    train, validation, validation_original
        Training images for distillation; validation tiles and the original's outputs on them.
    metric
        ``metric(candidate, reference)`` on output batches, higher is better (the guard's).
    prune_settings, fine_tune, search
        The recipe's ``prune`` (its ``keep``, ``round_to``, ... are used at every probe),
        ``fine_tune`` and ``search`` sections.
    target
        Lowest accepted fidelity of the pruned, distilled fp32 network.
    metric_name, tile, seed
        For messages; crop shape and seed of distillation.

    Raises
    ------
    FidelityError
        When no ratio of the grid reaches ``target``, naming the best fidelity reached.
    """
    started = time.perf_counter()
    deadline = started + search.budget_minutes * 60
    grid = _grid(search)
    probes: list[dict[str, Any]] = []
    best: tuple[float, Any, dict[str, Any], dict[str, Any]] | None = None  # (MAC reduction, model, pruning, tuning)
    spent = False
    scored: dict[tuple[str, float], float] = {}
    for method in search.methods:
        lo, hi = -1, len(grid)  # grid[lo] passes, grid[hi] fails (sentinels outside the grid)
        while hi - lo > 1:
            if time.perf_counter() > deadline:
                spent = True
                break
            mid = (lo + hi) // 2
            ratio = grid[mid]
            began = time.perf_counter()
            settings = dataclasses.replace(prune_settings, method=method, ratio=ratio)
            model, pruning, tuning = _probe(
                original, example, settings, fine_tune, train, validation, tile=tile, seed=seed, metric=metric
            )
            value = score_per_tile(metric, run_batches(torch_infer(model), list(validation)), validation_original)
            # Torch-Pruning leaves layers whole when the ratio would round their channels to nothing, so a
            # larger ratio can cut fewer MACs: such a probe buys nothing and counts as a failure
            reduction = float(pruning["mac_reduction"])
            smaller = [p["mac_reduction"] for p in probes if p["method"] == method and p["ratio"] < ratio]
            degenerate = bool(smaller) and round(reduction, 3) <= max(smaller)
            passed = value >= target + search.margin and not degenerate
            scored[(method, ratio)] = value
            probes.append(
                {
                    "method": method,
                    "ratio": ratio,
                    metric_name: round(value, 5),
                    "passed": passed,
                    "degenerate": degenerate,
                    "mac_reduction": round(reduction, 3),
                    "params_after": pruning["params_after"],
                    "steps": tuning["steps"],
                    "seconds": round(time.perf_counter() - began, 1),
                }
            )
            logger.info(
                "search: %s %.2f -> %s %.4f (%s)", method, ratio, metric_name, value, "pass" if passed else "fail"
            )
            if passed:
                lo = mid
                if best is None or reduction > best[0]:
                    best = (reduction, model, pruning, tuning)
            else:
                hi = mid
        if spent:
            break
    seconds = time.perf_counter() - started
    if best is None:
        top = max(scored.items(), key=lambda kv: kv[1]) if scored else None
        reached = (
            f"the best was {top[0][0]} at ratio {top[0][1]:g}: {metric_name} {top[1]:.4f}"
            if top
            else "no probe finished"
        )
        msg = (
            f"no pruning ratio from {grid[0]:g} to {grid[-1]:g} ({', '.join(search.methods)}) reaches {metric_name} "
            f"{target:g}{f' + margin {search.margin:g}' if search.margin else ''} against the original after distillation within {search.budget_minutes:g} min ({reached}); "
            "nothing was written: lower --min-fidelity, give more --steps or --budget-minutes, or skip pruning"
        )
        raise FidelityError(msg)
    _, model, pruning, tuning = best
    logger.info(
        "search: kept %s at ratio %.2f after %d probes in %.0f s",
        pruning["method"],
        pruning["ratio"],
        len(probes),
        seconds,
    )
    return SearchResult(model, pruning, tuning, probes, target, metric_name, seconds, spent)
