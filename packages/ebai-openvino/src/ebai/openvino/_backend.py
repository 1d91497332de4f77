"""The OpenVINO backend: ONNX -> OpenVINO IR (fp32, fp16 weights, int8 by NNCF) and its engine.

Only ONNX and numpy arrays come in; nothing here imports torch, so an artifact made elsewhere runs
on a machine that has ``ebai-core`` and ``ebai-openvino`` only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.artifact import package_versions
from ebai.core.errors import InputError
from ebai.core.install_hints import install_line
from ebai.core.interfaces import Backend, ComparisonVariant, Engine, Lowering, Metric
from ebai.core.specs import InputSpec
from ebai.openvino._conversion import IR_XML, convert_onnx, save_ir
from ebai.openvino._deconvolution import rewrite_transposed_convolutions
from ebai.openvino._deps import require_openvino
from ebai.openvino._engine import OpenVINOEngine

__all__ = ["LOAD_OPTIONS", "OpenVINOBackend"]

#: Keyword options :meth:`OpenVINOBackend.load` accepts (see :class:`OpenVINOEngine`).
LOAD_OPTIONS = ("performance_hint", "num_threads", "inference_precision", "num_requests", "device")


def _rewrite_mode(value: Any) -> bool | str | tuple[str, ...]:
    """``deconv_to_conv``: ``True`` (every transposed convolution), ``False``, ``"auto"``, or a list of layer names."""
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    if isinstance(value, (bool, int)):
        return bool(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    msg = f"deconv_to_conv must be true, false, auto or a list of layer names, got {value!r}"
    raise InputError(msg)


def _rewrite(model: Any, mode: bool | str | tuple[str, ...]) -> int:
    if isinstance(mode, tuple):
        return rewrite_transposed_convolutions(model, names=mode) if mode else 0
    if not mode:
        return 0
    return rewrite_transposed_convolutions(model, signed_only=mode == "auto")


def _recorded(mode: bool | str | tuple[str, ...]) -> bool | str | list[str]:
    return list(mode) if isinstance(mode, tuple) else mode


def _measured_int8(model: Any, samples: list[np.ndarray], opts: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Int8 where it pays on this CPU (:mod:`ebai.openvino._precision_choice`); the model, options and record."""
    from ebai.openvino import _quantization as q
    from ebai.openvino._precision_choice import choose

    quantized, choice = choose(
        model,
        lambda m, keep: q.quantize(m, samples, opts, keep),
        lambda m, names: rewrite_transposed_convolutions(m, names=names),
        samples[0],
    )
    used = {"deconv_to_conv": list(choice.rewritten), **opts.as_dict(), "keep_default": list(choice.keep_default)}
    if choice.chosen == "default":  # int8 did not pay: the recorded options must give the float model again
        used["layer_precision"] = "default"
    facts = {"deconvolutions_rewritten": len(choice.rewritten), "precision_choice": choice.record()}
    return quantized, used, facts


