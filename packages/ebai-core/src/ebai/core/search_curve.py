"""The trade-off curve ``ebai compress --prune auto`` records: read from a manifest, printed, plotted.

The search (``ebai.compress``) stores every probe it made (criterion, ratio, fidelity to the
original after distillation, MAC reduction, pass or fail) in the artifact's pruning record, so a
user can see what a stricter or looser target would have given without searching again. This
module only reads that record: ``ebai info ARTIFACT`` prints it as a table and ``--plot`` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ebai.core.errors import ArtifactError, MissingDependencyError
from ebai.core.files import atomic_file
from ebai.core.install_hints import install_line
from ebai.core.plotting import figure

__all__ = ["curve_lines", "metric_name", "plot_curve", "search_record"]

#: Probe fields that are not the fidelity metric (the metric's own name is the remaining key).
_PROBE_FIELDS = frozenset(
    {"method", "ratio", "passed", "degenerate", "mac_reduction", "params_after", "steps", "seconds"}
)


def search_record(pruning: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Return the ``--prune auto`` search in an artifact's pruning record, or ``None`` when it was not searched."""
    search = (pruning or {}).get("search")
    return search if isinstance(search, Mapping) and search.get("probes") else None


def metric_name(search: Mapping[str, Any]) -> str:
    """Return the name of the fidelity metric the probes were scored with (recorded, or the one unknown probe field)."""
    if search.get("metric"):
        return str(search["metric"])
    for probe in search["probes"]:
        extra = [k for k in probe if k not in _PROBE_FIELDS]
        if extra:
            return str(extra[0])
    msg = "the artifact's search record names no fidelity metric: recreate it with ebai compress --prune auto"
    raise ArtifactError(msg)


def _chosen(search: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
    chosen = search.get("chosen") or {}
    return probe.get("method") == chosen.get("method") and probe.get("ratio") == chosen.get("ratio")


def _ordered(search: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return sorted(search["probes"], key=lambda p: (str(p["method"]), float(p["ratio"])))


def curve_lines(search: Mapping[str, Any]) -> list[str]:
    """Return the probes as an aligned table, one per line, by criterion and ratio; the chosen one marked."""
    metric = metric_name(search)
    lines = [
        f"--prune auto: {metric} >= {float(search['target']):g} against the original; "
        f"{len(search['probes'])} probes in {float(search.get('seconds', 0)):.0f} s"
        + (" (time budget spent)" if search.get("budget_spent") else ""),
        f"  {'criterion':<9} {'ratio':>5} {metric:>9} {'MACs':>7} {'steps':>6}  verdict",
    ]
    for p in _ordered(search):
        if p.get("degenerate"):
            verdict = "fail (cuts no more MACs than a smaller ratio)"
        else:
            verdict = "pass" if p.get("passed") else "fail"
        if _chosen(search, p):
            verdict += "  <- chosen"
        lines.append(
            f"  {p['method']:<9} {float(p['ratio']):>5.2f} {float(p[metric]):>9.4f} "
            f"{float(p['mac_reduction']):>6.2f}x {int(p.get('steps', 0)):>6}  {verdict}"
        )
    return lines


def plot_curve(search: Mapping[str, Any], path: Path | str, *, overwrite: bool = False, title: str = "") -> Path:
    """Draw fidelity against ratio and against MAC reduction, per criterion, with the target; PNG at ``path``.

    Passing probes are filled, failing ones hollow, the chosen one ringed. The file appears whole
    or not at all.

    Raises
    ------
    MissingDependencyError
        Without matplotlib (the message names what to install).
    OutputExistsError
        When ``path`` exists and not ``overwrite``.
    """
    fig = figure(10.0, 4.0)
    if fig is None:
        msg = f"plotting the trade-off curve needs matplotlib: {install_line('core-plot')}"
        raise MissingDependencyError(msg)
    metric = metric_name(search)
    target = float(search["target"])
    axes = fig.subplots(1, 2, sharey=True)
    methods: list[str] = sorted({str(p["method"]) for p in search["probes"]})
    for ax, x_key, x_label in zip(
        axes, ("ratio", "mac_reduction"), ("fraction of channels removed", "MAC reduction (x)"), strict=True
    ):
        for i, method in enumerate(methods):
            color = f"C{i}"
            probes: Sequence[Mapping[str, Any]] = [p for p in _ordered(search) if p["method"] == method]
            if x_key == "mac_reduction":
                probes = sorted(probes, key=lambda p: float(p["mac_reduction"]))
            xs = [float(p[x_key]) for p in probes]
            ys = [float(p[metric]) for p in probes]
            ax.plot(xs, ys, color=color, linewidth=1, label=method.upper())
            for p, x, y in zip(probes, xs, ys, strict=True):
                ax.scatter([x], [y], s=36, color=color, facecolors=color if p.get("passed") else "none", zorder=3)
                if _chosen(search, p):
                    ax.scatter([x], [y], s=160, facecolors="none", edgecolors="black", linewidths=1.5, zorder=4)
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{metric} to the original (validation)")
    axes[0].legend(fontsize=8, loc="lower left")
    chosen = search.get("chosen") or {}
    fig.suptitle(
        (title + ": " if title else "")
        + f"--prune auto kept {chosen.get('method', '?')} at ratio {chosen.get('ratio', '?')} "
        + "(filled: passed, hollow: failed, ringed: chosen)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
    return path
