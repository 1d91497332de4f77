"""Per-layer profiles of a compiled network: where its time goes, by layer type and executed precision.

A backend that can count time per layer (OpenVINO's ``PERF_COUNT``) returns a :class:`LayerProfile`
from :meth:`~ebai.core.interfaces.Engine.profile`; ``ebai benchmark --profile`` prints the profiles of
an artifact's targets beside the uncompressed model's with :func:`profile_table`. The stored
precision of a model says little about what runs: an int8 model runs its quantized layers in int8
and the rest at the backend's default (bf16 on CPUs with AVX-512 BF16/AMX), and the layout
conversions (``Reorder``) between them cost time too. Grouping by layer type *and* the precision a
kernel actually ran in shows that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ebai.core.interfaces import Engine

__all__ = ["LayerProfile", "LayerTime", "profile_table", "profiles_in_turns"]


@dataclass(frozen=True)
class LayerTime:
    """Time of one group of layers: one layer type run in one precision.

    Attributes
    ----------
    layer_type
        The backend's operation type (``Convolution``, ``MVN``, ``Reorder``...).
    precision
        What the kernels computed in (``i8``, ``bf16``, ``f32``...), as the backend reports it.
    seconds
        Real time summed over the group's layers, seconds per call.
    layers
        How many layers of the group ran.
    kernels
        The kernels that ran them (``jit_avx512_amx_I8``), most time first.
    """

    layer_type: str
    precision: str
    seconds: float
    layers: int
    kernels: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayerProfile:
    """Where one engine's time per call goes, grouped by layer type and executed precision.

    Attributes
    ----------
    groups
        One :class:`LayerTime` per (layer type, precision), most time first.
    calls
        Calls the times are averaged over.
    layers
        Per-layer times ``{layer name: (layer type, precision, seconds)}`` (for finer analysis
        and for choosing which layers to keep in another precision).
    """

    groups: tuple[LayerTime, ...]
    calls: int
    layers: Mapping[str, tuple[str, str, float]] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        """Summed real time of every layer, seconds per call (below wall time: gaps are not counted)."""
        return sum(g.seconds for g in self.groups)

    def seconds(self, layer_type: str | None = None, precision: str | None = None) -> float:
        """Return the summed time of the groups matching ``layer_type`` and/or ``precision`` (``None``: any)."""
        return sum(
            g.seconds
            for g in self.groups
            if (layer_type is None or g.layer_type == layer_type) and (precision is None or g.precision == precision)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (groups only, milliseconds per call), as ``ebai benchmark --json`` prints it."""
        return {
            "calls": self.calls,
            "total_ms": self.total_s * 1e3,
            "groups": [
                {
                    "layer_type": g.layer_type,
                    "precision": g.precision,
                    "ms": g.seconds * 1e3,
                    "layers": g.layers,
                    "kernels": list(g.kernels),
                }
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerProfile:
        """Rebuild a profile from :meth:`as_dict` (per-layer times are not kept there)."""
        groups = tuple(
            LayerTime(g["layer_type"], g["precision"], float(g["ms"]) / 1e3, int(g["layers"]), tuple(g["kernels"]))
            for g in data["groups"]
        )
        return cls(groups=groups, calls=int(data["calls"]))

    @classmethod
    def from_layers(cls, layers: Iterable[tuple[str, str, str, str, float]], calls: int) -> LayerProfile:
        """Group per-layer records ``(name, type, precision, kernel, seconds summed over calls)``.

        Layers the backend did not run (fused into a neighbour, optimised out) should be left out
        by the caller; layers of zero time are kept, they still count in ``layers``.
        """
        calls = max(1, int(calls))
        per_group: dict[tuple[str, str], list[float]] = {}
        kernels: dict[tuple[str, str], dict[str, float]] = {}
        per_layer: dict[str, tuple[str, str, float]] = {}
        for name, layer_type, precision, kernel, seconds in layers:
            key = (layer_type, precision)
            per_group.setdefault(key, []).append(seconds / calls)
            by_kernel = kernels.setdefault(key, {})
            by_kernel[kernel] = by_kernel.get(kernel, 0.0) + seconds / calls
            per_layer[name] = (layer_type, precision, seconds / calls)
        groups = [
            LayerTime(
                layer_type=t,
                precision=p,
                seconds=sum(times),
                layers=len(times),
                kernels=tuple(k for k, _ in sorted(kernels[(t, p)].items(), key=lambda kv: -kv[1])),
            )
            for (t, p), times in per_group.items()
        ]
        groups.sort(key=lambda g: (-g.seconds, g.layer_type, g.precision))
        return cls(groups=tuple(groups), calls=calls, layers=per_layer)


def profiles_in_turns(
    engines: Mapping[str, Engine], batch: np.ndarray, *, calls: int, rounds: int
) -> dict[str, list[LayerProfile]]:
    """Profile every engine in turn, ``rounds`` times; each engine's profiles in round order.

    Why in turns: a shared machine's speed drifts, and the one this project is measured on switches
    between a fast and a 2-2.4x slower state for seconds at a time. Profiled one after the other,
    two models would be compared at different moments; in turns, round ``i`` of each was taken
    moments apart, so comparisons are made round by round (the median of per-round ratios). The
    closer the turns, the better: with an engine that keeps its profiling copy compiled (OpenVINO),
    ``calls=1`` and more rounds takes each pair one call apart.
    """
    from ebai.core.errors import InputError

    runs: dict[str, list[LayerProfile]] = {name: [] for name in engines}
    for _ in range(max(1, int(rounds))):
        for name, engine in engines.items():
            profile = engine.profile(batch, calls)
            if profile is None:
                msg = f"{name!r} counts no per-layer time (its backend has no profiler): profile another engine"
                raise InputError(msg)
            runs[name].append(profile)
    return runs


def profile_table(profiles: Mapping[str, LayerProfile | None], *, min_share: float = 0.005) -> str:
    """Plain-text table of several profiles side by side: one line per (layer type, precision).

    Each engine gets a column ``ms (share%)``; ``-`` where that engine ran no such layer. Groups
    under ``min_share`` of every engine's total are summed into one ``other`` line. Engines whose
    backend gives no profile (``None``) are said to have none under the table.
    """
    present = {name: p for name, p in profiles.items() if p is not None}
    lines: list[Sequence[str]] = []
    if present:
        keys: dict[tuple[str, str], float] = {}
        kernels: dict[tuple[str, str], list[str]] = {}
        for p in present.values():
            for g in p.groups:
                keys[(g.layer_type, g.precision)] = max(keys.get((g.layer_type, g.precision), 0.0), g.seconds)
                known = kernels.setdefault((g.layer_type, g.precision), [])
                known.extend(k for k in g.kernels if k not in known)
        shown = [k for k in keys if any(p.seconds(*k) >= min_share * p.total_s for p in present.values())]
        shown.sort(key=lambda k: -keys[k])
        rest = [k for k in keys if k not in shown]

        def cell(p: LayerProfile, seconds: float, ran: bool) -> str:
            if not ran:
                return "-"
            share = 100 * seconds / p.total_s if p.total_s > 0 else 0.0
            return f"{seconds * 1e3:.2f} ({share:.0f}%)"

        for key in shown:
            row = [key[0], key[1], ",".join(kernels[key][:2])]
            for p in present.values():
                ran = any((g.layer_type, g.precision) == key for g in p.groups)
                row.append(cell(p, p.seconds(*key), ran))
            lines.append(row)
        if rest:
            row = ["other", "", f"{len(rest)} groups"]
            for p in present.values():
                seconds = sum(p.seconds(*k) for k in rest)
                row.append(cell(p, seconds, True))
            lines.append(row)
        lines.append(["total", "", ""] + [f"{p.total_s * 1e3:.2f}" for p in present.values()])
        head = ["layer type", "precision", "kernel", *(f"{name} ms (%)" for name in present)]
        widths = [max(len(head[i]), *(len(line[i]) for line in lines)) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line).rstrip() for line in lines]
    else:
        out = []
    out += [f"{name}: its backend gives no per-layer profile" for name, p in profiles.items() if p is None]
    return "\n".join(out)
