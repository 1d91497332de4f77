"""The per-layer costs ``ebai compress --prune-spare`` records: read from a manifest and printed.

Before pruning, ``ebai.compress`` cuts every layer alone, scores it against the original and
times it on the target, then keeps whole the layers whose cut costs most fidelity per millisecond
saved. Every layer's measurement is stored in the artifact's pruning record, so a user can see why
a layer was kept and what a larger or smaller share would have changed. ``ebai info ARTIFACT``
prints it with :func:`sparing_lines`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["sparing_lines", "sparing_record"]


def sparing_record(pruning: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Return the ``prune.spare`` record in an artifact's pruning record, or ``None`` when nothing was spared."""
    sparing = (pruning or {}).get("sparing")
    return sparing if isinstance(sparing, Mapping) and sparing.get("layers") else None


def sparing_lines(sparing: Mapping[str, Any]) -> list[str]:
    """Return every layer's measured cut as an aligned table in network order, the layers kept whole marked."""
    spared = set(sparing.get("spared") or [])
    layers = sparing["layers"]
    metric = str(sparing.get("metric") or "fidelity")
    width = max([len("layer"), *(len(str(layer["layer"])) for layer in layers)])
    lines = [
        f"--prune-spare {float(sparing.get('share', 0)):g}: {len(spared)} of {len(layers)} layers kept whole, "
        f"{float(sparing.get('given_up_ms', 0)):.2f} of {float(sparing.get('saved_ms', 0)):.2f} ms of single-layer "
        f"savings given up (timed on {sparing.get('backend')} {sparing.get('precision')}, unpruned "
        f"{float(sparing.get('whole_ms', 0)):.2f} ms; probes {float(sparing.get('seconds', 0)):.0f} s)",
        f"  {'layer':<{width}} {metric + ' cut alone':>20} {'saved ms':>9}",
    ]
    for layer in layers:
        mark = "  <- kept whole" if layer["layer"] in spared else ""
        lines.append(
            f"  {layer['layer']:<{width}} {float(layer['fidelity']):>20.4f} {float(layer['saved_ms']):>9.3f}{mark}"
        )
    return lines
