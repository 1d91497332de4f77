"""The ``tensorrt`` backend: lowering to ONNX files on any machine, engines built on the target GPU.

``lower`` needs no GPU and no TensorRT: it writes ``model.fp32.onnx`` (the ONNX as is),
``model.fp16.onnx`` (fp16 weights and activations, fp32 I/O) or ``model.int8.qdq.onnx`` (explicit
symmetric int8 quantization), which ONNX Runtime can check on a CPU. ``load`` builds the TensorRT
engine from that file on first use on the target GPU and caches it (see :mod:`ebai.tensorrt._cache`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.artifact import sha256_file
from ebai.core.errors import ArtifactError, BackendUnavailableError, InputError
from ebai.core.interfaces import Backend, ComparisonVariant, Lowering, Metric
from ebai.core.specs import InputSpec
from ebai.tensorrt._build import (
    BUILD_OPTIONS,
    BuildSettings,
    build_serialized,
    deserialize,
    import_tensorrt,
    make_logger,
)
from ebai.tensorrt._cache import DeviceIdentity, EngineStore, cache_key, default_cache_dirs
from ebai.tensorrt._cuda import CudaRuntime
from ebai.tensorrt._engine import TensorRTEngine
from ebai.tensorrt._inspect import LayerReport
from ebai.tensorrt._onnx_io import check_against_spec, copy_model, read_io

__all__ = ["ENTRY_FILES", "TensorRTBackend"]

logger = logging.getLogger("ebai")

#: The file each precision is lowered to.
ENTRY_FILES = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.qdq.onnx"}
_INT8_OPTIONS = ("quantizer", "calibration_method", "percentile", "nodes_to_exclude")
_FP16_OPTIONS = ("op_block_list", "node_block_list")
_LOAD_ONLY = ("cache_dir", "device")


def _check_options(options: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        msg = f"unknown TensorRT {where} option(s) {', '.join(unknown)}: use {', '.join(sorted(allowed))}"
        raise InputError(msg)


class TensorRTBackend(Backend):
    """Explicit-quantization int8, fp16 and fp32 on NVIDIA GPUs through TensorRT >= 10.

    Lowering options (``options`` of :meth:`lower`, recorded in the manifest):

    - int8: ``quantizer`` (``auto``, ``modelopt``, ``onnxruntime``), ``calibration_method``
      (``minmax``; ``percentile`` with ONNX Runtime; ``entropy`` with ModelOpt), ``percentile``
      (default 99.999), ``nodes_to_exclude`` (node names kept float);
    - fp16: ``op_block_list``, ``node_block_list`` (kept float32);
    - engine build, also accepted by :meth:`load`: ``min_batch`` (1), ``opt_batch`` (4),
      ``max_batch`` (8), ``workspace_mb`` (2048), ``tf32`` (True), ``optimization_level`` (TensorRT's).

    :meth:`load` also takes ``cache_dir`` (where engines are cached instead of the artifact's
    ``cache/tensorrt`` and the user cache) and ``device`` (GPU index, default 0).
    """

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")

    def available(self) -> str | None:
        """``None`` when TensorRT, the CUDA bindings, a GPU and a recent enough driver are here."""
        from ebai.tensorrt._plugin import backend as spec

        avail = spec.is_available()
        return None if avail else avail.reason

    def comparison_variants(self) -> list[ComparisonVariant]:
        """Return the fp32 engine with TF32 off, and as TensorRT builds fp32 by default (TF32 allowed).

        TensorRT's default fp32 build lets convolutions and matrix products run in TF32 on GPUs that
        have it (Ampere and later): that is what a user gets from TensorRT without ebai, so every
        compression is compared with it. The row with TF32 off is the model exactly as trained.
        """
        return [
            ComparisonVariant("f32", "TensorRT, fp32 (TF32 off)", {"tf32": False}, "fp32", "TF32 disabled"),
            ComparisonVariant(
                "default",
                "TensorRT, default precision",
                {"tf32": True},
                "",
                "TensorRT default for fp32 (TF32 where the GPU has it)",
            ),
        ]

    def variants(self, precision: str) -> list[dict[str, Any]]:
        """int8 calibrations worth comparing (the guard keeps the best); one default otherwise."""
        if precision != "int8":
            return [{}]
        from ebai.tensorrt._qdq import resolve_quantizer

        if resolve_quantizer("auto") == "modelopt":
            return [
                {"quantizer": "modelopt", "calibration_method": "minmax"},
                {"quantizer": "modelopt", "calibration_method": "entropy"},
                {"quantizer": "onnxruntime", "calibration_method": "percentile"},
            ]
        return [
            {"quantizer": "onnxruntime", "calibration_method": "minmax"},
            {"quantizer": "onnxruntime", "calibration_method": "percentile"},
        ]

    # -- lowering ------------------------------------------------------------------------------

    def lower(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        precision: str,
        input_spec: InputSpec,
        calibration: Sequence[np.ndarray],
        options: Mapping[str, Any] | None = None,
    ) -> Lowering:
        """Write the ONNX file TensorRT will build from (no GPU needed); see the class docstring."""
        opts = dict(options or {})
        if precision not in ENTRY_FILES:
            msg = f"TensorRT lowering knows precisions {', '.join(ENTRY_FILES)}, not {precision!r}: pick one of those"
            raise InputError(msg)
        per_precision = {"int8": _INT8_OPTIONS, "fp16": _FP16_OPTIONS, "fp32": ()}[precision]
        _check_options(opts, (*per_precision, *BUILD_OPTIONS), f"{precision} lowering")
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        if not onnx_path.is_file():
            msg = f"ONNX file {str(onnx_path)!r} does not exist: export the model first"
            raise InputError(msg)
        model_io = read_io(onnx_path)
        check_against_spec(model_io, input_spec, what=onnx_path.name)
        sample_shape = (input_spec.channels, *input_spec.tile)
        settings = BuildSettings.from_options(opts, sample_shape)  # validates the profile early
        if precision == "int8":
            _check_calibration(calibration, sample_shape)
        entry = ENTRY_FILES[precision]
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ebai-lower-") as tmp:
            work = Path(tmp) / entry
            if precision == "fp32":
                written = copy_model(onnx_path, work)
                detail: dict[str, Any] = {"conversion": "none (the fp32 ONNX as exported)"}
            elif precision == "fp16":
                from ebai.tensorrt._fp16 import convert_fp16

                detail = dict(
                    convert_fp16(
                        onnx_path,
                        work,
                        op_block_list=opts.get("op_block_list"),
                        node_block_list=tuple(opts.get("node_block_list", ())),
                    )
                )
                written = [Path(tmp) / f for f in detail.pop("files")]
            else:
                from ebai.tensorrt._qdq import quantize_int8

                detail = quantize_int8(
                    onnx_path,
                    work,
                    calibration,
                    quantizer=str(opts.get("quantizer", "auto")),
                    calibration_method=str(opts.get("calibration_method", "minmax")),
                    percentile=float(opts.get("percentile", 99.999)),
                    nodes_to_exclude=tuple(opts.get("nodes_to_exclude", ())),
                )
                written = [Path(tmp) / f for f in detail.pop("files")]
            for path in written:
                os.replace(path, out_dir / path.name)
        files = tuple(p.name for p in written)
        recorded = {
            "input_shape": list(sample_shape),
            **{k: v for k, v in settings.as_dict().items() if k != "input_shape"},
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items() if k not in BUILD_OPTIONS},
        }
        record = {
            "onnx_sha256": sha256_file(out_dir / entry),
            "input": model_io.inputs[0].name,
            "output": model_io.outputs[0].name,
            "engine": "built on first load on the target GPU, cached in the artifact's cache/tensorrt folder",
            **detail,
        }
        return Lowering(
            backend=self.name, precision=precision, files=files, entry=entry, options=recorded, record=record
        )

    def lower_with_accuracy_control(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        precision: str,
        input_spec: InputSpec,
        calibration: Sequence[np.ndarray],
        validation: Sequence[tuple[np.ndarray, np.ndarray]],
        metric: Metric,
        max_drop: float,
        options: Mapping[str, Any] | None = None,
    ) -> Lowering | None:
        """int8 with layers left in float until the QDQ file scores within ``max_drop`` of perfect.

        The QDQ file is scored with ONNX Runtime on the CPU (the same numerics TensorRT's explicit
        quantization follows). Layers are released to float one at a time, transposed convolutions
        first, then the first and last convolutions, then the rest from the output backwards, each
        time re-quantizing; at most half of the weighted layers are released before giving up
        (``None``). Other precisions have no such fallback (``None``).
        """
        if precision != "int8" or not validation:
            return None
        from ebai.tensorrt._accuracy import release_order, score_onnx

        opts = dict(options or {})
        base_excluded = list(opts.pop("nodes_to_exclude", ()))
        target = 1.0 - float(max_drop)
        trials: list[dict[str, Any]] = []
        excluded = list(base_excluded)
        order: list[str] | None = None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ebai-ac-") as tmp:
                lowering = self.lower(
                    onnx_path,
                    Path(tmp),
                    precision="int8",
                    input_spec=input_spec,
                    calibration=calibration,
                    options={**opts, "nodes_to_exclude": excluded},
                )
                score = score_onnx(Path(tmp) / lowering.entry, validation, metric)
                if order is None:
                    order = [n for n in release_order(Path(tmp) / lowering.entry) if n not in excluded]
                trials.append({"excluded": list(excluded), "score": score})
                logger.info(
                    "int8 accuracy control: %d layer(s) in float, score %.4f (need %.4f)", len(excluded), score, target
                )
                if score >= target:
                    for f in lowering.files:
                        os.replace(Path(tmp) / f, out_dir / f)
                    break
            released = len(excluded) - len(base_excluded)
            if released >= max(1, len(order) // 2) or released >= len(order):
                return None
            excluded.append(order[released])
        record = dict(lowering.record)
        record["accuracy_control"] = {"target": target, "trials": trials, "evaluated_with": "onnxruntime CPU"}
        return Lowering(
            backend=lowering.backend,
            precision=lowering.precision,
            files=lowering.files,
            entry=lowering.entry,
            options=lowering.options,
            record=record,
        )

    # -- loading -------------------------------------------------------------------------------

    def load(self, directory: Path, lowering: Lowering, **options: Any) -> TensorRTEngine:
        """Build (or take from the cache) the engine for ``lowering`` and return the runner.

        ``directory`` is the target's folder inside the artifact; its parent is the artifact root,
        whose ``cache/tensorrt`` folder keeps built engines. Raises
        :class:`~ebai.core.errors.MissingDependencyError` without TensorRT or cuda-python and
        :class:`~ebai.core.errors.BackendUnavailableError` without a usable GPU.
        """
        _check_options(options, (*BUILD_OPTIONS, *_LOAD_ONLY), "load")
        directory = Path(directory)
        entry = directory / lowering.entry
        if not entry.is_file():
            msg = f"TensorRT target file {str(entry)!r} is missing: the artifact is incomplete, recreate it"
            raise ArtifactError(msg)
        shape = lowering.options.get("input_shape")
        if not shape:
            msg = f"the {lowering.precision} TensorRT target records no input_shape: recreate the artifact with this ebai-tensorrt"
            raise ArtifactError(msg)
        build_opts = {k: v for k, v in {**lowering.options, **options}.items() if k in BUILD_OPTIONS}
        settings = BuildSettings.from_options(build_opts, shape)

        trt = import_tensorrt()
        if lowering.precision == "int8":
            _check_transposed_scales(entry, str(trt.__version__))
        cuda = CudaRuntime.load()
        device = cuda.device(int(options.get("device", 0)))
        identity = DeviceIdentity(device.name, device.compute_capability, str(trt.__version__))
        onnx_sha = sha256_file(entry)
        store = EngineStore(default_cache_dirs(directory, options.get("cache_dir")))
        build = settings.as_dict()
        name = store.file_name(directory.name or "tensorrt", identity, cache_key(identity, onnx_sha, build))
        expected = store.expected_header(identity, onnx_sha, build)
        trt_logger = make_logger(trt)
        runtime = trt.Runtime(trt_logger)

        engine, report, source, path, seconds = None, None, "cache", None, None
        blob = b""
        found = store.find(name, expected)
        if found is not None:
            blob, header, path = found
            engine = deserialize(runtime, blob)
            if engine is None:
                logger.warning("cached TensorRT engine %s could not be deserialized; rebuilding it", path)
            elif isinstance(header.get("layer_report"), Mapping):
                report = LayerReport.from_dict(header["layer_report"])
        if engine is None:
            import time

            source = "built"
            start = time.perf_counter()
            blob, timing = build_serialized(trt, trt_logger, entry, settings, store.read_timing(identity))
            seconds = round(time.perf_counter() - start, 3)
            if timing:
                store.write_timing(identity, timing)
            engine = deserialize(runtime, blob)
            if engine is None:
                msg = f"TensorRT {trt.__version__} built an engine for {device.describe()} but cannot load it back: report this to ebai-tensorrt"
                raise BackendUnavailableError(msg)
        runner = TensorRTEngine(
            trt=trt,
            cuda=cuda,
            runtime=runtime,
            engine=engine,
            precision=lowering.precision,
            min_batch=settings.min_batch,
            max_batch=settings.max_batch,
            sample_shape=settings.input_shape,
            layer_report=report,
            device_index=device.index,
            keep_alive=(trt_logger,),
        )
        if source == "built":
            header = {
                **expected,
                "layer_report": runner.layer_report.to_dict(),
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": seconds,
            }
            path = store.write(name, header, blob)
        runner.build_info = {
            "source": source,
            "cache_file": str(path) if path else None,
            "gpu": device.describe(),
            "cuda_driver": _cuda_version(cuda.driver_version()),
            "tensorrt": str(trt.__version__),
            "build_seconds": seconds,
            "profile": {
                "min_batch": settings.min_batch,
                "opt_batch": settings.opt_batch,
                "max_batch": settings.max_batch,
            },
            "sample_shape": list(settings.input_shape),
        }
        return runner


#: First TensorRT that builds int8 transposed convolutions with per-channel weight scales on axis 1
#: (NVIDIA/TensorRT#2380, #1519; NVIDIA's quantization tools moved to axis 1 with 10.2).
PER_CHANNEL_DECONV = (10, 2)


def _check_transposed_scales(entry: Path, version: str) -> None:
    """Refuse, before a long build fails, a per-channel int8 ConvTranspose on TensorRT < 10.2."""
    from ebai.core.install_hints import install_line
    from ebai.tensorrt._plugin import _version_tuple
    from ebai.tensorrt._qdq import describe_qdq

    if _version_tuple(version)[:2] >= PER_CHANNEL_DECONV:
        return
    deconv = [w["node"] for w in describe_qdq(entry)["weights"] if w["op"] == "ConvTranspose" and w.get("per_channel")]
    if deconv:
        msg = (
            f"TensorRT {version} cannot build int8 transposed convolutions with per-channel weight scales "
            f"({len(deconv)} in this model, e.g. {deconv[0]}; supported from TensorRT 10.2): "
            f"{install_line('tensorrt')} (TensorRT >= 10.2), or use the fp16 target"
        )
        raise BackendUnavailableError(msg)


def _cuda_version(code: int) -> str:
    """CUDA's version code (12040) as text (12.4)."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def _check_calibration(calibration: Sequence[np.ndarray], sample_shape: tuple[int, ...]) -> None:
    if not calibration:
        msg = "int8 lowering needs calibration samples but none were given: give the recipe some of your images (16 or more tiles)"
        raise InputError(msg)
    for i, batch in enumerate(calibration):
        shape = tuple(np.shape(batch))
        if len(shape) != len(sample_shape) + 1 or shape[1:] != sample_shape:
            msg = f"calibration batch {i} has shape {shape} but the model takes (N, {', '.join(map(str, sample_shape))}): crop or tile the samples to the model's tile"
            raise InputError(msg)
