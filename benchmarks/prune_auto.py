"""``--prune auto`` against the fixed 50% row on a reference task: ratio found, fidelity, speed.

Compresses the task's shipped network twice with the same distillation budget and OpenVINO int8:
once pruned L1 at 0.5 (the Table 1 row), once with ``prune.method: auto`` and a stated fidelity
(Pearson to the original). Prints the search (every probe), both artifacts' fidelity and their
int8 latency per tile measured in the same interleaved rounds.

    python benchmarks/prune_auto.py                              # denoising, min fidelity 0.98
    python benchmarks/prune_auto.py --task semantic --min-fidelity 0.95 --steps 150 --budget-minutes 30

On a shared machine set one torch thread (OMP_NUM_THREADS=1) and run it under ``nice``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="denoising")
    parser.add_argument("--min-fidelity", type=float, default=0.98)
    parser.add_argument("--steps", type=int, default=150, help="distillation steps per probe and for the 0.5 row")
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--low", type=float, default=0.3)
    parser.add_argument("--high", type=float, default=0.9)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--plot", type=Path, help="draw the search's trade-off curve into this PNG (needs matplotlib)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from ebai.compress import compress
    from ebai.compress._samples import fit_tile
    from ebai.core.data import ArraySource
    from ebai.core.latency import measure_interleaved
    from ebai.tasks._adapter import TaskAdapter
    from ebai.tasks._registry import get_task
    from ebai.tasks._settings import BenchSettings
    from ebai.tasks._task import CALIBRATION_SEED
    from ebai.tasks._variants import recipe

    torch.set_num_threads(1)
    task = get_task(args.task)
    adapter = TaskAdapter(task.name)
    images, _ = task.make_samples(args.images, CALIBRATION_SEED, task.shape)
    data = ArraySource(list(images))
    settings = BenchSettings(distill_steps=args.steps, prune_method="l1", prune_ratio=0.5)
    fixed = recipe(task, settings, pruned=True, targets={"openvino": "int8"})
    fixed = fixed.updated({"fidelity": {"metric": "pearson", "threshold": args.min_fidelity}})
    auto = fixed.updated(
        {
            "prune": {"method": "auto"},
            "search": {"low": args.low, "high": args.high, "budget_minutes": args.budget_minutes},
        }
    )
    out: dict[str, object] = {"task": task.name, "min_fidelity": args.min_fidelity, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="ebai-prune-auto-") as tmp:
        arts = {}
        for name, plan in (("fixed-0.5", fixed), ("auto", auto)):
            started = time.perf_counter()
            try:
                arts[name] = compress(adapter, data, plan, Path(tmp) / f"{name}.ebai")
            except Exception as exc:  # a refused row is a result too
                print(f"{name}: {exc}")
                out[name] = {"error": str(exc), "seconds": round(time.perf_counter() - started, 1)}
                continue
            m = arts[name].manifest
            target = m.targets[0]
            out[name] = {
                "ratio": m.pruning["ratio"],
                "mac_reduction": m.pruning["mac_reduction"],
                "pearson_vs_original": target.fidelity.pearson,
                "route": target.record.get("route"),
                "seconds": round(time.perf_counter() - started, 1),
                "search": m.pruning.get("search"),
            }
            print(
                f"{name}: ratio {m.pruning['ratio']:g}, MACs {m.pruning['mac_reduction']:.2f}x fewer, "
                f"int8 Pearson to the original {target.fidelity.pearson:.4f}, {out[name]['seconds']:.0f} s"
            )
        if "auto" in arts:
            for p in arts["auto"].manifest.pruning["search"]["probes"]:
                print(
                    f"  probe {p['method']} {p['ratio']:.2f}: pearson {p['pearson']:.4f} "
                    f"{'pass' if p['passed'] else 'fail'}, MACs {p['mac_reduction']:.2f}x, {p['seconds']:.0f} s"
                )
        if len(arts) == 2:
            tile = fit_tile(adapter.preprocess(np.asarray(images[0], np.float32)), task.tile, center=True)
            batch = np.ascontiguousarray(tile[np.newaxis], dtype=np.float32)
            engines = {k: a.load_engine("openvino", "int8") for k, a in arts.items()}
            try:
                stats = measure_interleaved(
                    {k: (lambda e=e: e.infer(batch)) for k, e in engines.items()}, rounds=args.rounds, warmup=2
                )
            finally:
                for e in engines.values():
                    e.close()
            fixed_s, auto_s = stats["fixed-0.5"].median_s, stats["auto"].median_s
            out["latency_s"] = {"fixed-0.5": fixed_s, "auto": auto_s, "auto_speedup_vs_fixed": fixed_s / auto_s}
            print(
                f"int8 latency per tile: fixed 0.5 {fixed_s * 1e3:.1f} ms, auto {auto_s * 1e3:.1f} ms "
                f"({fixed_s / auto_s:.2f}x), medians of {args.rounds} interleaved rounds"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    search = (out.get("auto") or {}).get("search") if isinstance(out.get("auto"), dict) else None
    if args.plot and search:
        _plot(search, args.min_fidelity, args.plot)


def _plot(search: dict, target: float, path: Path) -> None:
    """Fidelity and MAC reduction of every probe against its ratio, the target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method in sorted({p["method"] for p in search["probes"]}):
        probes = sorted((p for p in search["probes"] if p["method"] == method), key=lambda p: p["ratio"])
        ax.plot([p["ratio"] for p in probes], [p["pearson"] for p in probes], marker="o", label=method.upper())
        for p in probes:
            ax.annotate(
                f"{p['mac_reduction']:.1f}x",
                (p["ratio"], p["pearson"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(target, color="grey", linestyle="--", label=f"target {target:g}")
    ax.set_xlabel("pruning ratio (labels: MACs cut)")
    ax.set_ylabel("Pearson to the original (validation)")
    ax.set_title(f"--prune auto: kept {search['chosen']['method']} {search['chosen']['ratio']:g}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
