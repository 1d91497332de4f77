"""The compression recipe: what to prune, how to fine-tune, what to lower to and how to check it.

A recipe is a frozen dataclass tree that can be written by hand in YAML or TOML, so a lab can keep
the settings that worked for a model next to its weights. Every key is checked when the file is
read; a misspelt key is refused with its dotted name instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebai.core.configfile import load_yaml, parse_problem
from ebai.core.errors import InputError
from ebai.core.interfaces import PRECISIONS
from ebai.core.specs import parse_sizes

__all__ = [
    "CalibrationSettings",
    "ExportSettings",
    "FidelitySettings",
    "FineTuneSettings",
    "PruneSettings",
    "QatSettings",
    "Recipe",
    "SearchSettings",
    "TimingSettings",
]

#: Pruning importance criteria (Torch-Pruning importances) a recipe may name, plus "none".
PRUNE_METHODS = ("l1", "l2", "fpgm", "none")
#: ``prune.method: auto`` searches the ratio (and criterion) instead of taking one (see ``search``).
AUTO = "auto"
#: Built-in fine-tuning methods; any other string is read as a "module:function" callback.
FINE_TUNE_METHODS = ("distill", "none")
LOSSES = ("mse", "l1")
#: Learning-rate schedules: constant, or a linear warm-up over a tenth of the budget then cosine decay.
SCHEDULES = ("constant", "cosine")
#: Pruning asked for by method alone (``--prune l1``) removes this fraction of channels.
DEFAULT_RATIO = 0.5
#: Guard threshold when the network was pruned or fine-tuned and the recipe gives none.
CHANGED_THRESHOLD = 0.95
#: Guard threshold on Pearson when only the lowering changes the network (int8's own standard).
UNCHANGED_PEARSON = 0.99
#: Largest loss of a task metric against the fp32 network when only the lowering changes it.
UNCHANGED_TASK_DROP = 0.005
EXPORTERS = ("auto", "dynamo", "torchscript")
#: When quantization-aware training is tried: after post-training int8 misses the guard, always, or never.
QAT_WHEN = ("auto", "always", "never")


def _fail(msg: str) -> None:
    raise InputError(msg)


def check_ratio(ratio: float, what: str = "pruning ratio") -> float:
    """Return ``ratio`` as a float, refusing anything outside the open interval (0, 1)."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        _fail(
            f"{what} {ratio!r} is outside (0, 1): give the fraction of channels to remove, e.g. 0.5 for half "
            "(use method 'none' to skip pruning)"
        )
    return value


