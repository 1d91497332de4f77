"""Mixed precision by measurement: each layer runs in int8 only where int8 is faster on this CPU.

Why: on CPUs whose default precision is bf16 with AMX, a bf16 convolution with few channels at
full resolution runs as fast as its int8 twin or faster (AMX tiles want many channels), and every
int8 layer brings FakeQuantize operations and layout conversions (``Reorder``) around it. On a
MONAI BasicUNet 2D with instance norm, quantizing every layer made int8 slower than OpenVINO's
default (0.8x); its full-resolution 32-channel convolutions ran 1.0-1.4x *slower* in int8. And a
transposed convolution rewritten as a convolution plus pixel shuffle (:mod:`ebai.openvino._deconvolution`)
pays only where OpenVINO would otherwise run it in f32 (CPUs without AMX); with AMX it runs in bf16
and the pixel shuffle is pure cost.

How (:func:`choose`): quantize every layer without rewrites; profile it and the float model at the
default precision in turns (``PERF_COUNT``, :mod:`ebai.openvino._profile`); keep at the default
precision the compute layers whose int8 time is above :data:`KEEP_RATIO` of their default time
(median over the rounds), and rewrite the transposed convolutions that ran in f32; quantize again
with those choices; then time the default, all-int8 and mixed models in interleaved rounds, once in
that order within each round and once in the opposite order, and keep the int8 model whose lesser
paired speed-up over the default (:func:`ebai.core.latency.paired_speedup`) of the two timings is
the largest, if it clears :data:`PICK_MARGIN` (:func:`pick`). Where none does, every layer is kept
at the default precision (the artifact is then the float model: never slower than the default, and
the record says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebai.core.profiling import LayerProfile

__all__ = ["KEEP_RATIO", "PICK_MARGIN", "PrecisionChoice", "choose", "f32_deconvolutions", "pick", "slow_int8_layers"]

#: A layer stays int8 only where its int8 kernel took at most this fraction of its time at the
#: default precision: the margin pays for the quantize operations and layout conversions around it.
KEEP_RATIO = 0.8
#: Layer types NNCF quantizes whose int8 and default kernels can be compared one to one.
_COMPUTE = ("Convolution", "GroupConvolution", "MatMul", "FullyConnected", "ConvolutionBackpropData")
_ROUNDS, _REPEATS = 11, 2


def slow_int8_layers(
    int8: LayerProfile | Sequence[LayerProfile],
    default: LayerProfile | Sequence[LayerProfile],
    ratio: float = KEEP_RATIO,
) -> list[str]:
    """Compute layers that ran in int8 in ``int8`` but took more than ``ratio`` x their time in ``default``.

    Given profiles taken in turns (round ``i`` of each, moments apart), each layer's ratio is
    taken round by round and the median decides, so a machine that switched speed between two
    profiles does not decide for it. Layers are matched by name; a layer missing from either
    profile (fused, rewritten) is left as it is.
    """
    int8_runs = [int8] if isinstance(int8, LayerProfile) else list(int8)
    default_runs = [default] if isinstance(default, LayerProfile) else list(default)
    if not int8_runs or len(int8_runs) != len(default_runs):
        msg = f"slow_int8_layers needs profiles taken in pairs, got {len(int8_runs)} and {len(default_runs)}"
        raise ValueError(msg)
    out = []
    for name, (kind, precision, _) in int8_runs[0].layers.items():
        if kind not in _COMPUTE or precision != "i8":
            continue
        ratios = []
        for i8, df in zip(int8_runs, default_runs, strict=True):
            if name not in i8.layers or name not in df.layers or df.layers[name][1] == "i8":
                break
            ratios.append(i8.layers[name][2] / max(df.layers[name][2], 1e-12))
        else:
            if float(np.median(ratios)) > ratio:
                out.append(name)
    return sorted(out)


def f32_deconvolutions(profile: LayerProfile) -> list[str]:
    """Transposed convolutions the CPU ran in f32: rewriting them lets them run in int8."""
    return sorted(
        name
        for name, (kind, precision, _) in profile.layers.items()
        if kind == "ConvolutionBackpropData" and precision == "f32"
    )


@dataclass(frozen=True)
class PrecisionChoice:
    """What :func:`choose` decided and measured, as recorded in the manifest.

    Attributes
    ----------
    keep_default
        Layers left unquantized, so they run at the backend's default precision.
    rewritten
        Transposed convolutions rewritten as convolution + pixel shuffle.
    int8_layers
        Compute layers that run in int8 in the chosen model.
    chosen
        ``"all-int8"``, ``"mixed"`` or ``"default"`` (nothing quantized: int8 did not pay here).
    speedups
        Each int8 candidate's paired speed-up over the float model at the default precision, timed
        in the same interleaved rounds on this machine (:func:`ebai.core.latency.paired_speedup`).
    reversed_speedups
        The same from a second timing with the models in the opposite order within each round;
        with ``speedups``, what decides (:func:`pick`).
    timings, medians
        Fastest and median call of every model in the first timing, in seconds, for the record.
    """

    keep_default: tuple[str, ...]
    rewritten: tuple[str, ...]
    int8_layers: tuple[str, ...]
    chosen: str
    speedups: dict[str, float]
    reversed_speedups: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Return the manifest record: layers by precision and the measured gain over the default."""
        return {
            "chosen": self.chosen,
            "layers_int8": list(self.int8_layers),
            "layers_default_precision": list(self.keep_default),
            "deconvolutions_rewritten": list(self.rewritten),
            "fastest_ms": {k: round(v * 1e3, 3) for k, v in self.timings.items()},
            "median_ms": {k: round(v * 1e3, 3) for k, v in self.medians.items()},
            "speedup_vs_default": round(self.speedups.get(self.chosen, 1.0), 3),
            "all_int8_speedup_vs_default": round(self.speedups["all-int8"], 3),
            "paired_speedups": {k: round(v, 3) for k, v in self.speedups.items()},
            "paired_speedups_reversed_order": {k: round(v, 3) for k, v in self.reversed_speedups.items()},
        }


