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
default precision (``PERF_COUNT``, :mod:`ebai.openvino._profile`); keep at the default precision the
compute layers whose int8 time is above :data:`KEEP_RATIO` of their default time, and rewrite the
transposed convolutions that ran in f32; quantize again with those choices; then time the default,
all-int8 and mixed models in interleaved rounds and keep the fastest int8 model. Where even that is
not faster than the default by :data:`PICK_MARGIN` (fastest call and median), every layer is kept at
the default precision (the artifact is then the float model: never slower than the default, and the
record says so).
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
_ROUNDS, _REPEATS = 5, 2


def slow_int8_layers(int8: LayerProfile, default: LayerProfile, ratio: float = KEEP_RATIO) -> list[str]:
    """Compute layers that ran in int8 in ``int8`` but took more than ``ratio`` x their time in ``default``.

    Layers are matched by name; a layer missing from either profile (fused, rewritten) is left
    as it is.
    """
    out = []
    for name, (kind, precision, seconds) in int8.layers.items():
        if kind not in _COMPUTE or precision != "i8" or name not in default.layers:
            continue
        _, default_precision, default_seconds = default.layers[name]
        if default_precision != "i8" and seconds > ratio * default_seconds:
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
    default_s, all_int8_s, chosen_s
        Fastest call, in seconds, of the float model at the default precision, of every layer in
        int8, and of the chosen model, timed in the same interleaved rounds on this machine. The
        fastest call, not the median, decides: on a shared CPU a neighbour only ever slows a call
        down, so the fastest of several is the least disturbed estimate of what each model costs.
    chosen
        ``"all-int8"``, ``"mixed"`` or ``"default"`` (nothing quantized: int8 did not pay here).
    """

    keep_default: tuple[str, ...]
    rewritten: tuple[str, ...]
    int8_layers: tuple[str, ...]
    default_s: float
    all_int8_s: float
    chosen_s: float
    chosen: str
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
            "speedup_vs_default": round(self.default_s / max(self.chosen_s, 1e-12), 3),
            "all_int8_speedup_vs_default": round(self.default_s / max(self.all_int8_s, 1e-12), 3),
        }


#: How much faster than the default precision an int8 candidate must run, by its fastest call and by
#: its median, to be chosen: identical models timed side by side here differed by several percent,
#: so a smaller edge is noise (a BasicUNet 2D chosen "mixed" on a 1-3% edge later ran 0.91x).
PICK_MARGIN = 0.95


def pick(seconds: dict[str, float], medians: dict[str, float] | None = None, margin: float = PICK_MARGIN) -> str:
    """Return the fastest int8 candidate, or ``"default"`` unless it beats the default by ``margin``.

    ``seconds`` are fastest calls (decisive for the ranking); ``medians``, when given, must show
    the same edge, so one lucky call does not decide.
    """
    candidates = {k: v for k, v in seconds.items() if k != "default"}
    best = min(candidates, key=candidates.__getitem__)
    faster = candidates[best] <= margin * seconds["default"]
    if medians is not None:
        faster = faster and medians[best] <= margin * medians["default"]
    return best if faster else "default"


def _int8_compute_layers(profile: LayerProfile) -> tuple[str, ...]:
    return tuple(sorted(n for n, (k, p, _) in profile.layers.items() if k in _COMPUTE and p == "i8"))


def choose(
    model: Any,
    quantize: Callable[[Any, Sequence[str]], Any],
    rewrite: Callable[[Any, Sequence[str]], int],
    batch: np.ndarray,
    *,
    ratio: float = KEEP_RATIO,
    profile_calls: int = 5,
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
        Calls each profile is summed over.
    """
    from ebai.core.latency import measure_interleaved
    from ebai.openvino._engine import OpenVINOEngine

    all_int8 = quantize(model, ())
    with OpenVINOEngine(model) as default, OpenVINOEngine(all_int8) as first:
        default_profile = default.profile(batch, profile_calls)
        int8_profile = first.profile(batch, profile_calls)
    keep = slow_int8_layers(int8_profile, default_profile, ratio)
    deconvs = f32_deconvolutions(int8_profile)
    candidates: dict[str, Any] = {"all-int8": all_int8}
    rewritten: list[str] = []
    if keep or deconvs:
        changed = model.clone()
        if deconvs and rewrite(changed, deconvs):
            rewritten = deconvs
        candidates["mixed"] = quantize(changed, keep)
    engines = {"default": OpenVINOEngine(model), **{k: OpenVINOEngine(m) for k, m in candidates.items()}}
    try:
        stats = measure_interleaved(
            {k: (lambda e=e: e.infer(batch)) for k, e in engines.items()}, rounds=_ROUNDS, repeats=_REPEATS
        )
        chosen = pick({k: s.min_s for k, s in stats.items()}, {k: s.median_s for k, s in stats.items()})
        layers: tuple[str, ...] = ()
        if chosen != "default":
            layers = _int8_compute_layers(engines[chosen].profile(batch, 1))
    finally:
        for engine in engines.values():
            engine.close()
    timings = {k: s.min_s for k, s in stats.items()}
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
        default_s=timings["default"],
        all_int8_s=timings["all-int8"],
        chosen_s=timings[chosen],
        chosen=chosen,
        timings=timings,
        medians={k: s.median_s for k, s in stats.items()},
    )
