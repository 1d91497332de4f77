"""OpenVINO speed on the seed's 3D U-Net tile: PyTorch eager vs OpenVINO f32, default (bf16), int8, pruned+int8.

The network is MONAI's ``UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(32, 64, 128,
256), strides=(2, 2, 2), num_res_units=2, norm="batch")`` with random weights whose BatchNorm
statistics are settled by a few forward passes in train mode on synthetic volumes (MONAI's default
norm is InstanceNorm, which has no statistics to settle; ``--norm instance`` measures that variant).
One tile is ``1x1x32x128x128``. Nothing is downloaded.

Rows, each naming the precision the CPU computes in:

- PyTorch eager, fp32 (the original network);
- OpenVINO f32: the fp32 IR with ``INFERENCE_PRECISION_HINT=f32``;
- OpenVINO default: the same IR at OpenVINO's default precision (bf16 on CPUs with AVX-512 BF16/AMX);
- OpenVINO int8: ``OpenVINOBackend.lower(precision="int8")`` (layer precision measured on this
  machine); both NNCF presets are lowered and the one with the better Pearson on a held-out
  validation tile is kept, with the accuracy-controlled fallback below 0.99 (as the accuracy guard
  would; ``int8_speed.guarded_int8``);
- OpenVINO int8 with the transposed convolutions left as they are (``deconv_to_conv=False``), to
  show what the rewrite in ``ebai.openvino._deconvolution`` buys;
- pruned 50% (``ebai.compress.prune``, L1) + distilled from the original (``ebai.compress.distill``,
  label-free) + OpenVINO int8.

Timing: rows are measured in interleaved rounds (each round runs every row ``--repeats`` times), so
a busy neighbour on a shared CPU slows every row alike; medians are over all rounds. Besides wall
time the table gives the process CPU seconds per call, which contention disturbs less. Pearson is
against the original network's output on a test tile used for nothing else.

Run:  python benchmarks/openvino_speed.py [--rounds 5] [--repeats 3] [--distill-steps 150] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from int8_speed import guarded_int8  # the guard's choice of preset, shared with the int8 benchmark

from ebai.core import InputSpec
from ebai.core.hardware import cpu_info
from ebai.core.metrics import pearson
from ebai.openvino import OpenVINOBackend

TILE = (32, 128, 128)


def volumes(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Image-like synthetic volumes ``(n, 1, *shape)``: smoothed noise plus bright blobs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool3d(torch.randn(n, 1, *shape, generator=g), 5, 1, 2) * 4.0
    blobs = torch.nn.functional.avg_pool3d((torch.rand(n, 1, *shape, generator=g) > 0.999).float(), 7, 1, 3) * 60.0
    return (x + blobs).numpy().astype(np.float32)


def build_unet(norm: str, kind: str = "unet") -> torch.nn.Module:
    from monai.networks.nets import BasicUNet, UNet

    torch.manual_seed(0)
    if kind == "basicunet":  # DESIGN.md's measured net: features 32-256, LeakyReLU, ConvTranspose, concatenations
        net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=(32, 32, 64, 128, 256, 32), norm=norm)
    else:
        net = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=(32, 64, 128, 256),
            strides=(2, 2, 2),
            num_res_units=2,
            norm=norm,
        )
    net.train()
    with torch.no_grad():
        for i in range(4):  # settle BatchNorm running statistics
            net(torch.from_numpy(volumes(2, TILE, 1000 + i)))
    return net.eval()


def torch_fn(net: torch.nn.Module, x: np.ndarray) -> Callable[[], np.ndarray]:
    tensor = torch.from_numpy(x)

    def call() -> np.ndarray:
        with torch.inference_mode():
            return net(tensor).numpy()

    return call


def export(net: torch.nn.Module, path: Path) -> Path:
    from ebai.compress import export_onnx

    return export_onnx(net, path, volumes(1, TILE, 7)).path


def measure(rows: dict[str, dict[str, Any]], rounds: int, repeats: int) -> None:
    """Wall and CPU seconds per call, in ebai's interleaved order (one warm-up call of each row first)."""
    from ebai.core.latency import interleave

    for row in rows.values():
        row["wall"], row["cpu"] = [], []
    calls = {name: row["fn"] for name, row in rows.items()}
    for name, fn in interleave(calls, rounds=rounds, warmup=1, desc="interleaved rounds"):
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            fn()
            rows[name]["wall"].append(time.perf_counter() - w)
            rows[name]["cpu"].append(time.process_time() - c)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=8, help="calibration tiles for int8")
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--distill-tile", type=int, nargs=3, default=(32, 64, 64))
    ap.add_argument("--norm", default="batch", choices=("batch", "instance"))
    ap.add_argument(
        "--net", default="unet", choices=("unet", "basicunet"), help="MONAI UNet (residual units) or BasicUNet"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for eager inference")
    ap.add_argument("--no-pruned", action="store_true", help="skip the pruned + distilled row")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    cpu = cpu_info()
    print(f"cpu: {cpu.model}, {cpu.cores} logical cores, {', '.join(cpu.features)}")
    net = build_unet(args.norm, args.net)
    spec = InputSpec("bczyx", 1, TILE, divisor=8)
    calibration = [volumes(1, TILE, 100 + i) for i in range(args.calibration)]
    validation = volumes(1, TILE, 500)  # picks the int8 preset
    test = volumes(1, TILE, 900)  # Pearson of every row; used for nothing else
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        original_val, original_test = net(torch.from_numpy(validation)).numpy(), net(torch.from_numpy(test)).numpy()

    backend = OpenVINOBackend()
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ebai-ov-speed-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        onnx_path = export(net, tmp / "reference.onnx")
        print(f"exported ONNX in {time.perf_counter() - started:.1f}s", flush=True)
        rows["pytorch eager"] = {"precision": "fp32", "fn": torch_fn(net, test)}
        fp32 = backend.lower(onnx_path, tmp / "fp32", precision="fp32", input_spec=spec, calibration=[])
        f32 = backend.load(tmp / "fp32", fp32, inference_precision="f32")
        default = backend.load(tmp / "fp32", fp32)
        rows["openvino f32"] = {"precision": "f32 (INFERENCE_PRECISION_HINT=f32)", "fn": lambda: f32(test)}
        rows["openvino default"] = {
            "precision": f"{default.execution_precision} (OpenVINO default)",
            "fn": lambda: default(test),
        }

        started = time.perf_counter()
        int8_low, int8, scores = guarded_int8(
            backend, onnx_path, tmp / "int8", spec, calibration, (validation, original_val), {}
        )
        preset = int8_low.options["preset"]
        print(
            f"int8 lowered in {time.perf_counter() - started:.1f}s; validation Pearson by preset {scores}: keeping {preset}",
            flush=True,
        )
        rows["openvino int8"] = {
            "precision": f"int8 ({preset}; rest {int8.execution_precision})",
            "fn": lambda: int8(test),
        }
        plain_low = backend.lower(
            onnx_path,
            tmp / "int8-plain",
            precision="int8",
            input_spec=spec,
            calibration=calibration,
            options={"preset": preset, "deconv_to_conv": False},
        )
        plain = backend.load(tmp / "int8-plain", plain_low)
        rows["openvino int8, transposed convs as-is"] = {
            "precision": f"int8 ({preset}; rest {plain.execution_precision})",
            "fn": lambda: plain(test),
        }

        if not args.no_pruned:
            try:
                from ebai.compress import FineTuneSettings, PruneSettings, distill, prune

                started = time.perf_counter()
                pruned = prune(net, volumes(1, TILE, 7), PruneSettings(method="l1", ratio=0.5))
                train = [v for v in volumes(8, TILE, 300)]
                torch.set_num_threads(1)  # training on a shared 2-core CPU: one thread was faster
                result = distill(
                    pruned.model,
                    net,
                    train,
                    FineTuneSettings(steps=args.distill_steps),
                    tile=tuple(args.distill_tile),
                    seed=0,
                )
                torch.set_num_threads(args.threads)
                print(
                    f"pruned (MACs /{pruned.mac_reduction:.2f}) and distilled {result.steps} steps in {time.perf_counter() - started:.0f}s: "
                    f"Pearson on distillation crops {result.pearson_before:.3f} -> {result.pearson_after:.3f}",
                    flush=True,
                )
                pruned_onnx = export(result.model.eval(), tmp / "pruned.onnx")
                p_low, p_int8, p_scores = guarded_int8(
                    backend, pruned_onnx, tmp / "pruned-int8", spec, calibration, (validation, original_val), {}
                )
                rows["pruned 50% + distilled + openvino int8"] = {
                    "precision": f"int8 ({p_low.options['preset']}; rest {p_int8.execution_precision})",
                    "fn": lambda: p_int8(test),
                }
            except Exception as exc:  # the row is reported as skipped, the others still run
                notes.append(f"pruned row skipped: {type(exc).__name__}: {exc}")

        for row in rows.values():
            row["output"] = row["fn"]()
            row["pearson"] = pearson(row["output"], original_test)
        print(f"timing {len(rows)} rows: {args.rounds} interleaved rounds x {args.repeats} calls", flush=True)
        measure(rows, args.rounds, args.repeats)

    med = {k: float(np.median(v["wall"])) for k, v in rows.items()}
    cpu_med = {k: float(np.median(v["cpu"])) for k, v in rows.items()}
    results = {
        "tile": [1, 1, *TILE],
        "norm": args.norm,
        "net": args.net,
        "cpu": {"model": cpu.model, "cores": cpu.cores, "features": list(cpu.features)},
        "rounds": args.rounds,
        "repeats": args.repeats,
        "rows": [
            {
                "row": k,
                "precision": v["precision"],
                "median_s": med[k],
                "p95_s": float(np.percentile(v["wall"], 95)),
                "cpu_s": cpu_med[k],
                "vs_openvino_f32": med["openvino f32"] / med[k],
                "vs_openvino_default": med["openvino default"] / med[k],
                "vs_eager": med["pytorch eager"] / med[k],
                "pearson": v["pearson"],
            }
            for k, v in rows.items()
        ],
        "notes": notes,
    }
    head = f"{'row':<40} {'precision':<34} {'median s':>9} {'p95 s':>7} {'CPU s':>7} {'vs OV f32':>9} {'vs OV dflt':>10} {'vs eager':>8} {'Pearson':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results["rows"]:
        print(
            f"{r['row']:<40} {r['precision']:<34} {r['median_s']:>9.3f} {r['p95_s']:>7.3f} {r['cpu_s']:>7.3f} "
            f"{r['vs_openvino_f32']:>8.2f}x {r['vs_openvino_default']:>9.2f}x {r['vs_eager']:>7.2f}x {r['pearson']:>8.4f}"
        )
    by = {r["row"]: r for r in results["rows"]}
    i8 = by["openvino int8"]
    checks = [
        ("int8 vs OpenVINO f32", i8["vs_openvino_f32"], 3.5),
        ("int8 vs OpenVINO default", i8["vs_openvino_default"], 1.8),
        ("int8 vs PyTorch eager", i8["vs_eager"], 9.0),
        ("int8 Pearson", i8["pearson"], 0.99),
    ]
    if "pruned 50% + distilled + openvino int8" in by:
        checks.append(
            ("pruned + int8 vs OpenVINO f32", by["pruned 50% + distilled + openvino int8"]["vs_openvino_f32"], 12.0)
        )
    print("\ntargets (wall-time ratios of the interleaved medians):")
    for name, value, target in checks:
        print(f"  {name:<32} {value:7.3f}  (target >= {target}): {'met' if value >= target else 'NOT met'}")
    for note in notes:
        print(f"note: {note}")
    results["targets"] = [{"check": n, "value": v, "target": t, "met": v >= t} for n, v, t in checks]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
