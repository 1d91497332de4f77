"""Int8 against OpenVINO's default precision for convolutions, by their number of input channels.

Why: in ``benchmarks/int8_speed.py`` the per-layer profiles of whole networks put the networks that
miss the 1.6x target down to their convolutions with few input channels, but profiles of whole
networks on a machine that changes speed are noisy. A chain of equal convolutions, measured alone,
tells the same story without the rest of a network: AMX multiplies tiles whose rows hold 64 bytes
of input channels (32 channels in bf16, 64 in int8), so what int8 gains over bf16 should depend on
the input channels.

Each network is ``depth`` times ``Conv(c -> c, 3, padding 1) + ReLU`` (3D on a 32x64x64 tile, 2D
on 256x256), exported to ONNX and lowered by ebai's OpenVINO backend at fp32 (run at the default
precision, bf16 on CPUs with AVX-512 BF16/AMX) and at int8 with every layer quantized
(``layer_precision="int8"``). Two figures per channel count:

- *convolutions*: the summed ``Convolution`` time of the per-layer profiles (``PERF_COUNT``), the
  two models profiled in turns, the median over rounds of each round's ratio: the kernels alone,
  without the reorders of the network's input and output;
- *whole call*: the paired speed-up of the two models timed in interleaved rounds
  (``ebai.core.latency.paired_speedup``).

Run:  python benchmarks/int8_conv_channels.py [--channels 8,16,32,48,64,96,128] [--depth 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebai.core import InputSpec
from ebai.core.hardware import cpu_info
from ebai.core.latency import measure_interleaved, paired_speedup
from ebai.core.profiling import profiles_in_turns
from ebai.openvino import OpenVINOBackend

TILES = {"3d": (32, 64, 64), "2d": (256, 256)}


def conv_net(dims: str, channels: int, depth: int) -> torch.nn.Module:
    """``depth`` 3x3(x3) convolutions ``channels -> channels`` with padding 1, each followed by ReLU."""
    torch.manual_seed(channels)
    conv = torch.nn.Conv3d if dims == "3d" else torch.nn.Conv2d
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [conv(channels, channels, 3, padding=1), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).eval()


def measure(dims: str, c_in: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Profile and time the chain at the default precision and in int8; the kernels' and the calls' gain."""
    from ebai.compress import export_onnx

    tile = TILES[dims]
    rng = np.random.default_rng(c_in)
    calibration = [rng.normal(size=(1, c_in, *tile)).astype(np.float32) for _ in range(4)]
    x = rng.normal(size=(1, c_in, *tile)).astype(np.float32)
    folder = tmp / f"{dims}-{c_in}"
    onnx_path = export_onnx(conv_net(dims, c_in, args.depth), folder / "conv.onnx", calibration[0]).path
    spec = InputSpec("bczyx" if dims == "3d" else "bcyx", c_in, tile)
    backend = OpenVINOBackend()
    load = {"num_threads": args.threads} if args.threads else {}
    fp32 = backend.lower(onnx_path, folder / "fp32", precision="fp32", input_spec=spec, calibration=[])
    int8 = backend.lower(
        onnx_path,
        folder / "int8",
        precision="int8",
        input_spec=spec,
        calibration=calibration,
        options={"layer_precision": "int8", "deconv_to_conv": False},
    )
    default = backend.load(folder / "fp32", fp32, **load)
    quantized = backend.load(folder / "int8", int8, **load)
    try:
        stats = measure_interleaved(
            {"default": lambda: default(x), "int8": lambda: quantized(x)},
            rounds=args.rounds,
            repeats=args.repeats,
            warmup=2,
        )
        precision = default.execution_precision
        runs = profiles_in_turns(
            {"default": default, "int8": quantized}, x, calls=args.profile_calls, rounds=args.profile_rounds
        )
        conv_default = [p.seconds("Convolution") for p in runs["default"]]
        conv_int8 = [p.seconds("Convolution") for p in runs["int8"]]
        ratios = [d / i if i > 0 else float("nan") for d, i in zip(conv_default, conv_int8, strict=True)]
    finally:
        default.close()
        quantized.close()
    return {
        "dims": dims,
        "channels": c_in,
        "depth": args.depth,
        "default_precision": precision,
        "convolutions_default_ms": float(np.median(conv_default)) * 1e3,
        "convolutions_int8_ms": float(np.median(conv_int8)) * 1e3,
        "convolutions_int8_gain": float(np.median(ratios)),
        "call_default_ms": stats["default"].median_s * 1e3,
        "call_int8_ms": stats["int8"].median_s * 1e3,
        "call_int8_gain": paired_speedup(stats["default"], stats["int8"]),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", default="8,16,32,48,64,96,128", help="comma-separated channel counts")
    ap.add_argument("--depth", type=int, default=3, help="convolutions in each chain")
    ap.add_argument("--profile-calls", type=int, default=1, help="calls per profile")
    ap.add_argument("--profile-rounds", type=int, default=15, help="profiles taken in turns; median of the ratios")
    ap.add_argument("--dims", default="3d,2d", help="3d, 2d or both")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of both engines (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cpu = cpu_info()
    print(f"cpu: {cpu.model}, {cpu.cores} logical cores, {', '.join(cpu.features)}", flush=True)
    channels = [int(c) for c in args.channels.split(",") if c.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="ebai-int8-conv-") as tmp:
        for dims in [d.strip() for d in args.dims.split(",") if d.strip()]:
            print(f"\n{dims}: {args.depth} convolutions c -> c, tile {'x'.join(map(str, TILES[dims]))}")
            print(
                f"  {'channels':>8} {'conv default ms':>15} {'conv int8 ms':>12} {'conv gain':>9} "
                f"{'call default ms':>15} {'call int8 ms':>12} {'call gain':>9}"
            )
            for c_in in channels:
                r = measure(dims, c_in, args, Path(tmp))
                results.append(r)
                print(
                    f"  {c_in:>8} {r['convolutions_default_ms']:>15.3f} {r['convolutions_int8_ms']:>12.3f} "
                    f"{r['convolutions_int8_gain']:>8.2f}x {r['call_default_ms']:>15.3f} {r['call_int8_ms']:>12.3f} "
                    f"{r['call_int8_gain']:>8.2f}x  (default runs {r['default_precision']})",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu.model, "results": results}, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
