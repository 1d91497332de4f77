"""Per-layer precision of a built engine, read with TensorRT's engine inspector.

A strongly typed engine runs each layer in the type the ONNX gives it, but a layer TensorRT has no
int8 (or fp16) kernel for still runs, in a higher precision, without any error. The inspector's
JSON (``ProfilingVerbosity.DETAILED``, with an execution context so that dynamic shapes resolve)
names each fused layer with its input/output formats, e.g. ``"Row major linear FP32"`` or
``"Thirty-two wide channel vectorized row major Int8 format"`` in TensorRT 10's ``Format/Datatype``
field, or a ``DataType`` (``"Float"``/``"Half"``/``"Int8"``) beside the ``Format`` in TensorRT 11,
and its weights type. This module turns that into a :class:`LayerReport`, whose
``fallbacks`` list the compute layers (convolutions, transposed convolutions, matrix products)
that do not run at the target precision: a silent fp32 ConvTranspose3d becomes visible.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LayerInfo", "LayerReport", "dtype_from_format", "parse_engine_information", "tensor_dtype"]

#: (substring of a lower-cased format string, precision), most specific first.
_TOKENS = (
    ("uint8", "uint8"),
    ("int8", "int8"),
    ("int4", "int4"),
    ("fp8", "fp8"),
    ("e4m3", "fp8"),
    ("fp4", "fp4"),
    ("bfloat16", "bf16"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("half", "fp16"),
    ("fp32", "fp32"),
    ("float", "fp32"),
    ("int32", "int32"),
    ("int64", "int64"),
    ("bool", "bool"),
)
#: Bits per value, to rank precisions ("higher than the target" = a fallback).
_BITS = {"int4": 4, "fp4": 4, "int8": 8, "uint8": 8, "fp8": 8, "fp16": 16, "bf16": 16, "fp32": 32}
_COMPUTE_HINTS = ("convolution", "deconvolution", "matrixmultiply", "matmul", "gemm", "fullyconnected")


def dtype_from_format(text: str | None) -> str:
    """Precision named in an inspector format string (``"unknown"`` when none is named)."""
    low = (text or "").lower()
    for token, name in _TOKENS:
        if token in low:
            return name
    return "unknown"


def tensor_dtype(tensor: Mapping[str, Any]) -> str:
    """Precision of one layer input/output entry, in either inspector layout.

    TensorRT 10 writes one ``"Format/Datatype"`` string (``"Row major linear FP32"``); TensorRT 11
    splits it into ``"Format"`` (the memory layout, which may not name a type) and ``"DataType"``
    (``"Float"``, ``"Half"``, ``"Int8"``). The first field that names a known type wins.
    """
    for key in ("DataType", "Format/Datatype", "Format"):
        found = dtype_from_format(str(tensor[key])) if tensor.get(key) else "unknown"
        if found != "unknown":
            return found
    return "unknown"


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer (often several ONNX nodes fused) and the precision it runs in."""

    name: str
    layer_type: str
    precision: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    weights: str | None = None
    compute: bool = False
    tactic: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "type": self.layer_type,
            "precision": self.precision,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "weights": self.weights,
            "compute": self.compute,
            "tactic": self.tactic,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerInfo:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            name=data["name"],
            layer_type=data.get("type", ""),
            precision=data.get("precision", "unknown"),
            inputs=tuple(data.get("inputs", ())),
            outputs=tuple(data.get("outputs", ())),
            weights=data.get("weights"),
            compute=bool(data.get("compute", False)),
            tactic=data.get("tactic"),
        )


@dataclass(frozen=True)
class LayerReport:
    """Per-layer precision of an engine against the precision it was lowered for.

    Attributes
    ----------
    target
        The precision asked for (``int8``, ``fp16``, ``fp32``).
    layers
        Every layer the inspector listed.
    fallbacks
        Names of compute layers running in more bits than ``target`` (silent fallbacks).
    detailed
        False when the inspector gave names only (engine built without detailed profiling).
    """

    target: str
    layers: tuple[LayerInfo, ...] = ()
    fallbacks: tuple[str, ...] = ()
    detailed: bool = True
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (kept in the engine cache header and shown by benchmarks)."""
        return {
            "target": self.target,
            "detailed": self.detailed,
            "counts": dict(self.counts),
            "fallbacks": list(self.fallbacks),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerReport:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            target=data["target"],
            layers=tuple(LayerInfo.from_dict(x) for x in data.get("layers", ())),
            fallbacks=tuple(data.get("fallbacks", ())),
            detailed=bool(data.get("detailed", True)),
            counts=dict(data.get("counts", {})),
        )

    def summary(self) -> str:
        """One line for ``ebai benchmark``: compute layers per precision, then the fallbacks."""
        if not self.detailed:
            return "layer precisions unknown (engine built without detailed profiling)"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no compute layers listed"
        text = f"compute layers by precision: {counts}"
        if self.fallbacks:
            shown = ", ".join(self.fallbacks[:5]) + (" ..." if len(self.fallbacks) > 5 else "")
            text += f"; {len(self.fallbacks)} not in {self.target}: {shown}"
        return text


def _layer_precision(layer: Mapping[str, Any], ins: list[str], outs: list[str]) -> str:
    weights = layer.get("Weights")
    if isinstance(weights, Mapping) and weights.get("Type"):
        return dtype_from_format(str(weights["Type"]))
    known = [d for d in ins if d != "unknown"] or [d for d in outs if d != "unknown"]
    return known[0] if known else "unknown"


def _is_compute(layer: Mapping[str, Any]) -> bool:
    kinds = " ".join(str(layer.get(k, "")) for k in ("LayerType", "ParameterType")).lower()
    return any(h in kinds for h in _COMPUTE_HINTS) or isinstance(layer.get("Weights"), Mapping)


def _is_fallback(precision: str, target: str) -> bool:
    if target not in _BITS or precision not in _BITS:
        return False
    return _BITS[precision] > _BITS[target]


def parse_engine_information(text: str, target: str) -> LayerReport:
    """Build a :class:`LayerReport` from ``IEngineInspector.get_engine_information(JSON)`` output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return LayerReport(target=target, detailed=False)
    raw = data.get("Layers", []) if isinstance(data, Mapping) else []
    layers = []
    detailed = False
    for item in raw:
        if isinstance(item, str):  # LAYER_NAMES_ONLY verbosity
            layers.append(LayerInfo(name=item, layer_type="", precision="unknown"))
            continue
        if not isinstance(item, Mapping):
            continue
        detailed = True
        ins = [tensor_dtype(t) for t in item.get("Inputs", []) if isinstance(t, Mapping)]
        outs = [tensor_dtype(t) for t in item.get("Outputs", []) if isinstance(t, Mapping)]
        weights = item.get("Weights")
        layers.append(
            LayerInfo(
                name=str(item.get("Name", "")),
                layer_type=str(item.get("LayerType", "")),
                precision=_layer_precision(item, ins, outs),
                inputs=tuple(ins),
                outputs=tuple(outs),
                weights=dtype_from_format(str(weights.get("Type"))) if isinstance(weights, Mapping) else None,
                compute=_is_compute(item),
                tactic=item.get("TacticName"),
            )
        )
    compute = [layer for layer in layers if layer.compute]
    counts = Counter(layer.precision for layer in compute)
    fallbacks = tuple(layer.name for layer in compute if _is_fallback(layer.precision, target))
    return LayerReport(target=target, layers=tuple(layers), fallbacks=fallbacks, detailed=detailed, counts=dict(counts))