#: How much faster than the default precision an int8 candidate must run, paired, in both timings
#: (models in one order within each round, then in the opposite order), to be chosen: on this
#: project's 2-core machine identical models timed side by side differed by a few percent, so a
#: smaller edge is noise (a BasicUNet 2D chosen "mixed" on a 1-3% edge later ran 0.91x).
PICK_MARGIN = 1.05


def pick(
    speedups: dict[str, float], reversed_speedups: dict[str, float] | None = None, margin: float = PICK_MARGIN
) -> str:
    """Return the int8 candidate that ran fastest against the default, or ``"default"`` below ``margin``.

    ``speedups`` maps each candidate to how many times faster than the default it ran, paired
    round by round (:func:`ebai.core.latency.paired_speedup`); ``reversed_speedups``, when given,
    to the same from a second timing with the models in the opposite order within each round.
    A candidate must clear ``margin`` in both, and candidates rank by the lesser of their two.

    Why two timings: on a machine whose speed switches state for seconds at a time, one paired
    timing of two copies of one float graph cleared the margin in 11 of 60 timings
    (``benchmarks/int8_pick_noise.py``, up to 1.51x); with the opposite-order timing required
    too, in 2 of 60. The rule before, that the two models' single fastest calls must clear the
    margin too, cut false keeps to 3 of 60 but refused real gains in 12 of 60, whenever one brief
    fast moment fell on the default's calls (nuclei's 1.16x int8 in 11 of 20; the semantic task's
    1.32x once in a real lowering).
    """

    def score(name: str) -> float:
        value = speedups[name]
        if reversed_speedups is not None:
            value = min(value, reversed_speedups.get(name, 0.0))
        return value

    passing = {k: score(k) for k in speedups if score(k) >= margin}
    return max(passing, key=passing.__getitem__) if passing else "default"


