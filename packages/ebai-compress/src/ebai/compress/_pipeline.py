"""``compress``: prune, fine-tune, export, lower for every target, guard, and write one artifact.

The order is chosen so a failure costs as little as possible and never leaves files behind:
everything that can be checked cheaply (output path, backends, recipe, data) is checked before
any training; the guard's verdict on the fp32 network comes before any lowering; and all files are
written into the temporary folder of an :class:`~ebai.core.artifact.ArtifactWriter`, published only when
every target has passed.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ebai.compress._distillation import distill
from ebai.compress._guard import FidelityJudge, compare, run_batches, score_per_tile
from ebai.compress._onnx_export import ExportResult, export_onnx
from ebai.compress._pruning import prune
from ebai.compress._recipe import (
    AUTO,
    CHANGED_THRESHOLD,
    FINE_TUNE_METHODS,
    FineTuneSettings,
    QatSettings,
    Recipe,
    TimingSettings,
)
from ebai.compress._rounds import prune_in_rounds
from ebai.compress._samples import SampleSplit, fit_tile, load_samples, split_samples
from ebai.compress._search import search_ratio
from ebai.compress._sparing import Sparing, backend_timer, spare_layers
from ebai.core.artifact import Artifact, ArtifactWriter, package_versions
from ebai.core.errors import BackendUnavailableError, EbaiError, FidelityError, InputError, MissingDependencyError
from ebai.core.files import check_output
from ebai.core.interfaces import Backend, DataSource, Engine, Lowering, ModelSource
from ebai.core.latency import measure_interleaved, paired_speedup
from ebai.core.manifest import FidelityRecord, Manifest, TargetRecord, TimingRecord
from ebai.core.plugins import get_backend
from ebai.core.torch_runner import torch_infer

__all__ = ["REFERENCE", "compress"]

logger = logging.getLogger("ebai")

#: File name of the fp32 ONNX model inside an artifact.
REFERENCE = "reference.onnx"
#: Distributions whose versions the manifest records when installed. ebai-adapters and ebai-tasks are
#: not dependencies of this package, but the model source usually comes from one of them, and its
#: version says which adapter code prepared the data the guard measured.
_VERSIONED = (
    "ebai-core",
    "ebai-compress",
    "ebai-adapters",
    "ebai-tasks",
    "torch",
    "torch-pruning",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
)
_BATCH = 4
#: Calibration tiles each ``prune.spare`` probe is lowered with.
_PROBE_CALIBRATION = 2
#: Below this speed-up over the backend's default precision, a compression is said to buy little.
WORTHWHILE = 1.2


def duration(seconds: float) -> str:
    """Format seconds per call for a person: ``6.7 ms``, ``1.11 s``."""
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


@dataclass(frozen=True)
class _Candidate:
    """One lowering of a target, as the guard scored it (kept in its scratch folder until chosen)."""

    folder: Path
    lowering: Lowering
    fidelity: FidelityRecord
    outputs: np.ndarray
    label: str


@dataclass(frozen=True)
class _Lowered:
    """A target that passed the guard, in its final folder of the artifact."""

    backend: Backend
    folder: str
    lowering: Lowering
    fidelity: FidelityRecord
    record: Mapping[str, Any] = field(default_factory=dict)


def takes_prequantized(backend: Backend) -> bool:
    """Whether ``backend`` lowers an already quantized (QDQ) ONNX file, the quantization-aware route."""
    return type(backend).lower_prequantized is not Backend.lower_prequantized


class _QatRoute:
    """Quantization-aware training, run at most once per NNCF preset and shared by the targets.

    The fine-tuned int8 network is exported once into ``folder`` (removed with the scratch files)
    and every target whose backend takes a QDQ ONNX lowers that file.
    """

    def __init__(
        self,
        settings: QatSettings,
        student: Any,
        teacher: Any,
        split: SampleSplit,
        tile: tuple[int, ...],
        folder: Path,
        opset: int,
        seed: int,
        metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
    ) -> None:
        self.settings, self._metric = settings, metric
        self._student, self._teacher, self._split, self._tile = student, teacher, split, tile
        self.folder, self._opset, self._seed = folder, opset, seed
        self.results: dict[str, Any] = {}

    def onnx(self, preset: str) -> Path:
        """Return the QDQ ONNX of the network fine-tuned with ``preset`` quantizers (trained on first call)."""
        from ebai.compress._qat import quantization_aware

        if preset not in self.results:
            self.folder.mkdir(exist_ok=True)
            self.results[preset] = quantization_aware(
                self._student,
                self._teacher,
                self._split.train,
                self._split.calibration,
                self.folder / f"qat-{preset}.onnx",
                self.settings,
                tile=self._tile,
                preset=preset,
                validation=self._split.validation,
                opset=self._opset,
                seed=self._seed,
                metric=self._metric,
            )
        return self.results[preset].onnx.path


def _route(candidate: _Candidate, precision: str) -> str:
    """How an int8 network was made: ``ptq-<preset>``, ``accuracy-control`` or ``qat``."""
    if candidate.label in ("accuracy control", "qat"):
        return candidate.label.replace(" ", "-")
    preset = candidate.lowering.options.get("preset")
    return f"ptq-{preset}" if preset else ("ptq" if precision == "int8" else "direct")


def _as_recipe(recipe: Recipe | str | Path | Mapping[str, Any] | None) -> Recipe:
    if recipe is None:
        return Recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        return Recipe.from_file(recipe)
    if isinstance(recipe, Mapping):
        return Recipe.from_dict(recipe)
    msg = f"recipe must be a Recipe, a file path or a mapping, got {type(recipe).__name__}"
    raise InputError(msg)


def _backends(recipe: Recipe, given: Mapping[str, Backend] | None) -> dict[str, Backend]:
    out = {}
    for name in recipe.targets:
        backend = given[name] if given and name in given else get_backend(name)
        reason = backend.available()
        if reason:
            msg = f"backend {name!r} cannot run here: {reason}"
            raise BackendUnavailableError(msg)
        precision = recipe.precision_for(name)
        if precision not in backend.precisions:
            msg = f"backend {name!r} cannot make {precision} models: use one of {', '.join(backend.precisions)}"
            raise InputError(msg)
        if recipe.qat.when == "always" and precision == "int8" and not takes_prequantized(backend):
            msg = (
                f"quantization-aware training (qat.when: always) needs a backend that lowers an already quantized "
                f"ONNX, and {name!r} does not: use target openvino for it, or qat.when: auto"
            )
            raise InputError(msg)
        out[name] = backend
    if recipe.qat.when == "always" and any(recipe.precision_for(n) == "int8" for n in out):
        from ebai.compress._qat import require_nncf_torch

        require_nncf_torch()  # before any training, not after
    return out


def _resolve_callback(ref: str) -> Callable[..., Any]:
    """Import ``package.module:function`` or ``path/to/file.py:function``."""
    from ebai.core.plugins import import_object

    left = ref.rpartition(":")[0]
    try:
        fn = import_object(ref)
    except FileNotFoundError:
        msg = f"fine-tuning callback file {left!r} does not exist: give an existing .py file"
        raise InputError(msg) from None
    except InputError:
        raise
    except Exception as exc:
        msg = f"fine-tuning callback {ref!r} cannot be loaded ({type(exc).__name__}: {exc}): check the module and function name"
        raise InputError(msg) from exc
    if not callable(fn):
        msg = f"fine-tuning callback {ref!r} is not a function"
        raise InputError(msg)
    return fn


def _distillation_crop(settings: FineTuneSettings, tile: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    """Return the crop shape distillation trains on: ``fine_tune.crop`` checked against the model's input, or the tile."""
    if settings.crop is None:
        return tile
    crop = tuple(settings.crop)
    shown, tile_shown = ",".join(map(str, crop)), ",".join(map(str, tile))
    if len(crop) != len(tile):
        msg = f"fine_tune.crop {shown} has {len(crop)} axes but the model's tile {tile_shown} has {len(tile)}: give one size per spatial axis"
        raise InputError(msg)
    if any(c % max(1, divisor) for c in crop):
        msg = f"fine_tune.crop {shown} does not fit this model, which takes only multiples of {divisor} per axis: e.g. {','.join(str(max(divisor, c - c % divisor)) for c in crop)}"
        raise InputError(msg)
    return crop


