"""Writing the Table-1 evidence: a markdown table, PNG plots and a JSON record, in one folder.

The folder is written atomically (complete or absent). Plots need matplotlib
(``pip install 'ebai-tasks[report]'``); without it the report says so and holds the tables only.
matplotlib is driven through its object API with the Agg canvas, so making a report never
changes the plotting backend of the caller's session.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.files import atomic_dir
from ebai.core.install_hints import install_line
from ebai.core.plotting import figure
from ebai.tasks._table import BASELINES, Row, TaskTable

__all__ = ["energy_note", "format_table", "plot_slices", "plot_table", "report_markdown", "write_report"]

_REPORT_INSTALL = install_line("tasks-report")
#: Rows shown in the slice figure (the paper's Fig. 3: input, ground truth, fp32, int8), in order.
_SLICE_ROWS = (
    ("torch", "PyTorch fp32"),
    ("openvino-int8", "OpenVINO int8"),
    ("openvino-pruned-int8", "pruned + int8"),
)


def _ms(seconds: float) -> str:
    ms = seconds * 1000.0
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} M"


def _energy(row: Row) -> str:
    """Median joules per tile, half the spread of the windows, and the letter of rows it cannot tell apart."""
    if row.energy_j is None:
        return "-"
    text = f"{row.energy_j:.2f} J"
    if row.energy_low_j is not None and row.energy_high_j is not None:
        text += f" +-{(row.energy_high_j - row.energy_low_j) / 2:.2f}"
    return text + (f" ~{row.energy_same_as}" if row.energy_same_as else "")


def format_table(table: TaskTable) -> str:
    """Format the table as aligned markdown (readable in a terminal and in a ``.md`` file)."""
    energy_head = f"energy/tile ({table.energy_label})"
    head = [
        "model",
        "device",
        "precision",
        "params",
        "latency/tile",
        "volume",
        energy_head,
        f"{table.metric} vs GT",
        *[f"speed-up vs {name}" for name in BASELINES.values()],
        *[f"energy saving vs {name}" for name in BASELINES.values()],
    ]
    body = []
    for r in table.rows:
        body.append(
            [
                r.label,
                r.device,
                r.precision,
                _params(r.parameters),
                _ms(r.latency_s),
                f"{r.volume_s:.1f} s",
                _energy(r),
                f"{r.accuracy:.4f}",
                *[_ratio(table.speedup(r, b)) for b in BASELINES],
                *[_ratio(table.energy_saving(r, b)) for b in BASELINES],
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    numeric = set(range(3, len(head)))

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def _caption(table: TaskTable) -> str:
    shape = "x".join(map(str, table.volume))
    tile = "x".join(map(str, table.tile))
    m = table.machine
    feats = ", ".join(m.get("features", [])) or "no AVX-512/AMX"
    return (
        f"{table.title}: held-out synthetic volume {shape} (ground truth known), tile {tile}; "
        f"CPU {m.get('cpu')} ({m.get('cores')} logical cores; {feats})"
    )


def _rounds(pruning: dict[str, Any]) -> str:
    rounds = int(pruning.get("rounds") or 1)
    return f" over {rounds} pruning rounds" if rounds > 1 else ""


def _spared(pruning: dict[str, Any]) -> str:
    sparing = pruning.get("sparing")
    if not sparing:
        return ""
    names = ", ".join(sparing.get("spared") or []) or "none"
    if sparing.get("resolved") is False:
        names += " (the single-layer savings were within the timing noise)"
    return (
        f", layers kept whole (prune.spare {sparing.get('share')}): {names}, giving up {sparing.get('given_up_ms')} of "
        f"{sparing.get('saved_ms')} ms of single-layer savings measured on {sparing.get('backend')} {sparing.get('precision')}"
    )


def _wall(tuning: dict[str, Any]) -> str:
    seconds = tuning.get("seconds")
    return "?" if seconds is None else f"{float(seconds) / 60:.1f} min"


def _notes(table: TaskTable) -> list[str]:
    out = [
        f"- Latency: median of {table.settings.get('rounds')} interleaved rounds, one tile per call, after warm-up; "
        "speed-ups: per round, the ratio of the two rows' times, median over rounds (paired, so a change of the "
        "machine's speed between rounds favours neither row); "
        "volume: one tiled pass over the held-out volume (normalisation, tiling and post-processing included).",
        f"- Energy: {table.energy_label} ({table.energy_source}); {energy_note(table)}",
        "- Precision: what is stored and what the CPU computes in. OpenVINO's default on this CPU is shown as its own "
        "row because it is what a user gets without ebai; 'OV f32' forces INFERENCE_PRECISION_HINT=f32.",
        f"- Accuracy: {table.metric} of each model's result against the synthetic ground truth.",
    ]
    pruned = table.compression.get("pruned-int8", {})
    pruning = pruned.get("pruning") or {}
    tuning = pruned.get("fine_tuning") or {}
    if pruning:
        out.append(
            f"- Pruning: {pruning.get('method', '?').upper()} {pruning.get('ratio')} of channels, parameters "
            f"{pruning.get('params_before')} -> {pruning.get('params_after')}, MACs reduced {pruning.get('mac_reduction')}x{_spared(pruning)}; "
            f"distillation {tuning.get('steps')} steps{_rounds(pruning)} in {_wall(tuning)}, Pearson to the original on validation tiles "
            f"{tuning.get('pearson_before', float('nan')):.3f} -> {tuning.get('pearson_after', float('nan')):.3f}."
        )
    for name, rec in table.compression.items():
        for key, target in rec.get("targets", {}).items():
            fid = target.get("fidelity_vs_original") or {}
            if fid:
                out.append(
                    f"- Accuracy guard, {name} ({key}): {fid.get('metric')} {_guard_value(fid):.4f} against the original "
                    f"network on {fid.get('samples')} held-out tiles (threshold {fid.get('threshold')}): "
                    f"{'passed' if fid.get('passed') else 'FAILED'}."
                )
    return out


def energy_note(table: TaskTable) -> str:
    """How energy was measured and which rows it cannot tell apart, in one sentence."""
    if all(r.energy_j is None for r in table.rows):
        return "no energy column."
    rounds, seconds = table.settings.get("energy_rounds"), table.settings.get("energy_seconds")
    text = (
        f"median of {rounds} interleaved windows of at least {seconds} s per model, +- half the range of the windows."
    )
    groups: dict[str, list[str]] = {}
    for r in table.rows:
        if r.energy_same_as:
            groups.setdefault(r.energy_same_as, []).append(r.label)
    for letter, labels in groups.items():
        named = " and ".join(f"'{label}'" for label in labels)
        text += f" ~{letter}: {named} lie within each other's spread; their energies are not told apart."
    return text


def _guard_value(fid: dict[str, Any]) -> float:
    metric = fid.get("metric")
    if metric == "pearson":
        return float(fid.get("pearson", float("nan")))
    return float((fid.get("metrics") or {}).get(metric, float("nan")))


def report_markdown(
    tables: Sequence[TaskTable], *, title: str, command: str, images: dict[str, list[str]], note: str = ""
) -> str:
    """Write the report's ``README.md`` text: the tables, how they were measured, and the figures."""
    from ebai.core.artifact import package_versions

    versions = package_versions(
        "ebai-core",
        "ebai-compress",
        "ebai-openvino",
        "ebai-adapters",
        "ebai-tasks",
        "torch",
        "openvino",
        "nncf",
        "monai",
        "cellpose",
        "codecarbon",
    )
    lines = [f"# {title}", "", f"Made by `{command}`.", ""]
    if note:
        lines += [note, ""]
    for t in tables:
        lines += [f"## {t.title}", "", _caption(t), "", format_table(t), "", *_notes(t), ""]
        lines += [f"![{name}]({name})" for name in images.get(t.task, [])]
        lines += [""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def plot_table(table: TaskTable, path: Path) -> bool:
    """Bar charts of latency, energy and accuracy per row, with speed-ups; ``False`` without matplotlib."""
    fig = figure(13.0, 0.55 * len(table.rows) + 2.2)
    if fig is None:
        return False
    labels = [f"{r.label}\n{r.precision}" for r in table.rows][::-1]
    rows = table.rows[::-1]
    y = np.arange(len(rows))
    colors = ["#7f7f7f" if r.key in BASELINES else "#1f77b4" for r in rows]
    axes = fig.subplots(1, 3, sharey=True)
    lat = [r.latency_s * 1000 for r in rows]
    axes[0].barh(y, lat, color=colors)
    axes[0].set_xlabel("latency per tile (ms), median")
    for i, r in enumerate(rows):
        s = table.speedup(r, "torch")
        axes[0].text(lat[i], i, f" {_ratio(s)}", va="center", fontsize=8)
    axes[0].set_yticks(y, labels, fontsize=8)
    if all(r.energy_j is not None for r in rows):
        en = [float(r.energy_j or 0.0) for r in rows]
        axes[1].barh(y, en, color=colors)
        for i, r in enumerate(rows):
            axes[1].text(en[i], i, f" {_ratio(table.energy_saving(r, 'torch'))}", va="center", fontsize=8)
    axes[1].set_xlabel(f"energy per tile (J, {table.energy_label})")
    acc = [r.accuracy for r in rows]
    axes[2].barh(y, acc, color=colors)
    lo = min(acc)
    axes[2].set_xlim(
        max(0.0, lo - 0.1 * max(1e-3, max(acc) - lo) - 0.02), min(1.0, max(acc) + 0.01) if max(acc) <= 1 else None
    )
    for i, a in enumerate(acc):
        axes[2].text(a, i, f" {a:.4f}", va="center", fontsize=8)
    axes[2].set_xlabel(f"{table.metric} vs ground truth")
    for ax in axes:
        ax.margins(x=0.25)
    fig.suptitle(f"{table.title}: speed-up and energy saving vs PyTorch eager (grey: baselines)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _label_rgb(labels: np.ndarray) -> np.ndarray:
    """Colour a label image: background black, each label a colour from a fixed palette."""
    from matplotlib import colormaps

    palette = colormaps["tab20"](np.arange(20))[:, :3]
    lab = np.asarray(labels).astype(np.int64)
    rgb = palette[(lab - 1) % 20]
    rgb[lab == 0] = 0.0
    return rgb


def plot_slices(table: TaskTable, path: Path) -> bool:
    """Central slices of input, ground truth and results (the paper's Fig. 3); ``False`` without matplotlib."""
    panels = [("input", "input"), ("ground truth", "ground truth")]
    panels += [(key, name) for key, name in _SLICE_ROWS if key in table.slices]
    fig = figure(3.2 * len(panels), 3.6)
    if fig is None:
        return False
    axes = fig.subplots(1, len(panels))
    labels = table.metric in ("ap50", "dice")
    scores = {r.key: r.accuracy for r in table.rows}
    for ax, (key, name) in zip(np.atleast_1d(axes), panels, strict=True):
        img = np.asarray(table.slices[key])
        if labels and key != "input":
            ax.imshow(_label_rgb(img), interpolation="nearest")
        else:
            lo, hi = np.percentile(img, [0.5, 99.8])
            ax.imshow(img, cmap="gray" if key == "input" else "magma", vmin=lo, vmax=hi if hi > lo else lo + 1)
        title = name if key not in scores else f"{name}\n{table.metric} {scores[key]:.4f}"
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    where = "central Z slice" if len(table.volume) == 3 else "image"
    fig.suptitle(f"{table.title}, {where} of the held-out volume", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # keep the panel titles clear of the figure title
    fig.savefig(path)
    return True


def write_report(
    out: Path | str,
    tables: Sequence[TaskTable],
    *,
    title: str,
    command: str,
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``README.md``, ``results.json`` and the PNGs of ``tables`` into the folder ``out``, atomically.

    Returns
    -------
    tuple
        The folder, and the names of the PNG files written (empty without matplotlib).
    """
    out = Path(out)
    images: dict[str, list[str]] = {}
    written: list[str] = []
    with atomic_dir(out, overwrite) as tmp:
        for t in tables:
            names = []
            for suffix, plot in (("table", plot_table), ("slices", plot_slices)):
                name = f"{t.task}-{suffix}.png"
                if plot(t, tmp / name):
                    names.append(name)
            images[t.task] = names
            written += names
        note = "" if written else f"The PNG plots were not made because matplotlib is missing: {_REPORT_INSTALL}"
        (tmp / "README.md").write_text(
            report_markdown(tables, title=title, command=command, images=images, note=note), encoding="utf-8"
        )
        data = {"title": title, "command": command, "tables": [t.to_dict() for t in tables]}
        (tmp / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return out, written