@dataclass(frozen=True)
class PruneSettings:
    """Structured channel pruning with Torch-Pruning (DepGraph); none unless asked for.

    Attributes
    ----------
    method
        Channel importance: ``"l1"`` or ``"l2"`` (weight magnitude), ``"fpgm"`` (distance to the
        geometric median of a layer's filters), ``"auto"`` to search the largest ratio (and the
        criterion) that keeps the fidelity asked for (see :class:`SearchSettings`), or ``"none"``
        to keep the network as it is. Left
        out, it is ``"none"``, or ``"l1"`` when a ``ratio`` is given: a network is pruned only
        when the user asks for it.
    ratio
        Fraction of channels removed, in (0, 1); 0.5 when a method is named without it. Removing
        half the channels of every layer cuts MACs about 4x, since each convolution loses both
        input and output channels.
    global_pruning
        Rank channels across all layers instead of removing ``ratio`` from each layer (each layer
        still keeps at least 10% of its channels).
    layer_ratios
        Per-layer ratios overriding ``ratio``, keyed by module name or glob (``"encoder.*"``).
    keep
        Module names or globs never pruned, in addition to the output layer(s), which are always
        kept so the output has the original channels.
    round_to
        Remaining channel counts are multiples of this (8 suits int8 kernels); 1 disables rounding.
    rounds
        Steps in which the ratio is reached, each followed by its share of the distillation
        (``fine_tune.steps`` and its time budget divided between them). Cutting half the channels
        at once can destroy a network's function, which distillation must then rebuild almost from
        scratch; cut in steps, each distillation only repairs a small change (the label-free
        reference network, 50% L1: validation Pearson 0.62 to the original after one cut and 300
        steps; 0.905-0.925 on held-out volumes after 5 rounds of 120). The rounds end at the
        channel counts of one cut at the full ratio (``round_to`` included); after round ``i``
        each layer has gone ``i / rounds`` of the way. 1 cuts at once, and so does any ``rounds``
        without distillation (a fine-tuning callback, or none): there is nothing to repair between
        cuts.
    spare
        Share of the pruning's time saving that may be given up to keep whole the layers whose
        cut costs the most fidelity per second saved, in [0, 1); 0 prunes every layer. Each layer
        is cut alone and timed on the first target's backend at its precision, and scored against
        the original on the validation tiles (see :mod:`ebai.compress._sparing`). Label-free
        reference network, 50%: 0.2 kept 8 and 4 of its 14 layers whole in two runs.
    """

    method: str | None = None
    ratio: float | None = None
    global_pruning: bool = False
    layer_ratios: Mapping[str, float] = field(default_factory=dict)
    keep: tuple[str, ...] = ()
    round_to: int = 8
    rounds: int = 1
    spare: float = 0.0

    def __post_init__(self) -> None:
        if self.method is None:
            method = "none" if self.ratio is None else "l1"
        else:
            method = str(self.method).lower()
        if method not in (*PRUNE_METHODS, AUTO):
            _fail(f"unknown pruning method {self.method!r}: use one of {', '.join((*PRUNE_METHODS, AUTO))}")
        object.__setattr__(self, "method", method)
        ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
        object.__setattr__(self, "ratio", check_ratio(ratio) if method not in ("none", AUTO) else ratio)
        ratios = {str(k): check_ratio(v, f"pruning ratio of layer {k!r}") for k, v in dict(self.layer_ratios).items()}
        object.__setattr__(self, "layer_ratios", ratios)
        keep = (self.keep,) if isinstance(self.keep, str) else tuple(str(k) for k in self.keep)
        object.__setattr__(self, "keep", keep)
        if int(self.round_to) < 1:
            _fail(
                f"prune.round_to must be a positive channel multiple, got {self.round_to}: use 8, or 1 for no rounding"
            )
        object.__setattr__(self, "round_to", int(self.round_to))
        object.__setattr__(self, "global_pruning", bool(self.global_pruning))
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            _fail(
                f"prune.rounds must be a whole number of at least 1, got {self.rounds!r}: use e.g. 5, or 1 to cut at once"
            )
        try:
            spare = float(self.spare)
        except (TypeError, ValueError):
            spare = -1.0
        if isinstance(self.spare, bool) or not 0.0 <= spare < 1.0:
            _fail(
                f"prune.spare must be a share of the time saving in [0, 1), got {self.spare!r}: use e.g. 0.2, "
                "or 0 to prune every layer"
            )
        if spare and method == "none":
            _fail("prune.spare needs a pruning ratio to spare layers from: add e.g. --prune l1:0.5, or drop it")
        if spare and method == AUTO:
            _fail("prune.spare needs a fixed ratio: drop it, or use e.g. prune.method l1 with ratio 0.5")
        object.__setattr__(self, "spare", spare)

    @property
    def enabled(self) -> bool:
        """Whether any pruning is asked for."""
        return self.method != "none"


