"""The variants a Table-1 row measures: the task's network compressed through the product path, opened.

ebai-compress and the backends are imported here, inside the functions, when a table is asked for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.errors import MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.tasks._adapter import TaskAdapter
from ebai.tasks._settings import BenchSettings, distill_steps
from ebai.tasks._task import CALIBRATION_SEED, Task

__all__ = [
    "Variant",
    "compression_record",
    "gpu_available",
    "open_variants",
    "recipe",
    "require_compression",
]

logger = logging.getLogger("ebai")

_INSTALL = install_line("tasks")


@dataclass
class Variant:
    """One model variant ready to run: what the row calls it and how to call it on one batch."""

    key: str
    label: str
    device: str
    precision: str
    infer: Callable[[np.ndarray], np.ndarray]
    parameters: int | None = None


def require_compression() -> None:
    """Raise :class:`MissingDependencyError` unless ebai-compress and the OpenVINO backend can run."""
    from ebai.core.plugins import BACKENDS, get_plugin

    try:
        import ebai.compress  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL) from exc
    try:
        spec = get_plugin(BACKENDS, "openvino")
    except Exception as exc:
        raise MissingDependencyError(_INSTALL) from exc
    avail = spec.is_available()
    if not avail:
        msg = f"the OpenVINO backend cannot run here ({avail.reason}): {_INSTALL}"
        raise MissingDependencyError(msg)


def gpu_available() -> bool:
    """Whether the TensorRT backend is installed and can run here."""
    from ebai.core.plugins import BACKENDS, get_plugin

    try:
        return bool(get_plugin(BACKENDS, "tensorrt").is_available())
    except Exception:  # not installed, or broken: no GPU rows
        return False


def recipe(task: Task, settings: BenchSettings, *, pruned: bool, targets: dict[str, str]) -> Any:
    """Return the compression recipe of a row: int8 alone, or pruned + distilled + int8, with the task's guard."""
    from ebai.compress import CalibrationSettings, FidelitySettings, FineTuneSettings, PruneSettings, Recipe

    if pruned:
        rounds = int(settings.prune_rounds)
        prune = PruneSettings(
            method=settings.prune_method, ratio=settings.prune_ratio, rounds=rounds, spare=settings.prune_spare
        )
        steps = distill_steps(task, settings)
        fine_tune = FineTuneSettings(
            method="distill",
            steps=steps,
            # one check per 25 steps, patient for 8, where a round gets enough steps to warm up and decay
            eval_every=10 if rounds == 1 else 25,
            patience=6 if rounds == 1 else 8,
            schedule="constant" if rounds == 1 else "cosine",
            budget_minutes=settings.distill_minutes,
            # on the crops the network was trained on: cheaper steps than whole tiles, more of them per minute
            crop=task.plan.crop if settings.distill_on_training_crops else None,
        )
    else:
        prune = PruneSettings(method="none")
        fine_tune = FineTuneSettings(method="none", steps=0)
    return Recipe(
        prune=prune,
        fine_tune=fine_tune,
        calibration=CalibrationSettings(samples=settings.calibration),
        fidelity=FidelitySettings(
            metric=task.guard_metric, threshold=task.guard_threshold(pruned), held_out=1, tiles=settings.guard_tiles
        ),
        targets=tuple(targets),
        precision=dict(targets),
    )


def _distill_plan(settings: BenchSettings) -> str:
    minutes = f" or {settings.distill_minutes:g} min" if settings.distill_minutes else ""
    rounds = f" over {settings.prune_rounds} pruning rounds" if settings.prune_rounds > 1 else ""
    return minutes + rounds


def _spare_plan(settings: BenchSettings) -> str:
    if not settings.prune_spare:
        return ""
    return f" sparing the layers worth up to {settings.prune_spare:.0%} of the time saved"


def compression_record(artifact: Any) -> dict[str, Any]:
    """Return what the report keeps of a compressed artifact: pruning, distillation, guard verdicts."""
    m = artifact.manifest
    targets = {}
    for t in m.targets:
        fid = t.fidelity.to_dict() if t.fidelity else None
        targets[t.key] = {"fidelity_vs_original": fid, "options": dict(t.options)}
    return {"pruning": _short_pruning(m.pruning), "fine_tuning": m.fine_tuning, "targets": targets}


def _short_pruning(pruning: Any) -> Any:
    if not pruning:
        return pruning
    keep = (
        "method",
        "ratio",
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "mac_reduction",
        "fidelity",
        "rounds",
    )
    short = {k: pruning[k] for k in keep if k in pruning}
    sparing = pruning.get("sparing")
    if sparing:  # the choice, without the per-layer measurements (they stay in the artifact)
        short["sparing"] = {k: v for k, v in sparing.items() if k != "layers"}
    return short