def _int8_compute_layers(profile: LayerProfile) -> tuple[str, ...]:
    return tuple(sorted(n for n, (k, p, _) in profile.layers.items() if k in _COMPUTE and p == "i8"))


def choose(
    model: Any,
    quantize: Callable[[Any, Sequence[str]], Any],
    rewrite: Callable[[Any, Sequence[str]], int],
    batch: np.ndarray,
    *,
    ratio: float = KEEP_RATIO,
    profile_calls: int = 1,
    profile_rounds: int = 9,
) -> tuple[Any, PrecisionChoice]:
    """Quantize ``model`` layer by layer where int8 pays on this machine; return the model and the choice.

    Parameters
    ----------
    model
        The float ``openvino.Model`` (not modified).
    quantize
        ``quantize(model, keep_default)``: NNCF on ``model`` leaving the named layers unquantized.
    rewrite
        ``rewrite(model, names)``: rewrites the named transposed convolutions in place, returns how many.
    batch
        One calibration batch, the input every measurement runs.
    ratio
        See :data:`KEEP_RATIO`.
    profile_calls
        Calls per profile (each layer's median call, times the calls).
    profile_rounds
        Profiles of the float and all-int8 models taken in turns; each layer's int8/default ratio
        is the median of the round-by-round ratios. One call per turn and more rounds: each
        engine compiles its profiling copy once, so the two models are profiled one call apart
        and see the machine in the same state.
    """
    from ebai.core.latency import measure_interleaved, paired_speedup
    from ebai.core.profiling import profiles_in_turns
    from ebai.openvino._engine import OpenVINOEngine

    all_int8 = quantize(model, ())
    with OpenVINOEngine(model) as default, OpenVINOEngine(all_int8) as first:
        runs = profiles_in_turns({"default": default, "int8": first}, batch, calls=profile_calls, rounds=profile_rounds)
    default_profile = runs["default"][0]
    keep = slow_int8_layers(runs["int8"], runs["default"], ratio)
    deconvs = f32_deconvolutions(runs["int8"][0])
    candidates: dict[str, Any] = {"all-int8": all_int8}
    rewritten: list[str] = []
    if keep or deconvs:
        changed = model.clone()
        if deconvs and rewrite(changed, deconvs):
            rewritten = deconvs
        candidates["mixed"] = quantize(changed, keep)
    engines = {"default": OpenVINOEngine(model), **{k: OpenVINOEngine(m) for k, m in candidates.items()}}
    try:
        calls = {k: (lambda e=e: e.infer(batch)) for k, e in engines.items()}
        stats = measure_interleaved(calls, rounds=_ROUNDS, repeats=_REPEATS)
        backwards = measure_interleaved(dict(reversed(calls.items())), rounds=_ROUNDS, repeats=_REPEATS, warmup=0)
        speedups = {k: paired_speedup(stats["default"], stats[k]) for k in candidates}
        reversed_speedups = {k: paired_speedup(backwards["default"], backwards[k]) for k in candidates}
        chosen = pick(speedups, reversed_speedups)
        layers: tuple[str, ...] = ()
        if chosen != "default":
            layers = _int8_compute_layers(engines[chosen].profile(batch, 1))
    finally:
        for engine in engines.values():
            engine.close()
    if chosen == "default":
        every = tuple(sorted(n for n, (k, _, _) in default_profile.layers.items() if k in _COMPUTE))
        result = model.clone()
        choice_keep, choice_rewritten = every, ()
    else:
        result = candidates[chosen]
        choice_keep = tuple(keep) if chosen == "mixed" else ()
        choice_rewritten = tuple(rewritten) if chosen == "mixed" else ()
    return result, PrecisionChoice(
        keep_default=choice_keep,
        rewritten=choice_rewritten,
        int8_layers=layers,
        chosen=chosen,
        speedups=speedups,
        reversed_speedups=reversed_speedups,
        timings={k: s.min_s for k, s in stats.items()},
        medians={k: s.median_s for k, s in stats.items()},
    )
