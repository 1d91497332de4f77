"""Int8 by NNCF post-training quantization applied to the OpenVINO model.

Why not a QDQ ONNX run through OpenVINO: on a 3D U-Net of ours a QDQ file kept Pearson 0.998 in ONNX
Runtime but fell to 0.60 in OpenVINO, while NNCF on the OpenVINO model kept 0.999 (see the package
README and ``tests/test_qdq_regression.py``). NNCF inserts FakeQuantize operations the CPU plugin
turns into int8 kernels; the rest of the graph runs at the engine's inference precision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ebai.core.errors import InputError
from ebai.core.interfaces import Metric
from ebai.openvino._deps import require_nncf

__all__ = [
    "LAYER_PRECISIONS",
    "OVERFLOW_FIXES",
    "PRESETS",
    "QuantizeOptions",
    "count_fake_quantize",
    "quantize",
    "quantize_with_accuracy_control",
    "split_samples",
]

#: NNCF presets offered as int8 variants: MIXED (asymmetric activations) first, it kept Pearson 0.986
#: where PERFORMANCE (symmetric) gave 0.96 on random-weight 3D nets at the same speed.
PRESETS = ("mixed", "performance")
#: NNCF's overflow (saturation) fix: ``first_layer_only`` is what NNCF advises for CPUs with AVX2 or
#: AVX-512 without VNNI; VNNI/AMX CPUs do not saturate. An artifact may run on any CPU, so it is the default.
OVERFLOW_FIXES = ("first_layer_only", "enable", "disable")
#: How layers get their precision: ``measured`` (each quantizable layer stays int8 only where it ran
#: faster than at the default precision on this machine, see :mod:`ebai.openvino._precision_choice`)
#: ``int8`` (every layer NNCF can quantize, as ebai did before), or ``default`` (no layer quantized:
#: what a measured choice records where int8 did not pay, so its options reproduce the float model).
LAYER_PRECISIONS = ("measured", "int8", "default")
_KNOWN = ("preset", "subset_size", "overflow_fix", "fast_bias_correction", "layer_precision", "keep_default")


class QuantizeOptions:
    """Validated int8 options taken from a variant/recipe mapping.

    Keys: ``preset`` (``"mixed"`` or ``"performance"``, default mixed), ``subset_size`` (calibration
    samples NNCF uses; default every sample given), ``overflow_fix`` (see :data:`OVERFLOW_FIXES`),
    ``fast_bias_correction`` (default True), ``layer_precision`` (see :data:`LAYER_PRECISIONS`,
    default ``measured``), ``keep_default`` (names of layers NNCF must leave unquantized, so they
    run at the backend's default precision; a measured choice fills it).
    """

    def __init__(self, options: Mapping[str, Any] | None, n_samples: int) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - set(_KNOWN))
        if unknown:
            msg = f"unknown OpenVINO int8 option {unknown[0]!r}: use {', '.join(_KNOWN)} or deconv_to_conv"
            raise InputError(msg)
        self.preset = str(options.get("preset", PRESETS[0])).lower()
        if self.preset not in PRESETS:
            msg = f"unknown NNCF preset {self.preset!r}: use one of {', '.join(PRESETS)}"
            raise InputError(msg)
        self.overflow_fix = str(options.get("overflow_fix", OVERFLOW_FIXES[0])).lower()
        if self.overflow_fix not in OVERFLOW_FIXES:
            msg = f"unknown overflow_fix {self.overflow_fix!r}: use one of {', '.join(OVERFLOW_FIXES)}"
            raise InputError(msg)
        subset = options.get("subset_size")
        self.subset_size = n_samples if subset is None else min(int(subset), n_samples)
        if self.subset_size < 1:
            msg = f"int8 calibration needs at least one sample, got subset_size={subset!r} and {n_samples} samples"
            raise InputError(msg)
        self.fast_bias_correction = bool(options.get("fast_bias_correction", True))
        self.layer_precision = str(options.get("layer_precision", LAYER_PRECISIONS[0])).lower()
        if self.layer_precision not in LAYER_PRECISIONS:
            msg = f"unknown layer_precision {self.layer_precision!r}: use one of {', '.join(LAYER_PRECISIONS)}"
            raise InputError(msg)
        keep = options.get("keep_default") or ()
        if isinstance(keep, str) or not all(isinstance(k, str) for k in keep):
            msg = f"keep_default must be a list of layer names, got {keep!r}"
            raise InputError(msg)
        self.keep_default: tuple[str, ...] = tuple(keep)

    def as_dict(self) -> dict[str, Any]:
        """Return the options as recorded in the manifest."""
        return {
            "preset": self.preset,
            "subset_size": self.subset_size,
            "overflow_fix": self.overflow_fix,
            "fast_bias_correction": self.fast_bias_correction,
            "layer_precision": self.layer_precision,
            "keep_default": list(self.keep_default),
        }

    def nncf_kwargs(self, nncf: Any, keep_default: Sequence[str] | None = None) -> dict[str, Any]:
        """Keyword arguments shared by ``nncf.quantize`` and ``quantize_with_accuracy_control``.

        ``keep_default`` (default: the options' own) becomes NNCF's ignored scope; unknown names are
        not an error (``validate=False``), since a rewrite may have replaced a layer.
        """
        keep = list(self.keep_default if keep_default is None else keep_default)
        return {
            "preset": nncf.QuantizationPreset(self.preset),
            "target_device": nncf.TargetDevice.CPU,
            "subset_size": self.subset_size,
            "fast_bias_correction": self.fast_bias_correction,
            "ignored_scope": nncf.IgnoredScope(names=keep, validate=False) if keep else None,
        }

    def advanced(self) -> Any:
        """NNCF's ``AdvancedQuantizationParameters`` carrying the overflow fix."""
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        return AdvancedQuantizationParameters(overflow_fix=OverflowFix(self.overflow_fix))


def split_samples(batches: Sequence[np.ndarray], what: str = "calibration") -> list[np.ndarray]:
    """Split ``(N, C, *tile)`` batches into ``(1, C, *tile)`` float32 samples.

    NNCF's ``subset_size`` counts dataset items; one sample per item makes it count samples, whatever
    batch size the caller used.
    """
    out: list[np.ndarray] = []
    for i, batch in enumerate(batches):
        arr = np.asarray(batch, dtype=np.float32)
        if arr.ndim < 3:
            msg = f"{what} batch {i} has shape {arr.shape}: give batches laid out (N, C, *tile)"
            raise InputError(msg)
        out.extend(np.ascontiguousarray(arr[j : j + 1]) for j in range(arr.shape[0]))
    if not out:
        msg = f"int8 needs {what} samples but none were given: pass some of your images as {what} data"
        raise InputError(msg)
    return out


@contextlib.contextmanager
def _rich_muted() -> Iterator[None]:
    """Mute rich's global console, where NNCF draws its progress bars, and restore it after."""
    try:
        import rich
    except ImportError:  # NNCF without rich draws no bars
        yield
        return
    console = rich.get_console()
    was_quiet, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = was_quiet


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """Keep NNCF's INFO chatter out of the user's terminal unless ebai runs with --debug.

    NNCF's progress bars follow ebai's own: off with ``EBAI_PROGRESS=0`` or when stderr is not a
    terminal.
    """
    from ebai.core.progress import progress_enabled

    log = logging.getLogger("nncf")
    old = log.level
    if not logging.getLogger("ebai").isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)
    try:
        with contextlib.nullcontext() if progress_enabled() else _rich_muted():
            yield
    finally:
        log.setLevel(old)


def count_fake_quantize(model: Any) -> int:
    """Count the FakeQuantize operations in an OpenVINO model (0 for a float model)."""
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")


def quantize(
    model: Any, samples: Sequence[np.ndarray], opts: QuantizeOptions, keep_default: Sequence[str] | None = None
) -> Any:
    """Apply ``nncf.quantize`` to an ``openvino.Model``; returns the quantized model.

    ``keep_default`` names layers to leave unquantized (default: ``opts.keep_default``).
    """
    nncf = require_nncf()
    with _quiet_nncf():
        return nncf.quantize(
            model,
            nncf.Dataset(list(samples)),
            advanced_parameters=opts.advanced(),
            **opts.nncf_kwargs(nncf, keep_default),
        )


def quantize_with_accuracy_control(
    model: Any,
    samples: Sequence[np.ndarray],
    validation: Sequence[tuple[np.ndarray, np.ndarray]],
    metric: Metric,
    max_drop: float,
    opts: QuantizeOptions,
) -> Any:
    """Apply ``nncf.quantize_with_accuracy_control``: layers that cost the most are kept in float.

    ``validation`` pairs an input batch with the original model's output for it; NNCF scores the
    fp32 model and each candidate with ``metric`` averaged over the pairs and reverts quantizers
    until the mean drops by at most ``max_drop`` (absolute).
    """
    nncf = require_nncf()
    pairs = [(np.ascontiguousarray(x, dtype=np.float32), np.asarray(ref, dtype=np.float32)) for x, ref in validation]
    if not pairs:
        msg = "accuracy-controlled int8 needs validation samples but none were given: hold out some of your images"
        raise InputError(msg)

    def validation_fn(compiled: Any, items: Any) -> tuple[float, list[float]]:
        output = compiled.output(0)
        values = [float(metric(np.asarray(compiled(x)[output]), ref)) for x, ref in items]
        return float(np.mean(values)), values

    with _quiet_nncf():
        return nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(list(samples)),
            nncf.Dataset(pairs),
            validation_fn,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=opts.advanced(),
            **opts.nncf_kwargs(nncf),
        )