def _fine_tune(
    recipe: Recipe,
    student: Any,
    teacher: Any,
    split: SampleSplit,
    tile: tuple[int, ...],
    metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    settings = recipe.fine_tune
    if not settings.enabled:
        return student, None
    method = settings.method
    if method == "distill":
        result = distill(
            student,
            teacher,
            split.train,
            settings,
            tile=tile,
            validation=split.validation,
            seed=recipe.seed,
            metric=metric,
        )
        return result.model, result.to_dict()
    fn = method if callable(method) else _resolve_callback(str(method))
    tuned = fn(student, list(split.train))
    if tuned is None or not callable(tuned):
        msg = f"fine-tuning callback {getattr(fn, '__name__', fn)!r} returned {type(tuned).__name__}, not the model: return the fine-tuned module"
        raise InputError(msg)
    tuned.eval()
    return tuned, {
        "method": "callback",
        "callback": f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}",
    }


def _copy(original: Any, source: ModelSource) -> Any:
    """Return a second copy of the original network to prune and train.

    Copied rather than loaded again, so that a factory without weights (random initialisation)
    still gives the same network as the teacher.
    """
    try:
        return copy.deepcopy(original).eval()
    except Exception:  # some scripted or wrapped modules refuse deepcopy
        return source.load_module().eval()