def _count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def open_variants(
    task: Task,
    adapter: TaskAdapter,
    settings: BenchSettings,
    workdir: Path,
    record: dict[str, Any],
    status: Callable[[str], None],
    stack: contextlib.ExitStack,
) -> list[Variant]:
    """Compress the task's network and open every variant the table measures.

    The engines are closed with ``stack``. The OpenVINO baselines (f32 and default precision) are
    the backend's own :meth:`~ebai.core.interfaces.Backend.comparison_variants` of the artifact's
    reference ONNX, opened by :func:`ebai.core.comparison.baseline_engines` as ``ebai benchmark`` does.
    """
    from ebai.compress import compress
    from ebai.core.comparison import baseline_engines
    from ebai.core.data import ArraySource

    gpu = gpu_available() if settings.gpu is None else settings.gpu
    images, _ = task.make_samples(settings.user_images, CALIBRATION_SEED, task.shape)
    data = ArraySource(list(images))
    int8_targets = {"openvino": "int8", **({"tensorrt": "int8"} if gpu else {})}
    variants: list[Variant] = []

    module = adapter.load_module()
    params = _count_parameters(module)
    variants.append(Variant("torch", "PyTorch eager", "CPU", "fp32", adapter.torch_infer(module), params))

    status(f"[{task.name}] compressing: int8 (NNCF post-training quantization, accuracy guard)")
    art_int8 = compress(
        adapter, data, recipe(task, settings, pruned=False, targets=int8_targets), workdir / "int8.ebai"
    )
    record["int8"] = compression_record(art_int8)

    reference = art_int8.file(art_int8.manifest.reference)  # the unpruned fp32 network, lowered as is
    for b in stack.enter_context(baseline_engines(reference, adapter.input_spec, ["openvino"])):
        variants.append(Variant(b.key, b.variant.label, "CPU", f"fp32 IR, runs {b.runs}", b.engine.infer, params))
    int8 = stack.enter_context(art_int8.load_engine("openvino", "int8"))
    variants.append(Variant("openvino-int8", "OpenVINO + NNCF", "CPU", "int8", int8.infer, params))

    ratio = f"{settings.prune_ratio:.0%}"
    status(
        f"[{task.name}] compressing: prune {ratio} of channels ({settings.prune_method.upper()}){_spare_plan(settings)}, "
        f"distil up to {distill_steps(task, settings)} steps{_distill_plan(settings)}, int8"
    )
    art_pruned = compress(
        adapter, data, recipe(task, settings, pruned=True, targets=int8_targets), workdir / "pruned.ebai"
    )
    record["pruned-int8"] = compression_record(art_pruned)
    pruned_params = (art_pruned.manifest.pruning or {}).get("params_after")
    pruned = stack.enter_context(art_pruned.load_engine("openvino", "int8"))
    label = f"pruned {ratio} ({settings.prune_method.upper()}) + distilled + OpenVINO int8"
    variants.append(Variant("openvino-pruned-int8", label, "CPU", "int8", pruned.infer, pruned_params))

    if gpu:
        variants.extend(
            _gpu_variants(
                task,
                adapter,
                settings,
                data,
                workdir,
                art_int8,
                art_pruned,
                params,
                pruned_params,
                record,
                status,
                stack,
            )
        )
    return variants


def _gpu_variants(
    task: Task,
    adapter: TaskAdapter,
    settings: BenchSettings,
    data: Any,
    workdir: Path,
    art_int8: Any,
    art_pruned: Any,
    params: int,
    pruned_params: int | None,
    record: dict[str, Any],
    status: Callable[[str], None],
    stack: contextlib.ExitStack,
) -> list[Variant]:
    """TensorRT rows: fp16 and int8 of the network, int8 of the pruned one, PyTorch on the GPU."""
    from ebai.compress import compress

    out: list[Variant] = []
    try:
        import torch

        if torch.cuda.is_available():
            module = adapter.load_module().cuda()

            def torch_gpu(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    y = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda())
                    return y.float().cpu().numpy()

            out.append(Variant("torch-gpu", "PyTorch eager", "GPU", "fp32", torch_gpu, params))
    except Exception:  # a CPU-only torch: no PyTorch GPU row
        logger.debug("no PyTorch GPU row", exc_info=True)
    status(f"[{task.name}] compressing: TensorRT fp16")
    art_fp16 = compress(
        adapter, data, recipe(task, settings, pruned=False, targets={"tensorrt": "fp16"}), workdir / "trt-fp16.ebai"
    )
    record["tensorrt-fp16"] = compression_record(art_fp16)
    for key, label, art, precision, n in (
        ("tensorrt-fp16", "TensorRT", art_fp16, "fp16", params),
        ("tensorrt-int8", "TensorRT", art_int8, "int8", params),
        ("tensorrt-pruned-int8", "pruned + distilled + TensorRT", art_pruned, "int8", pruned_params),
    ):
        engine = stack.enter_context(art.load_engine("tensorrt", precision))
        out.append(Variant(key, label, "GPU", precision, engine.infer, n))
    return out