@dataclass(frozen=True)
class FineTuneSettings:
    """Recovery of the pruned network's accuracy.

    Attributes
    ----------
    method
        ``"distill"``: label-free distillation from the original network (the teacher) on random
        crops of the user's images; ``"none"``; a callable ``fine_tune(model, data) -> model``
        (Python only) or its ``"package.module:function"`` / ``"file.py:function"`` reference.
        ``data`` is the list of preprocessed training images ``(C, *spatial)`` float32 arrays.
    steps
        Optimiser steps at most (the budget); 0 skips fine-tuning.
    lr
        Adam learning rate.
    loss
        ``"mse"`` or ``"l1"`` between student and teacher outputs, per output channel divided by
        that channel's variance (or spread) in the teacher's output, then averaged: the learning
        rate does not depend on the output scale, and a channel of small values counts as much as
        one of large values (cellpose's flows beside its cell-probability logits: normalised as one,
        the pruned nuclei network reached validation Pearson 0.977 and AP50 0.9833; per channel
        0.996 and 0.9917).
    batch_size
        Crops per step.
    eval_every
        Steps between checks on a fixed set of validation crops.
    patience
        Checks without improvement before stopping early (the best weights are kept).
    schedule
        ``"constant"`` learning rate, or ``"cosine"``: a linear warm-up over the first tenth of
        the budget, then cosine decay to zero at the last step.
    feature_weight
        Weight of intermediate-feature matching (attention transfer: the channel-mean of squared
        activations of convolutions found in both networks, which a pruned student's fewer
        channels do not prevent) added to the output loss; 0 matches outputs only.
    budget_minutes
        Wall-time budget; training stops at the first step past it (the best weights are
        kept). ``None``: only the step budget counts. A cosine schedule then decays over the
        steps or the time, whichever runs out first.
    crop
        Spatial shape of the random crops distilled on (``[16, 48, 48]`` or ``"16,48,48"``), one
        size per axis of the model's tile, each a multiple of the model's ``divisor``; ``None``:
        the tile. A network trained on crops smaller than the tile it runs on can be distilled on
        them too: each step costs less, so a time budget holds more steps (the semantic reference
        network runs on 32x64x64 tiles, was trained on 16x48x48 crops, and distils 4x faster on them).
    vector_lr_scale
        Factor on the learning rate of parameters with one value per channel (biases,
        normalisation scales, quantizer ranges): they set the scale each channel runs at, and at
        the weights' rate they take hundreds of steps to move it.
    """

    method: str | Callable[..., Any] = "distill"
    steps: int = 200
    lr: float = 1e-3
    loss: str = "mse"
    batch_size: int = 2
    eval_every: int = 20
    patience: int = 4
    schedule: str = "constant"
    vector_lr_scale: float = 1.0
    budget_minutes: float | None = None
    feature_weight: float = 0.0
    crop: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.crop is not None:
            object.__setattr__(self, "crop", parse_sizes(self.crop, "fine_tune.crop"))
        if isinstance(self.method, str):
            method = self.method.strip()
            if method.lower() in FINE_TUNE_METHODS:
                method = method.lower()
            elif ":" not in method:
                _fail(
                    f"unknown fine-tuning method {self.method!r}: use distill, none, or a 'package.module:function' "
                    "callback"
                )
            object.__setattr__(self, "method", method)
        elif not callable(self.method):
            _fail(f"fine_tune.method must be a name or a callable, got {type(self.method).__name__}")
        if str(self.loss).lower() not in LOSSES:
            _fail(f"unknown distillation loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        object.__setattr__(self, "loss", str(self.loss).lower())
        for name in ("steps", "batch_size", "eval_every", "patience"):
            value = int(getattr(self, name))
            if value < (0 if name == "steps" else 1):
                _fail(
                    f"fine_tune.{name} must be {'>= 0' if name == 'steps' else 'positive'}, got {getattr(self, name)}"
                )
            object.__setattr__(self, name, value)
        if not float(self.lr) > 0:
            _fail(f"fine_tune.lr must be positive, got {self.lr}")
        object.__setattr__(self, "lr", float(self.lr))
        if str(self.schedule).lower() not in SCHEDULES:
            _fail(f"unknown fine_tune.schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        object.__setattr__(self, "schedule", str(self.schedule).lower())
        if not float(self.vector_lr_scale) > 0:
            _fail(f"fine_tune.vector_lr_scale must be positive, got {self.vector_lr_scale}")
        object.__setattr__(self, "vector_lr_scale", float(self.vector_lr_scale))
        if not float(self.feature_weight) >= 0:
            _fail(f"fine_tune.feature_weight must be 0 or more, got {self.feature_weight}")
        object.__setattr__(self, "feature_weight", float(self.feature_weight))
        if self.budget_minutes is not None:
            if not float(self.budget_minutes) > 0:
                _fail(f"fine_tune.budget_minutes must be positive, got {self.budget_minutes}")
            object.__setattr__(self, "budget_minutes", float(self.budget_minutes))

    @property
    def enabled(self) -> bool:
        """Whether any fine-tuning is asked for."""
        return self.method != "none" and (
            self.steps > 0 or callable(self.method) or self.method not in FINE_TUNE_METHODS
        )


@dataclass(frozen=True)
class SearchSettings:
    """The ratio search of ``prune.method: auto``.

    Attributes
    ----------
    methods
        Criteria tried, each bisected on its own (``["l1", "fpgm"]`` compares them); the largest
        passing ratio of any wins.
    low, high, step
        The grid of ratios searched.
    budget_minutes
        Wall time after which no new probe starts; the best passing ratio found so far is kept.
    margin
        How far above the target a probe's fp32 fidelity must be: the int8 network made from it
        loses a little more, and the guard holds that one to the target itself.
    """

    methods: tuple[str, ...] = ("l1",)
    low: float = 0.1
    high: float = 0.9
    step: float = 0.05
    budget_minutes: float = 60.0
    margin: float = 0.002

    def __post_init__(self) -> None:
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(str(m).lower() for m in self.methods)
        for m in methods:
            if m not in PRUNE_METHODS or m == "none":
                _fail(f"unknown search method {m!r}: use l1, l2 or fpgm")
        if not methods:
            _fail("search.methods is empty: name at least one of l1, l2, fpgm")
        object.__setattr__(self, "methods", methods)
        low = check_ratio(self.low, "search.low")
        high = check_ratio(self.high, "search.high")
        if high < low:
            _fail(f"search.high {high} is below search.low {low}: give low <= high")
        if not float(self.step) > 0:
            _fail(f"search.step must be positive, got {self.step}")
        if not float(self.budget_minutes) > 0:
            _fail(f"search.budget_minutes must be positive, got {self.budget_minutes}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "step", float(self.step))
        object.__setattr__(self, "budget_minutes", float(self.budget_minutes))
        if not 0 <= float(self.margin) < 1:
            _fail(f"search.margin must be in [0, 1), got {self.margin}")
        object.__setattr__(self, "margin", float(self.margin))


@dataclass(frozen=True)
class QatSettings:
    """Quantization-aware fine-tuning, the int8 route after post-training quantization.

    Attributes
    ----------
    when
        ``"auto"``: only when post-training int8 (every preset, then accuracy control) stays below
        the guard's threshold; ``"always"``: the int8 network of every target that can take it
        is made this way (post-training variants are not tried); ``"never"``.
    steps
        Optimiser steps at most.
    lr
        Adam learning rate of the weights and quantizer ranges.
    batch_size, eval_every, patience
        Crops per step, steps between validation checks, checks without improvement before
        stopping (the best weights are kept), as in ``fine_tune``. The schedule is a warm-up then
        cosine decay, and per-channel parameters (quantizer ranges, biases, normalisation scales)
        learn 10x faster than the weights: on an instance-norm U-Net whose channels span 30-fold
        ranges that took Pearson from 0.981 to 0.992 in 200 steps, where one rate for all reached
        0.988 in 240.
    """

    when: str = "auto"
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 2
    eval_every: int = 20
    patience: int = 5

    def __post_init__(self) -> None:
        when = str(self.when).lower()
        if when not in QAT_WHEN:
            _fail(f"unknown qat.when {self.when!r}: use one of {', '.join(QAT_WHEN)}")
        object.__setattr__(self, "when", when)
        for name in ("steps", "batch_size", "eval_every", "patience"):
            value = int(getattr(self, name))
            if value < 1:
                _fail(f"qat.{name} must be positive, got {getattr(self, name)}")
            object.__setattr__(self, name, value)
        if not float(self.lr) > 0:
            _fail(f"qat.lr must be positive, got {self.lr}")
        object.__setattr__(self, "lr", float(self.lr))


@dataclass(frozen=True)
class ExportSettings:
    """ONNX export of the (pruned) network.

    Attributes
    ----------
    opset
        ONNX opset, at least 17.
    exporter
        ``"auto"`` (torch.export-based exporter for modules, the TorchScript exporter for
        TorchScript files), ``"dynamo"`` or ``"torchscript"``.
    """

    opset: int = 18
    exporter: str = "auto"

    def __post_init__(self) -> None:
        if int(self.opset) < 17:
            _fail(f"export.opset {self.opset} is too old: use 17 or newer")
        object.__setattr__(self, "opset", int(self.opset))
        if str(self.exporter).lower() not in EXPORTERS:
            _fail(f"unknown exporter {self.exporter!r}: use one of {', '.join(EXPORTERS)}")
        object.__setattr__(self, "exporter", str(self.exporter).lower())


@dataclass(frozen=True)
class CalibrationSettings:
    """Samples a backend calibrates int8 on.

    Attributes
    ----------
    samples
        Tiles cropped from the training images (never from the held-out ones).
    """

    samples: int = 32

    def __post_init__(self) -> None:
        if int(self.samples) < 1:
            _fail(f"calibration.samples must be at least 1, got {self.samples}")
        object.__setattr__(self, "samples", int(self.samples))


@dataclass(frozen=True)
class FidelitySettings:
    """The accuracy guard.

    Attributes
    ----------
    metric
        What decides: ``"pearson"``, ``"ssim"``, or a task metric the adapter's ``evaluate``
        returns (e.g. ``"ap50"``). Higher is better.
    threshold
        Lowest acceptable value of ``metric`` for a target against the original network. Left
        out, it depends on what was done: a pruned or fine-tuned network must reach 0.95; a
        network only lowered (e.g. int8 alone) is held to int8's own standard, Pearson 0.99, or a
        task metric within 0.005 of the fp32 network's.
    held_out
        Images kept aside for the guard: never used for calibration or fine-tuning.
    tiles
        Held-out tiles measured (cropped from the held-out images in turn).
    accuracy_control
        When every variant misses the threshold, ask the backend's accuracy-aware fallback
        (OpenVINO: NNCF keeps the most harmful layers in float) before quantization-aware
        training. Off, a missed int8 goes straight to quantization-aware training, which keeps
        every layer int8.
    """

    metric: str = "pearson"
    threshold: float | None = None
    held_out: int = 2
    tiles: int = 8
    accuracy_control: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", str(self.metric))
        object.__setattr__(self, "accuracy_control", bool(self.accuracy_control))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))
        for name in ("held_out", "tiles"):
            if int(getattr(self, name)) < 1:
                _fail(f"fidelity.{name} must be at least 1, got {getattr(self, name)}")
            object.__setattr__(self, name, int(getattr(self, name)))

    def threshold_for(self, changed: bool, fp32_value: float) -> float:
        """Return the threshold that applies: the recipe's, else the standard for what was done.

        Parameters
        ----------
        changed
            Whether the network was pruned or fine-tuned before lowering.
        fp32_value
            The fp32 (pruned, fine-tuned) network's own score on ``metric`` against the original.
        """
        if self.threshold is not None:
            return self.threshold
        if changed:
            return CHANGED_THRESHOLD
        if self.metric == "pearson":
            return UNCHANGED_PEARSON
        return round(fp32_value - UNCHANGED_TASK_DROP, 6)


@dataclass(frozen=True)
class TimingSettings:
    """How each target is timed against the backend's default precision on this machine.

    Attributes
    ----------
    rounds
        Interleaved rounds (target, default, target, ...), one call of one tile each; the medians
        are recorded, and the speed-up is paired (:func:`ebai.core.latency.paired_speedup`).
        More rounds give steadier figures on a busy machine.
    warmup
        Untimed calls of each engine before the first round.
    """

    rounds: int = 10
    warmup: int = 2

    def __post_init__(self) -> None:
        if int(self.rounds) < 1:
            _fail(f"timing.rounds must be at least 1, got {self.rounds}")
        if int(self.warmup) < 0:
            _fail(f"timing.warmup must be 0 or more, got {self.warmup}")
        object.__setattr__(self, "rounds", int(self.rounds))
        object.__setattr__(self, "warmup", int(self.warmup))


_SECTIONS: dict[str, type] = {
    "prune": PruneSettings,
    "fine_tune": FineTuneSettings,
    "export": ExportSettings,
    "calibration": CalibrationSettings,
    "fidelity": FidelitySettings,
    "timing": TimingSettings,
    "qat": QatSettings,
    "search": SearchSettings,
}


@dataclass(frozen=True)
class Recipe:
    """Everything :func:`ebai.compress.compress` does to a model, in one frozen record.

    Build it in Python (``Recipe(prune=PruneSettings(method="fpgm"))``), from a mapping
    (:meth:`from_dict`) or from a YAML/TOML file (:meth:`from_file`); :meth:`to_dict` gives the
    same layout back. Top-level keys: ``prune``, ``fine_tune``, ``export``, ``calibration``,
    ``fidelity``, ``timing``, ``qat``, ``search`` (sections, see their classes), ``targets``, ``precision``, ``seed``.

    Attributes
    ----------
    targets
        Backend names to lower to (``"openvino"``, ``"tensorrt"``), each stored in the artifact.
    precision
        ``"fp32"``, ``"tf32"``, ``"fp16"``, ``"bf16"`` or ``"int8"`` for every target (``tf32`` and ``bf16``: the
        ``torch`` target only), or a mapping target -> precision.
    seed
        Seed of every random choice (held-out split, crops, distillation), for repeatable runs.
    """

    prune: PruneSettings = field(default_factory=PruneSettings)
    fine_tune: FineTuneSettings = field(default_factory=FineTuneSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)
    timing: TimingSettings = field(default_factory=TimingSettings)
    qat: QatSettings = field(default_factory=QatSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    targets: tuple[str, ...] = ("openvino",)
    precision: str | Mapping[str, str] = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build(cls, value, name))
            elif not isinstance(value, cls):
                _fail(f"recipe section {name!r} must be a mapping, got {type(value).__name__}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(str(t) for t in self.targets)
        if not targets:
            _fail("the recipe names no target: give at least one, e.g. targets: [openvino]")
        if len(set(targets)) != len(targets):
            _fail(f"targets {list(targets)} name a backend twice: list each once")
        object.__setattr__(self, "targets", targets)
        if isinstance(self.precision, Mapping):
            precision: str | dict[str, str] = {str(k): str(v).lower() for k, v in self.precision.items()}
            values = list(precision.values())
            for name in precision:
                if name not in targets:
                    _fail(
                        f"precision is given for {name!r}, which is not a target ({', '.join(targets)}): add it to targets"
                    )
        else:
            precision = str(self.precision).lower()
            values = [precision]
        for value in values:
            if value not in PRECISIONS:
                _fail(f"unknown precision {value!r}: use one of {', '.join(PRECISIONS)}")
        object.__setattr__(self, "precision", precision)
        object.__setattr__(self, "seed", int(self.seed))

    def precision_for(self, target: str) -> str:
        """Return the precision asked for ``target`` (``fp32`` when a per-target mapping leaves it out)."""
        if isinstance(self.precision, Mapping):
            return self.precision.get(target, "fp32")
        return self.precision

    # ------------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> Recipe:
        """Build a recipe from nested mappings, refusing unknown keys by their dotted name."""
        if not isinstance(data, Mapping):
            _fail(f"{source} must be a mapping of settings, got {type(data).__name__}")
        return _build(cls, data, "", source)

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        """Read a recipe from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file."""
        path = Path(path)
        if not path.is_file():
            _fail(f"recipe file {str(path)!r} does not exist: give the path of a YAML or TOML file")
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".json"):  # YAML, read as adapter configs are
            data = load_yaml(path, "recipe file", "give the path of a YAML or TOML file") or {}
            return cls.from_dict(data, source=f"recipe file {str(path)!r}")
        text = path.read_text(encoding="utf-8")
        try:
            if suffix == ".toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10
                    import tomli as tomllib
                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # each parser raises its own error class
            msg = f"recipe file {str(path)!r} cannot be parsed ({type(exc).__name__}: {parse_problem(exc)}): fix its syntax"
            raise InputError(msg) from exc
        return cls.from_dict(data, source=f"recipe file {str(path)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-data form, as :meth:`from_dict` reads it (a callable method is kept as is)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = {g.name: _plain(getattr(value, g.name)) for g in dataclasses.fields(value)}
            else:
                out[f.name] = _plain(value)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready form for manifests and logs (a callable is named by its qualified name)."""
        return json.loads(json.dumps(self.to_dict(), default=_callable_name))

    def updated(self, changes: Mapping[str, Any]) -> Recipe:
        """Return a copy with ``changes`` (nested mappings, as in a file) merged over this recipe.

        A pruning ratio given without a method over a recipe that prunes nothing asks for pruning
        (L1), as it does in a file.
        """
        base = self.to_dict()
        prune = changes.get("prune")
        if isinstance(prune, Mapping) and "method" not in prune and "ratio" in prune and not self.prune.enabled:
            base["prune"]["method"] = None
        return Recipe.from_dict(_merge(base, changes), source="recipe options")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _callable_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key in _SECTIONS:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: Mapping[str, Any], prefix: str, source: str = "recipe") -> Any:
    if not isinstance(data, Mapping):
        _fail(f"{source}: section {prefix!r} must be a mapping of settings, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            section = f"[{prefix}]" if prefix else "the top level"
            _fail(f"{source}: unknown key {where!r}; known keys in {section} are {', '.join(known)}")
    kwargs = dict(data)
    if cls is Recipe:
        for name, sub in _SECTIONS.items():
            if name in kwargs:
                kwargs[name] = _build(sub, kwargs[name] or {}, name, source)
    return cls(**kwargs)