class OpenVINOBackend(Backend):
    """Lowers fp32 ONNX to OpenVINO IR and runs it on the CPU.

    Precisions: ``fp32`` (IR as converted), ``fp16`` (IR weights stored in fp16, half the size;
    arithmetic is still chosen at run time), ``int8`` (NNCF post-training quantization of the
    OpenVINO model, calibrated on the user's images). Files written: ``model.xml`` + ``model.bin``.
    """

    name = "openvino"
    precisions = ("fp32", "fp16", "int8")

    def available(self) -> str | None:
        """``None`` when OpenVINO imports and sees a CPU, else why not."""
        try:
            ov = require_openvino()
            devices = ov.Core().available_devices
        except Exception as exc:
            return f"OpenVINO cannot start ({exc}): {install_line('openvino')}"
        return None if "CPU" in devices else f"OpenVINO sees no CPU device (devices: {devices})"

    def variants(self, precision: str) -> list[dict[str, Any]]:
        """Int8 option sets for the guard to compare: NNCF's MIXED then PERFORMANCE preset.

        MIXED quantizes activations asymmetrically; on random-weight 3D nets it kept Pearson 0.986
        where PERFORMANCE gave 0.96 at the same speed, so both are worth measuring.
        """
        if precision == "int8":
            return [{"preset": "mixed"}, {"preset": "performance"}]
        return [{}]

    def comparison_variants(self) -> list[ComparisonVariant]:
        """Return the fp32 model forced to f32, and at OpenVINO's default precision (bf16 on CPUs with it).

        The default is what a user gets from OpenVINO without ebai, so a compression that is no
        faster than it buys nothing; the forced f32 row is the model exactly as trained.
        """
        return [
            ComparisonVariant("f32", "OpenVINO", {"inference_precision": "f32"}, "f32", "INFERENCE_PRECISION_HINT=f32"),
            ComparisonVariant(
                "default", "OpenVINO, default precision", {"inference_precision": None}, "", "OpenVINO default for fp32"
            ),
        ]

    def _check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            msg = f"OpenVINO cannot lower to precision {precision!r}: use one of {', '.join(self.precisions)}"
            raise InputError(msg)

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
        """Convert ``onnx_path`` with ``openvino.convert_model`` and write ``model.xml``/``.bin``.

        For ``int8`` the converted model is quantized by ``nncf.quantize`` on ``calibration``
        (batches ``(N, C, *tile)``, split into single samples); ``options`` may set ``preset``,
        ``subset_size``, ``overflow_fix`` and ``fast_bias_correction``. Every precision takes
        ``deconv_to_conv`` (default ``"auto"`` for int8, off otherwise): transposed convolutions are
        rewritten as a convolution plus a pixel shuffle, the same function, so that they run in int8
        (see :mod:`ebai.openvino._deconvolution`); ``"auto"`` rewrites only those whose input can be
        negative (the others already run in int8), ``True`` every one; fp32 and fp16 keep OpenVINO's
        own graph by default.
        """
        from ebai.openvino import _quantization as q

        self._check_precision(precision)
        started = time.perf_counter()
        options = dict(options or {})
        given = options.pop("deconv_to_conv", None)
        model = convert_onnx(Path(onnx_path), input_spec)
        record: dict[str, Any] = {"versions": package_versions("openvino", "nncf")}
        if precision == "int8":
            samples = q.split_samples(calibration)
            opts = q.QuantizeOptions(options, len(samples))
            measure = opts.layer_precision == "measured" and given is None and "keep_default" not in options
            if measure:
                model, used, facts = _measured_int8(model, samples, opts)
            else:
                keep_float = opts.layer_precision == "default"
                rewrite = _rewrite_mode(False if keep_float else "auto" if given is None else given)
                rewritten = _rewrite(model, rewrite)
                if not keep_float:
                    model = q.quantize(model, samples, opts)
                used = {"deconv_to_conv": _recorded(rewrite), **opts.as_dict()}
                facts = {"deconvolutions_rewritten": rewritten}
            record.update(
                used, **facts, calibration_samples=len(samples), fake_quantize_ops=q.count_fake_quantize(model)
            )
        elif options:
            msg = f"OpenVINO {precision} takes only the option deconv_to_conv, got {sorted(options)}: remove the others"
            raise InputError(msg)
        else:
            rewrite = _rewrite_mode(False if given is None else given)
            used = {"deconv_to_conv": _recorded(rewrite)}
            record["deconvolutions_rewritten"] = _rewrite(model, rewrite)
        files = save_ir(model, Path(out_dir), compress_to_fp16=precision == "fp16")
        record.update(
            weights="fp16" if precision == "fp16" else "fp32",
            input_shape=str(model.input(0).get_partial_shape()),
            seconds=round(time.perf_counter() - started, 2),
        )
        return Lowering(backend=self.name, precision=precision, files=files, entry=IR_XML, options=used, record=record)

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
        """Int8 with ``nncf.quantize_with_accuracy_control``: sensitive layers fall back to float.

        NNCF compares each candidate to the fp32 model with ``metric`` on ``validation`` (run at
        f32) and reverts quantizers, most harmful first, until the drop is at most ``max_drop``.
        Returns ``None`` for fp32/fp16, which have nothing to fall back from.
        """
        from ebai.openvino import _quantization as q

        self._check_precision(precision)
        if precision != "int8":
            return None
        started = time.perf_counter()
        options = dict(options or {})
        rewrite = _rewrite_mode(options.pop("deconv_to_conv", "auto"))
        model = convert_onnx(Path(onnx_path), input_spec)
        rewritten = _rewrite(model, rewrite)
        samples = q.split_samples(calibration)
        opts = q.QuantizeOptions(options, len(samples))
        model = q.quantize_with_accuracy_control(model, samples, validation, metric, max_drop, opts)
        files = save_ir(model, Path(out_dir), compress_to_fp16=False)
        used = {
            "deconv_to_conv": _recorded(rewrite),
            **opts.as_dict(),
            "accuracy_control": True,
            "max_drop": float(max_drop),
        }
        record = {
            "versions": package_versions("openvino", "nncf"),
            **used,
            "deconvolutions_rewritten": rewritten,
            "calibration_samples": len(samples),
            "validation_batches": len(validation),
            "fake_quantize_ops": q.count_fake_quantize(model),
            "weights": "fp32",
            "input_shape": str(model.input(0).get_partial_shape()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        return Lowering(backend=self.name, precision=precision, files=files, entry=IR_XML, options=used, record=record)

    def lower_prequantized(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        input_spec: InputSpec,
        options: Mapping[str, Any] | None = None,
    ) -> Lowering:
        """Int8 from a QDQ ONNX (quantization-aware training): converted as it is, NNCF is not run.

        ``openvino.convert_model`` turns each QuantizeLinear/DequantizeLinear pair into the
        FakeQuantize operation the CPU plugin runs in int8, the form NNCF's own quantization gives.
        Transposed convolutions are left as they are (no option is taken).
        """
        from ebai.openvino import _quantization as q

        if options:
            msg = f"OpenVINO takes no options for an already quantized ONNX, got {sorted(options)}: remove them"
            raise InputError(msg)
        started = time.perf_counter()
        model = convert_onnx(Path(onnx_path), input_spec)
        files = save_ir(model, Path(out_dir), compress_to_fp16=False)
        record = {
            "versions": package_versions("openvino"),
            "prequantized": True,
            "fake_quantize_ops": q.count_fake_quantize(model),
            "weights": "fp32",
            "input_shape": str(model.input(0).get_partial_shape()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        return Lowering(
            backend=self.name,
            precision="int8",
            files=files,
            entry=IR_XML,
            options={"prequantized": True},
            record=record,
        )

    def load(self, directory: Path, lowering: Lowering, **options: Any) -> Engine:
        """Compile ``lowering.entry`` under ``directory``; ``options`` as :class:`OpenVINOEngine` takes.

        A damaged or missing IR file raises a one-line :class:`~ebai.core.errors.ArtifactError`.
        """
        unknown = sorted(set(options) - set(LOAD_OPTIONS))
        if unknown:
            msg = f"unknown OpenVINO engine option {unknown[0]!r}: use {', '.join(LOAD_OPTIONS)}"
            raise InputError(msg)
        return OpenVINOEngine(Path(directory) / lowering.entry, precision=lowering.precision, **options)
