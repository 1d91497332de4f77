"""The accuracy guard: how closely a compressed model reproduces the original, on held-out tiles.

Pearson correlation and the largest absolute error are measured on the raw outputs of every
target; the adapter's own task metric (``ModelSource.evaluate``, e.g. AP at IoU 0.5 for instance
masks) on postprocessed outputs. One of them, named by the recipe, decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ebai.core.errors import InputError
from ebai.core.interfaces import ModelSource
from ebai.core.manifest import FidelityRecord
from ebai.core.metrics import max_abs_error, pearson, ssim

__all__ = ["BUILTIN_METRICS", "FidelityJudge", "compare", "run_batches", "score_per_tile"]

#: Metrics the guard computes itself; any other name must come from the adapter's ``evaluate``.
BUILTIN_METRICS = ("pearson", "ssim")


def run_batches(
    infer: Callable[[np.ndarray], np.ndarray], tiles: Sequence[np.ndarray], batch_size: int = 4
) -> np.ndarray:
    """Run ``infer`` over ``tiles`` ``(C, *tile)`` in batches; returns ``(N, C_out, *tile)`` float32."""
    outs = []
    for start in range(0, len(tiles), batch_size):
        batch = np.stack([np.asarray(t, dtype=np.float32) for t in tiles[start : start + batch_size]])
        outs.append(np.asarray(infer(batch), dtype=np.float32))
    return np.concatenate(outs, axis=0)


def score_per_tile(
    metric: Callable[[np.ndarray, np.ndarray], float], candidate: np.ndarray, reference: np.ndarray
) -> float:
    """Mean of ``metric`` over tiles, each scored as a batch of one.

    As accuracy-aware lowering scores its validation pairs, so validation figures from the
    pipeline, the ``--prune auto`` search and the backend's fallback compare.
    """
    return float(np.mean([metric(c[np.newaxis], r[np.newaxis]) for c, r in zip(candidate, reference, strict=True)]))


def _ssim(candidate: np.ndarray, reference: np.ndarray) -> float:
    scores = []
    for c_tile, r_tile in zip(candidate, reference, strict=False):
        for c_ch, r_ch in zip(c_tile, r_tile, strict=False):
            span = float(np.max(r_ch) - np.min(r_ch)) or 1e-12
            scores.append(ssim(c_ch, r_ch, data_range=span))
    return float(np.mean(scores))


class FidelityJudge:
    """Scores candidate outputs against one set of reference outputs with the recipe's criterion.

    Parameters
    ----------
    source
        The model source, for ``postprocess`` and ``evaluate`` (task metrics).
    reference
        Outputs ``(N, C_out, *tile)`` to compare with (the original network's on the held-out tiles).
    metric, threshold
        The deciding metric (higher is better) and its lowest accepted value.
    """

    def __init__(self, source: ModelSource, reference: np.ndarray, metric: str, threshold: float) -> None:
        self.source = source
        self.reference = np.asarray(reference, dtype=np.float32)
        self.metric = metric
        self.threshold = float(threshold)
        self._post_reference = [source.postprocess(r) for r in self.reference]

    def check_metric(self) -> None:
        """Refuse a deciding metric that is neither built in nor given by the adapter."""
        if self.metric in BUILTIN_METRICS:
            return
        task = self.source.evaluate(self._post_reference[0], self._post_reference[0])
        if self.metric not in task:
            offered = ", ".join([*BUILTIN_METRICS, *task])
            msg = f"fidelity metric {self.metric!r} is not measured for this model: use one of {offered}"
            raise InputError(msg)

    def task_metrics(self, candidate: np.ndarray) -> dict[str, float]:
        """Mean of the adapter's ``evaluate`` over tiles, on postprocessed outputs."""
        sums: dict[str, list[float]] = {}
        for c, r in zip(candidate, self._post_reference, strict=False):
            for key, value in self.source.evaluate(self.source.postprocess(c), r).items():
                sums.setdefault(key, []).append(float(value))
        return {k: float(np.mean(v)) for k, v in sums.items()}

    def measure(self, candidate: np.ndarray) -> FidelityRecord:
        """Pearson, max error, task metrics and the verdict for ``candidate`` outputs."""
        candidate = np.asarray(candidate, dtype=np.float32)
        metrics = self.task_metrics(candidate)
        if self.metric == "ssim" and "ssim" not in metrics:
            metrics["ssim"] = _ssim(candidate, self.reference)
        value_pearson = pearson(candidate, self.reference)
        value = value_pearson if self.metric == "pearson" else metrics[self.metric]
        return FidelityRecord(
            pearson=value_pearson,
            max_abs_error=max_abs_error(candidate, self.reference),
            samples=len(candidate),
            metric=self.metric,
            threshold=self.threshold,
            passed=bool(value >= self.threshold),
            metrics=metrics,
        )

    def value(self, record: FidelityRecord) -> float:
        """Return the deciding value of a record."""
        return record.pearson if record.metric == "pearson" else float(record.metrics[record.metric])

    def batch_metric(self) -> Callable[[np.ndarray, np.ndarray], float]:
        """``metric(candidate, reference)`` on output batches, as accuracy-aware lowering takes it."""
        source, name = self.source, self.metric

        def metric(candidate: np.ndarray, reference: np.ndarray) -> float:
            candidate = np.asarray(candidate, dtype=np.float32)
            reference = np.asarray(reference, dtype=np.float32)
            if name == "pearson":
                return pearson(candidate, reference)
            if name == "ssim":
                return _ssim(candidate, reference)
            values = [
                source.evaluate(source.postprocess(c), source.postprocess(r))[name]
                for c, r in zip(candidate, reference, strict=False)
            ]
            return float(np.mean(values))

        return metric


def compare(candidate: np.ndarray, reference: np.ndarray) -> Mapping[str, float]:
    """Pearson and max error of two output sets (for the lowered-vs-reference breakdown)."""
    return {"pearson": pearson(candidate, reference), "max_abs_error": max_abs_error(candidate, reference)}
