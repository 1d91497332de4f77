"""``compress``: prune, fine-tune, export, lower for every target, guard, and write one artifact.

The order is chosen so a failure costs as little as possible and never leaves files behind:
everything that can be checked cheaply (output path, backends, recipe, data) is checked before
any training; the guard's verdict on the fp32 network comes before any lowering; and all files are
written into the temporary folder of an :class:`~ebai.core.ArtifactWriter`, published only when
every target has passed.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ebai.compress._distillation import distill
from ebai.compress._guard import FidelityJudge, compare, run_batches, torch_infer
from ebai.compress._onnx_export import ExportResult, export_onnx
from ebai.compress._pruning import prune
from ebai.compress._recipe import FINE_TUNE_METHODS, Recipe
from ebai.compress._samples import SampleSplit, load_samples, split_samples
from ebai.core.artifact import Artifact, ArtifactWriter, package_versions
from ebai.core.errors import BackendUnavailableError, FidelityError, InputError
from ebai.core.files import check_output
from ebai.core.interfaces import Backend, DataSource, Engine, Lowering, ModelSource
from ebai.core.manifest import FidelityRecord, Manifest, TargetRecord
from ebai.core.plugins import get_backend

__all__ = ["REFERENCE", "compress"]

logger = logging.getLogger("ebai")

#: File name of the fp32 ONNX model inside an artifact.
REFERENCE = "reference.onnx"
_VERSIONED = (
    "ebai-core",
    "ebai-compress",
    "ebai-adapters",
    "torch",
    "torch-pruning",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
)
_BATCH = 4


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
        out[name] = backend
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


def _fine_tune(
    recipe: Recipe, student: Any, teacher: Any, split: SampleSplit, tile: tuple[int, ...]
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
            tile=tile,
            steps=settings.steps,
            lr=settings.lr,
            loss=settings.loss,
            batch_size=settings.batch_size,
            eval_every=settings.eval_every,
            patience=settings.patience,
            validation=split.validation,
            seed=recipe.seed,
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


def _suggestion(precision: str) -> str:
    if precision == "int8":
        return "try fp16 or fp32 for this target, a lower pruning ratio, more fine-tuning steps, or a lower fidelity.threshold"
    return "try a lower pruning ratio, more fine-tuning steps, or a lower fidelity.threshold"


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
) -> tuple[str, Lowering, FidelityRecord, dict[str, Any]]:
    """Lower every variant, keep the best by the guard; fall back to accuracy control if needed.

    ``onnx_path`` is the exported fp32 ONNX and ``model`` the torch module it was exported from;
    a backend gets the one it lowers (see :attr:`ebai.core.Backend.lowers_module`).
    """
    spec = source.input_spec
    folder = f"{name}-{precision}"
    calibration = [t[np.newaxis] for t in split.calibration]
    tried: list[dict[str, Any]] = []
    best: tuple[Path, Lowering, FidelityRecord, np.ndarray] | None = None
    for i, options in enumerate(backend.variants(precision)):
        scratch = root / f".{folder}.variant{i}"
        scratch.mkdir()
        if backend.lowers_module:  # a backend that runs the network in PyTorch gets the module itself
            lowering = backend.lower_module(
                model, scratch, precision=precision, input_spec=spec, calibration=calibration, options=options
            )
        else:
            lowering = backend.lower(
                onnx_path, scratch, precision=precision, input_spec=spec, calibration=calibration, options=options
            )
        outputs = _engine_outputs(backend, scratch, lowering, split.held_out_tiles)
        record = judge.measure(outputs)
        tried.append({"options": dict(options), judge.metric: judge.value(record)})
        logger.info(
            "%s %s variant %s: %s %.4f", name, precision, options or "default", judge.metric, judge.value(record)
        )
        if best is None or judge.value(record) > judge.value(best[2]):
            if best is not None:
                shutil.rmtree(best[0], ignore_errors=True)
            best = (scratch, lowering, record, outputs)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    if best is None:
        msg = f"backend {name!r} offers no way to lower to {precision}: report this to its package"
        raise InputError(msg)
    accuracy_control = False
    fallback = ""
    if not best[2].passed:
        max_drop = validation_score - judge.threshold
        if max_drop <= 0:
            fallback = (
                f"no accuracy-aware fallback was tried, since the fp32 reference itself scores {validation_score:.4f} "
                "on the validation tiles"
            )
        else:
            scratch = root / f".{folder}.accuracy-control"
            scratch.mkdir()
            pairs = zip(split.validation, validation_reference, strict=True)
            lowering = backend.lower_with_accuracy_control(
                onnx_path,
                scratch,
                precision=precision,
                input_spec=spec,
                calibration=calibration,
                validation=[(t[np.newaxis], r[np.newaxis]) for t, r in pairs],
                metric=judge.batch_metric(),
                max_drop=max_drop,
                options=dict(best[1].options),
            )
            if lowering is None:
                fallback = f"{name} has no accuracy-aware fallback for {precision}"
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                outputs = _engine_outputs(backend, scratch, lowering, split.held_out_tiles)
                record = judge.measure(outputs)
                tried.append(
                    {"options": dict(lowering.options), "accuracy_control": True, judge.metric: judge.value(record)}
                )
                fallback = f"the accuracy-aware fallback reached {judge.value(record):.4f}"
                if judge.value(record) > judge.value(best[2]):
                    shutil.rmtree(best[0], ignore_errors=True)
                    best = (scratch, lowering, record, outputs)
                    accuracy_control = True
                else:
                    shutil.rmtree(scratch, ignore_errors=True)
    scratch, lowering, record, outputs = best
    if not record.passed:
        msg = (
            f"{name} {precision} reaches {judge.metric} {judge.value(record):.4f} against the original model on "
            f"{record.samples} held-out tiles, below the threshold {judge.threshold} (best of {len(tried)} lowering(s); "
            f"{fallback}); nothing was written: {_suggestion(precision)}"
        )
        raise FidelityError(msg)
    scratch.rename(root / folder)
    extra = {
        "fidelity_vs_reference": dict(compare(outputs, reference_outputs)),
        "variants": tried,
        "accuracy_control": accuracy_control,
    }
    return folder, lowering, record, extra


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
    callback) -> export fp32 ONNX (``reference.onnx``) -> for every target, lower each of the
    backend's variants and keep the one the guard scores best -> accuracy guard against the
    original network on held-out images (with the backend's accuracy-aware fallback when below
    the threshold) -> one artifact holding ``reference.onnx`` and a ``<backend>-<precision>/``
    folder per target.

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
    chosen = _backends(recipe, backends)
    spec = model_source.input_spec
    tile = tuple(spec.tile)

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
    original = model_source.load_module().eval()
    run_original = torch_infer(original)
    original_outputs = run_batches(run_original, split.held_out_tiles, _BATCH)
    validation_original = run_batches(run_original, split.validation, _BATCH)
    judge = FidelityJudge(model_source, original_outputs, recipe.fidelity.metric, recipe.fidelity.threshold)
    judge.check_metric()

    example = torch.from_numpy(np.stack(split.calibration[:1]))
    model = _copy(original, model_source)
    pruning: dict[str, Any] | None = None
    fine_tuning: dict[str, Any] | None = None
    if recipe.prune.enabled:
        p = recipe.prune
        pruned = prune(
            model,
            example,
            method=p.method,
            ratio=p.ratio,
            keep=p.keep,
            layer_ratios=p.layer_ratios,
            global_pruning=p.global_pruning,
            round_to=p.round_to,
        )
        model, pruning = pruned.model, pruned.to_dict()
    if recipe.fine_tune.enabled and (pruning is not None or recipe.fine_tune.method not in FINE_TUNE_METHODS):
        model, fine_tuning = _fine_tune(recipe, model, original, split, tile)

    run_model = torch_infer(model)
    reference_outputs = run_batches(run_model, split.held_out_tiles, _BATCH)
    reference_fidelity = judge.measure(reference_outputs)
    # scored per tile and averaged, as accuracy-aware lowering scores its validation pairs
    metric = judge.batch_metric()
    validation_model = run_batches(run_model, split.validation, _BATCH)
    validation_score = float(
        np.mean(
            [metric(c[np.newaxis], r[np.newaxis]) for c, r in zip(validation_model, validation_original, strict=False)]
        )
    )
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

    records: list[TargetRecord] = []
    with ArtifactWriter(out, overwrite) as writer:
        exported: ExportResult = export_onnx(
            model, writer.root / REFERENCE, example, opset=recipe.export.opset, exporter=recipe.export.exporter
        )
        reference_info = {**exported.to_dict(), "fidelity_vs_original": reference_fidelity.to_dict()}
        for name, backend in chosen.items():
            precision = recipe.precision_for(name)
            folder, lowering, record, extra = _lower_target(
                name,
                backend,
                precision,
                writer.root,
                exported.path,
                model,
                model_source,
                split,
                judge,
                reference_outputs,
                validation_original,
                validation_score,
            )
            target = TargetRecord.from_lowering(lowering, folder, calibration=split.record(), fidelity=record)
            records.append(replace(target, record={**dict(target.record), **extra, "reference": reference_info}))
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