def _engine_outputs(backend: Backend, folder: Path, lowering: Lowering, tiles: list[np.ndarray]) -> np.ndarray:
    engine: Engine = backend.load(folder, lowering)
    try:
        return run_batches(engine.infer, tiles, _BATCH)
    finally:
        engine.close()


def _suggestion(precision: str, changed: bool, qat_tried: bool = False) -> str:
    more = "give quantization-aware training more steps (--qat-steps), " if qat_tried else ""
    if not changed:
        return (
            f"keep {precision} off for this model, {more}calibrate on more images like the ones you will run, or "
            "give a lower fidelity.threshold if the figures above are good enough for your use"
        )
    if precision == "int8":
        return f"try fp16 or fp32 for this target, {more}a lower pruning ratio, more fine-tuning steps, or a lower fidelity.threshold"
    return "try a lower pruning ratio, more fine-tuning steps, or a lower fidelity.threshold"


def _label(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"


def _try(
    backend: Backend,
    scratch: Path,
    label: str,
    lower: Callable[[Path], Lowering | None],
    tiles: Sequence[np.ndarray],
    judge: FidelityJudge,
) -> _Candidate | None:
    """Lower into ``scratch`` with ``lower`` and score the result; ``None`` when nothing was lowered."""
    scratch.mkdir()
    lowering = lower(scratch)
    if lowering is None:
        shutil.rmtree(scratch, ignore_errors=True)
        return None
    outputs = _engine_outputs(backend, scratch, lowering, list(tiles))
    return _Candidate(scratch, lowering, judge.measure(outputs), outputs, label)


def _lower_target(
    name: str,
    backend: Backend,
    precision: str,
    root: Path,
    onnx_path: Path,
    model: Any,
    source: ModelSource,
    split: SampleSplit,
    judge: FidelityJudge,
    reference_outputs: np.ndarray,
    validation_reference: np.ndarray,
    validation_score: float,
    changed: bool,
    standard: str,
    qat: _QatRoute,
    accuracy_control: bool = True,
) -> _Lowered:
    """Lower every variant, keep the best by the guard; fall back to accuracy control, then QAT, if needed.

    ``changed`` says whether the network was pruned or fine-tuned (for the advice when refused);
    ``standard`` names where an automatic threshold came from (empty for the recipe's own).
    ``onnx_path`` is the exported fp32 ONNX and ``model`` the torch module it was exported from;
    a backend gets the one it lowers (see :attr:`ebai.core.Backend.lowers_module`). For int8 on a
    backend that takes a QDQ ONNX, quantization-aware training (``qat``) is the last try, or the
    only one when the recipe asks for it always.
    """
    spec = source.input_spec
    folder = f"{name}-{precision}"
    calibration = [t[np.newaxis] for t in split.calibration]
    tried: list[_Candidate] = []
    qat_possible = precision == "int8" and qat.settings.when != "never" and takes_prequantized(backend)
    only_qat = qat_possible and qat.settings.when == "always"
    for i, options in enumerate([] if only_qat else backend.variants(precision)):

        def lower(scratch: Path, options: Mapping[str, Any] = options) -> Lowering:
            if backend.lowers_module:  # a backend that runs the network in PyTorch gets the module itself
                return backend.lower_module(
                    model, scratch, precision=precision, input_spec=spec, calibration=calibration, options=options
                )
            return backend.lower(
                onnx_path, scratch, precision=precision, input_spec=spec, calibration=calibration, options=options
            )

        found = _try(backend, root / f".{folder}.variant{i}", _label(options), lower, split.held_out_tiles, judge)
        if found is not None:
            tried.append(found)
            logger.info("%s %s %s: %s %.4f", name, precision, found.label, judge.metric, judge.value(found.fidelity))
    if not tried and not only_qat:
        msg = f"backend {name!r} offers no way to lower to {precision}: report this to its package"
        raise InputError(msg)
    best = max(tried, key=lambda c: judge.value(c.fidelity)) if tried else None
    fallback = ""
    if best is not None and not best.fidelity.passed:
        max_drop = validation_score - judge.threshold
        if not accuracy_control:
            fallback = "; accuracy control was switched off (fidelity.accuracy_control)"
        elif max_drop <= 0:
            fallback = (
                f"; no accuracy-aware fallback was tried, since the fp32 reference itself scores {validation_score:.4f} "
                "on the validation tiles"
            )
        else:
            pairs = [
                (t[np.newaxis], r[np.newaxis]) for t, r in zip(split.validation, validation_reference, strict=True)
            ]

            def controlled(scratch: Path) -> Lowering | None:
                return backend.lower_with_accuracy_control(
                    onnx_path,
                    scratch,
                    precision=precision,
                    input_spec=spec,
                    calibration=calibration,
                    validation=pairs,
                    metric=judge.batch_metric(),
                    max_drop=max_drop,
                    options=dict(best.lowering.options),
                )

            rescue = _try(
                backend,
                root / f".{folder}.accuracy-control",
                "accuracy control",
                controlled,
                split.held_out_tiles,
                judge,
            )
            if rescue is None:
                fallback = f"; {name} has no accuracy-aware fallback for {precision}"
            else:
                tried.append(rescue)
                fallback = f"; the accuracy-aware fallback reached {judge.value(rescue.fidelity):.4f}"
                if judge.value(rescue.fidelity) > judge.value(best.fidelity):
                    best = rescue
    qat_preset = ""
    if qat_possible and (best is None or not best.fidelity.passed):
        qat_preset = str(best.lowering.options.get("preset", "mixed")) if best is not None else "mixed"
        try:
            trained = _try(
                backend,
                root / f".{folder}.qat",
                "qat",
                lambda scratch: backend.lower_prequantized(qat.onnx(qat_preset), scratch, input_spec=spec),
                split.held_out_tiles,
                judge,
            )
        except MissingDependencyError as exc:
            if only_qat:
                raise
            fallback += f"; quantization-aware training was not tried ({exc})"
            trained = None
        except Exception as exc:  # a last resort that fails leaves the guard's verdict to speak
            if only_qat:
                raise
            shutil.rmtree(root / f".{folder}.qat", ignore_errors=True)
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            fallback += f"; quantization-aware training failed ({type(exc).__name__}: {reason})"
            trained = None
        if trained is not None:
            tried.append(trained)
            steps = qat.results[qat_preset].tuning.steps
            fallback += f"; quantization-aware training ({steps} steps) reached {judge.value(trained.fidelity):.4f}"
            if best is None or judge.value(trained.fidelity) > judge.value(best.fidelity):
                best = trained
    if best is None:
        msg = f"backend {name!r} did not lower the quantization-aware network: report this to its package"
        raise InputError(msg)
    for candidate in tried:
        if candidate is not best:
            shutil.rmtree(candidate.folder, ignore_errors=True)
    if not best.fidelity.passed:
        shutil.rmtree(best.folder, ignore_errors=True)
        figures = ", ".join(f"{c.label} {judge.value(c.fidelity):.4f}" for c in tried)
        msg = (
            f"{name} {precision} reaches {judge.metric} {judge.value(best.fidelity):.4f} against the original model on "
            f"{best.fidelity.samples} held-out tiles, below the threshold {judge.threshold:g}{standard} "
            f"(tried: {figures}{fallback}); "
            f"nothing was written: {_suggestion(precision, changed, any(c.label == 'qat' for c in tried))}"
        )
        raise FidelityError(msg)
    best.folder.rename(root / folder)
    record = {
        "fidelity_vs_reference": dict(compare(best.outputs, reference_outputs)),
        "variants": [
            {"options": dict(c.lowering.options), judge.metric: judge.value(c.fidelity), "route": _route(c, precision)}
            | ({"accuracy_control": True} if c.label == "accuracy control" else {})
            for c in tried
        ],
        "accuracy_control": best.label == "accuracy control",
        "route": _route(best, precision),
    }
    if best.label == "qat":
        record["qat"] = qat.results[qat_preset].to_dict()
    return _Lowered(backend, folder, best.lowering, best.fidelity, record)


def _time_targets(
    lowered: Sequence[_Lowered],
    root: Path,
    default_onnx: Path,
    default_module: Any,
    spec: Any,
    calibration: list[np.ndarray],
    batch: np.ndarray,
    settings: TimingSettings,
) -> list[TimingRecord | None]:
    """Time every target and its backend's default precision in the same interleaved rounds.

    The default is the original network lowered at the backend's ``default_precision`` and loaded
    with default engine options (those of the backend's ``"default"`` comparison variant where it
    lists one): what the user gets from the backend without ebai. A backend that lowers torch
    modules gets the original module (``default_module``) instead of its ONNX.
    """
    engines: dict[str, Engine] = {}
    labels: dict[str, str] = {}
    scratch: list[Path] = []
    untimed: set[str] = set()
    try:
        for target in lowered:
            backend = target.backend
            key = f"default:{backend.name}"
            if key in untimed:
                continue
            if key not in engines:
                folder = root / f".{backend.name}-default"
                scratch.append(folder)
                folder.mkdir()
                try:
                    lower = backend.lower_module if backend.lowers_module else backend.lower
                    default = lower(
                        default_module if backend.lowers_module else default_onnx,
                        folder,
                        precision=backend.default_precision,
                        input_spec=spec,
                        calibration=calibration,
                    )
                    # the backend's own "default" comparison row where it lists one, as `ebai benchmark` shows it
                    options = next((dict(v.options) for v in backend.comparison_variants() if v.key == "default"), {})
                    engines[key] = backend.load(folder, default, **options)
                except EbaiError as exc:
                    logger.warning("%s default precision could not be timed here (%s)", backend.name, exc)
                    untimed.add(key)
                    continue
                labels[key] = str(getattr(engines[key], "execution_precision", "") or backend.default_precision)
            engines[target.folder] = backend.load(root / target.folder, target.lowering)
        calls = {key: (lambda e=engine: e.infer(batch)) for key, engine in engines.items()}
        stats = measure_interleaved(calls, rounds=settings.rounds, warmup=settings.warmup)
    finally:
        for engine in engines.values():
            engine.close()
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
    out: list[TimingRecord | None] = []
    for target in lowered:
        key = f"default:{target.backend.name}"
        if key not in stats:
            out.append(None)
            continue
        median, default = stats[target.folder].median_s, stats[key].median_s
        speedup = paired_speedup(stats[key], stats[target.folder])
        key_name = f"{target.lowering.backend}:{target.lowering.precision}"
        note = ""
        if speedup < WORTHWHILE:
            note = (
                f"{key_name} runs {speedup:.2f}x the speed of {target.backend.name} at its default precision "
                f"({labels[key]}) on this machine ({duration(median)} vs {duration(default)} per call, "
                f"medians of {settings.rounds} interleaved rounds; the speed-up is paired round by round): "
                f"under {WORTHWHILE}x, so this compression buys little here over running the original network "
                f"in {target.backend.name}"
            )
            logger.warning("%s", note)
        out.append(
            TimingRecord(
                median_s=median,
                default_median_s=default,
                default_precision=labels[key],
                speedup=speedup,
                rounds=settings.rounds,
                batch_shape=tuple(batch.shape),
                note=note,
            )
        )
    return out


def _spare(
    recipe: Recipe,
    chosen: Mapping[str, Backend],
    original: Any,
    example: Any,
    split: SampleSplit,
    validation_original: np.ndarray,
    judge: FidelityJudge,
    spec: Any,
) -> Sparing:
    """Choose the layers ``prune.spare`` keeps whole, timed on the first target at its precision."""
    name, backend = next(iter(chosen.items()))
    precision = recipe.precision_for(name)
    timer = backend_timer(
        backend,
        precision,
        spec,
        # latency does not depend on the calibration's statistics: two tiles lower the probes faster
        [t[np.newaxis] for t in split.calibration[:_PROBE_CALIBRATION]],
        split.held_out_tiles[0][np.newaxis],
        opset=recipe.export.opset,
        exporter=recipe.export.exporter,
        rounds=recipe.timing.rounds,
        warmup=recipe.timing.warmup,
    )
    return spare_layers(
        original,
        example,
        recipe.prune,
        split.validation,
        validation_original,
        judge.batch_metric(),
        timer,
        metric_name=judge.metric,
        backend=backend.name,
        precision=precision,
    )


def compress(
    model_source: ModelSource,
    data_source: DataSource,
    recipe: Recipe | str | Path | Mapping[str, Any] | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    backends: Mapping[str, Backend] | None = None,
) -> Artifact:
    """Make a smaller, verified model artifact from a trained network and a few of the user's images.

    Steps: prune (Torch-Pruning) -> fine-tune (distillation from the original, or the user's
    callback), both only when the recipe asks for pruning -> export fp32 ONNX
    (``reference.onnx``) -> for every target, lower each of the backend's variants and keep the
    one the guard scores best -> accuracy guard against the original network on held-out images
    (with the backend's accuracy-aware fallback when below the threshold) -> each target timed
    against its backend's default precision on this machine, said when it gains under 1.2x -> one
    artifact holding ``reference.onnx`` and a ``<backend>-<precision>/`` folder per target, the
    fastest first.

    Parameters
    ----------
    model_source
        The trained model and its pre/postprocessing (e.g. an ``ebai.adapters`` adapter).
    data_source
        The user's images; some are held out for the guard, the rest feed fine-tuning and
        calibration.
    recipe
        A :class:`Recipe`, a YAML/TOML file, a mapping, or ``None`` for the defaults.
    out
        Artifact folder to write (conventionally ``name.ebai``).
    overwrite
        Replace an existing artifact.
    backends
        Backend instances by target name, used instead of the installed plugins (tests, custom
        backends).

    Returns
    -------
    Artifact
        The artifact as written and verified.

    Raises
    ------
    InputError
        For unusable inputs (model, data, recipe), before anything is written.
    FidelityError
        When a target stays below the fidelity threshold; nothing is written.
    """
    import torch

    out = Path(out)
    check_output(out, overwrite)
    recipe = _as_recipe(recipe)
    refused = getattr(model_source, "pruning_refused", None)
    if recipe.prune.enabled and refused:
        msg = f"{model_source.name} model cannot be pruned: {refused}"
        raise InputError(msg)
    chosen = _backends(recipe, backends)
    spec = model_source.input_spec
    tile = tuple(spec.tile)
    crop = _distillation_crop(recipe.fine_tune, tile, spec.divisor)

    samples = load_samples(model_source, data_source)
    split = split_samples(
        samples,
        tile=tile,
        held_out=recipe.fidelity.held_out,
        calibration=recipe.calibration.samples,
        tiles=recipe.fidelity.tiles,
        seed=recipe.seed,
    )
    del samples
    # a source's own test inputs (a bioimage.io package's test tensors) are held out as well
    extra = getattr(model_source, "held_out_samples", None)
    if callable(extra):
        tiles = [fit_tile(s, tile, center=True) for s in extra()]
        split = replace(split, held_out_tiles=[*split.held_out_tiles, *tiles])
    original = model_source.load_module().eval()
    run_original = torch_infer(original)
    original_outputs = run_batches(run_original, split.held_out_tiles, _BATCH)
    validation_original = run_batches(run_original, split.validation, _BATCH)
    # the threshold is settled once it is known whether the network itself changes (see below)
    judge = FidelityJudge(
        model_source, original_outputs, recipe.fidelity.metric, recipe.fidelity.threshold or CHANGED_THRESHOLD
    )
    judge.check_metric()

    example = torch.from_numpy(np.stack(split.calibration[:1]))
    model = _copy(original, model_source)
    pruning: dict[str, Any] | None = None
    fine_tuning: dict[str, Any] | None = None
    searched = recipe.prune.method == AUTO
    sparing: Sparing | None = None
    if recipe.prune.enabled and recipe.prune.spare:
        sparing = _spare(recipe, chosen, original, example, split, validation_original, judge, spec)
        recipe = replace(recipe, prune=replace(recipe.prune, keep=(*recipe.prune.keep, *sparing.spared)))
    if searched:
        if not (recipe.fine_tune.method == "distill" or not recipe.fine_tune.enabled):
            msg = "prune.method auto distils every probe itself: use fine_tune.method distill (or none) with it"
            raise InputError(msg)
        found = search_ratio(
            original,
            example,
            split.train,
            split.validation,
            validation_original,
            judge.batch_metric(),
            prune_settings=recipe.prune,
            fine_tune=recipe.fine_tune,
            search=recipe.search,
            target=recipe.fidelity.threshold or CHANGED_THRESHOLD,
            metric_name=judge.metric,
            tile=crop,
            seed=recipe.seed,
        )
        model, pruning = found.model, {**found.pruning, "search": found.to_dict()}
        fine_tuning = found.fine_tuning if recipe.fine_tune.enabled else None
    elif (
        recipe.prune.enabled
        and recipe.prune.rounds > 1
        and recipe.fine_tune.enabled
        and recipe.fine_tune.method == "distill"
    ):
        model, pruning, fine_tuning = prune_in_rounds(
            model,
            original,
            example,
            recipe.prune,
            recipe.fine_tune,
            split.train,
            split.validation,
            tile=crop,
            seed=recipe.seed,
            metric=judge.batch_metric(),
        )
    elif recipe.prune.enabled:
        pruned = prune(model, example, recipe.prune)
        model, pruning = pruned.model, pruned.to_dict()
    if (
        not searched
        and fine_tuning is None
        and recipe.fine_tune.enabled
        and (pruning is not None or recipe.fine_tune.method not in FINE_TUNE_METHODS)
    ):
        model, fine_tuning = _fine_tune(recipe, model, original, split, crop, judge.batch_metric())
    if pruning is not None and sparing is not None:
        pruning["sparing"] = sparing.to_dict()
    changed = pruning is not None or fine_tuning is not None
    standard = ""
    if recipe.fidelity.threshold is None and not changed:
        standard = (
            ", the standard for a network only lowered, not pruned: Pearson 0.99 to the original, or a task "
            "metric within 0.005 of the fp32 network's"
        )

    run_model = torch_infer(model)
    reference_outputs = run_batches(run_model, split.held_out_tiles, _BATCH)
    reference_fidelity = judge.measure(reference_outputs)
    judge.threshold = recipe.fidelity.threshold_for(changed, judge.value(reference_fidelity))
    reference_fidelity = replace(
        reference_fidelity,
        threshold=judge.threshold,
        passed=bool(judge.value(reference_fidelity) >= judge.threshold),
    )
    # scored per tile and averaged, as accuracy-aware lowering scores its validation pairs
    metric = judge.batch_metric()
    validation_score = score_per_tile(metric, run_batches(run_model, split.validation, _BATCH), validation_original)
    if pruning is not None:
        pruning["fidelity"] = reference_fidelity.to_dict()
    if not reference_fidelity.passed:
        what = " and ".join(w for w, done in (("pruned", pruning), ("fine-tuned", fine_tuning)) if done) or "unchanged"
        msg = (
            f"the {what} fp32 network reaches {judge.metric} "
            f"{judge.value(reference_fidelity):.4f} against the original on {reference_fidelity.samples} held-out tiles, "
            f"below the threshold {judge.threshold}; nothing was written: prune less (e.g. ratio 0.3), give more "
            "fine-tuning steps, or lower fidelity.threshold"
        )
        raise FidelityError(msg)

    with ArtifactWriter(out, overwrite) as writer:
        exported: ExportResult = export_onnx(
            model, writer.root / REFERENCE, example, opset=recipe.export.opset, exporter=recipe.export.exporter
        )
        reference_info = {**exported.to_dict(), "fidelity_vs_original": reference_fidelity.to_dict()}
        qat = _QatRoute(
            recipe.qat,
            model,
            original,
            split,
            tile,
            writer.root / ".qat",
            recipe.export.opset,
            recipe.seed,
            judge.batch_metric(),
        )
        lowered = [
            _lower_target(
                name,
                backend,
                recipe.precision_for(name),
                writer.root,
                exported.path,
                model,
                model_source,
                split,
                judge,
                reference_outputs,
                validation_original,
                validation_score,
                changed,
                standard,
                qat,
                recipe.fidelity.accuracy_control,
            )
            for name, backend in chosen.items()
        ]
        default_onnx = exported.path
        if changed:  # the default runs the original network, as the user would without ebai
            default_onnx = writer.root / ".original" / REFERENCE
            default_onnx.parent.mkdir()
            export_onnx(original, default_onnx, example, opset=recipe.export.opset, exporter=recipe.export.exporter)
        shutil.rmtree(qat.folder, ignore_errors=True)
        try:
            timings = _time_targets(
                lowered,
                writer.root,
                default_onnx,
                original,
                spec,
                [t[np.newaxis] for t in split.calibration],
                split.held_out_tiles[0][np.newaxis],
                recipe.timing,
            )
        finally:
            shutil.rmtree(writer.root / ".original", ignore_errors=True)
        records = []
        for target, timing in zip(lowered, timings, strict=True):
            record = TargetRecord.from_lowering(
                target.lowering, target.folder, calibration=split.record(), fidelity=target.fidelity
            )
            extra = {**dict(record.record), **target.record, "reference": reference_info}
            records.append(replace(record, record=extra, timing=timing))
        # the fastest target first: it is what `ebai run` picks when none is named
        records.sort(key=lambda r: r.timing.median_s if r.timing else float("inf"))
        versions = package_versions(*_VERSIONED, *{f"ebai-{n}" for n in chosen})
        name = out.name[: -len(".ebai")] if out.name.endswith(".ebai") else out.name
        manifest = Manifest(
            name=name,
            input=spec,
            output=model_source.output_spec,
            targets=tuple(records),
            reference=REFERENCE,
            source=dict(model_source.describe()),
            pruning=pruning,
            fine_tuning=fine_tuning,
            versions=versions,
        )
        writer.commit(manifest)
    return Artifact.open(out)
