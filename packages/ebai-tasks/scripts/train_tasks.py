"""Train the reference tasks' networks and write the weights shipped in ebai-tasks.

Deterministic: the data come from each task's seeded generator, torch is seeded and runs
deterministic algorithms, and the thread count is fixed (``--threads``), so the same machine and
library versions reproduce the same files. Each task takes a few minutes on 2 CPU cores.

    python packages/ebai-tasks/scripts/train_tasks.py                       # all four, into the package
    python packages/ebai-tasks/scripts/train_tasks.py --tasks denoising --out /tmp/weights

After training, each network is scored on its held-out synthetic set (the figure the tests check
against the task's ``min_metric``) and the file size is checked against the 2 MB budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MAX_BYTES = 2_000_000


def main() -> None:
    """Train the tasks named on the command line and write their weights with metadata."""
    import torch

    from ebai.tasks import TASK_NAMES, get_task, save_weights, test_scores, train_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated task names")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the .safetensors files (default: the package's)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixed for reproducibility)")
    parser.add_argument("--steps", type=int, default=None, help="override every plan's step count (smoke runs)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out_dir = args.out or Path(__file__).resolve().parents[1] / "src/ebai/tasks/weights"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        task = get_task(name)
        started = time.perf_counter()
        model, losses = train_task(task, steps=args.steps)
        seconds = time.perf_counter() - started
        scores = test_scores(task, model)
        plan = task.plan if args.steps is None else {**task.plan.__dict__, "steps": args.steps}
        meta = {
            "task": task.name,
            "plan": plan if isinstance(plan, dict) else plan.__dict__,
            "final_loss": sum(losses[-20:]) / min(20, len(losses)),
            "train_seconds": round(seconds, 1),
            "threads": args.threads,
            "torch": torch.__version__,
            "test_metric": task.metric,
            "test_scores": [round(s, 4) for s in scores],
        }
        path = save_weights(model, out_dir / f"{task.name}.safetensors", meta)
        size = path.stat().st_size
        params = sum(p.numel() for p in model.parameters())
        mean = sum(scores) / len(scores)
        verdict = "ok" if mean >= task.min_metric else f"BELOW the stated minimum {task.min_metric}"
        print(
            f"{task.name}: {params / 1e6:.2f} M parameters, {size / 1e6:.2f} MB, trained {seconds:.0f} s, "
            f"held-out {task.metric} {mean:.4f} ({', '.join(f'{s:.4f}' for s in scores)}) {verdict}",
            flush=True,
        )
        if size >= MAX_BYTES:
            print(f"  warning: {path.name} is {size} bytes, over the {MAX_BYTES} byte budget")
        summary[task.name] = {**meta, "bytes": size, "parameters": params}
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
