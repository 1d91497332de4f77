"""How often each rule for keeping an int8 model is fooled by timing noise, and how often it keeps a real gain.

Why: the measured int8 lowering (``ebai.openvino._precision_choice``) keeps an int8 model only if it
ran at least ``PICK_MARGIN`` (1.05x) faster than the float model at OpenVINO's default precision.
On this project's machine, whose speed switches state for seconds at a time, each way of reading
one timing has failed once: two copies of one float graph measured 1.43x *paired* (the median over
rounds of each round's ratio), and the semantic task's all-int8 model, 1.3-1.5x faster paired in
every run, was once refused because the float model's single fastest call fell in a fast moment
the int8 model never saw. This script counts, over many independent timings, how often each rule
says "keep":

- on two copies of one float graph (any "keep" is a false positive);
- on the float graph against its all-int8 model (a "refuse" is a lost gain).

Rules, each on timings of ``--rounds`` interleaved rounds x ``--repeats`` calls, as the lowering
takes them:

- ``paired``: the paired speed-up clears the margin;
- ``paired+fastest``: and so does the ratio of the two models' fastest calls (the rule until now);
- ``paired+reversed``: and so does the paired speed-up of a second timing with the two models in
  the opposite order within each round (the rule now).

Networks: the reference tasks of ``ebai-tasks`` at their tiles (shipped weights), fp32 and every
layer int8 (``layer_precision="int8"``).

Run:  python benchmarks/int8_pick_noise.py [--nets semantic,labelfree] [--trials 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.hardware import cpu_info
from ebai.core.latency import measure_interleaved, paired_speedup
from ebai.openvino import OpenVINOBackend
from ebai.openvino._precision_choice import _REPEATS, _ROUNDS, PICK_MARGIN

RULES = ("paired", "paired+fastest", "paired+reversed")


def timing(first: Any, second: Any, x: np.ndarray, rounds: int, repeats: int) -> tuple[float, float]:
    """Paired speed-up and fastest-call ratio of ``second`` over ``first``, timed in that order."""
    stats = measure_interleaved(
        {"a": lambda: first(x), "b": lambda: second(x)}, rounds=rounds, repeats=repeats, warmup=1
    )
    return paired_speedup(stats["a"], stats["b"]), stats["a"].min_s / stats["b"].min_s


def verdicts(reference: Any, candidate: Any, x: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """One trial: the two timings and what each rule says."""
    paired, fastest = timing(reference, candidate, x, args.rounds, args.repeats)
    reversed_paired = 1.0 / timing(candidate, reference, x, args.rounds, args.repeats)[0]
    keep = {
        "paired": paired >= args.margin,
        "paired+fastest": paired >= args.margin and fastest >= args.margin,
        "paired+reversed": paired >= args.margin and reversed_paired >= args.margin,
    }
    return {"paired": paired, "fastest": fastest, "reversed": reversed_paired, "keep": keep}


def run_network(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from int8_speed import task_net  # this folder's script: the task's network, spec and tiles

    from ebai.compress import export_onnx

    net, spec, samples = task_net(name)
    tiles = samples(9, 100)
    calibration = [tiles[i : i + 1] for i in range(8)]
    x = tiles[8:9]
    onnx_path = export_onnx(net, tmp / name / "reference.onnx", calibration[0]).path
    backend = OpenVINOBackend()
    fp32 = backend.lower(onnx_path, tmp / name / "fp32", precision="fp32", input_spec=spec, calibration=[])
    int8 = backend.lower(
        onnx_path,
        tmp / name / "int8",
        precision="int8",
        input_spec=spec,
        calibration=calibration,
        options={"layer_precision": "int8"},
    )
    default = backend.load(tmp / name / "fp32", fp32)
    twin = backend.load(tmp / name / "fp32", fp32)
    quantized = backend.load(tmp / name / "int8", int8)
    try:
        out = {"net": name, "same graph": [], "int8": []}
        for _ in range(args.trials):  # the two kinds of trial alternate, so both see the machine alike
            out["same graph"].append(verdicts(default, twin, x, args))
            out["int8"].append(verdicts(default, quantized, x, args))
    finally:
        for engine in (default, twin, quantized):
            engine.close()
    return out


def summary_line(name: str, kind: str, trials: list[dict[str, Any]]) -> str:
    counts = {r: sum(t["keep"][r] for t in trials) for r in RULES}
    paired = np.median([t["paired"] for t in trials])
    spread = (min(t["paired"] for t in trials), max(t["paired"] for t in trials))
    rules = "  ".join(f"{f'{counts[r]}/{len(trials)}':>15}" for r in RULES)
    return f"{name:<12} {kind:<11} {rules}   paired median {paired:.2f}x (range {spread[0]:.2f}-{spread[1]:.2f}x)"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="semantic,labelfree,nuclei", help="comma-separated reference tasks")
    ap.add_argument("--trials", type=int, default=20, help="independent timings per network and kind")
    ap.add_argument("--rounds", type=int, default=_ROUNDS)
    ap.add_argument("--repeats", type=int, default=_REPEATS)
    ap.add_argument("--margin", type=float, default=PICK_MARGIN)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cpu = cpu_info()
    print(f"cpu: {cpu.model}, {cpu.cores} logical cores, {', '.join(cpu.features)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ebai-pick-noise-") as tmp:
        for name in [n.strip() for n in args.nets.split(",") if n.strip()]:
            results.append(run_network(name, args, Path(tmp)))
            print(f"{name}: {args.trials} trials of each kind done", flush=True)
    print(
        f"\nhow often each rule keeps the candidate (margin {args.margin}x; {args.rounds} rounds x {args.repeats} calls)"
    )
    print(f"{'network':<12} {'candidate':<11} " + "  ".join(f"{r:>15}" for r in RULES))
    for r in results:
        print(summary_line(r["net"], "same graph", r["same graph"]) + "   <- any keep is a false positive")
        print(summary_line(r["net"], "int8", r["int8"]) + "   <- a refusal loses the gain")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
