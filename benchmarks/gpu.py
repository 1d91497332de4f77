"""The torch target on an NVIDIA GPU: eager fp32 vs the configuration the target chooses, per network.

Networks: the four reference task networks (shipped weights; denoising 32x128x128, nuclei
256x256, label-free and semantic 32x64x64) and MONAI's ``UNet(channels=(32, 64, 128, 256),
strides=(2, 2, 2), num_res_units=2, norm="batch")`` at 32x128x128 (random weights, BatchNorm
statistics settled on synthetic volumes), each at batch 1 and 8.

Rows, per network and batch:

- eager fp32: the torch module on the GPU with TF32 off (true fp32, as the issue's table measures it);
- the torch target: the network exported by ``TorchBackend.lower_module`` at ``--precision``
  (fp16 by default; both cast modes lowered and the one with the better Pearson to fp32 kept, as
  ``ebai compress``'s guard would), loaded with the configuration measured at first load for that
  batch (layout, ``torch.compile``, CUDA graphs; see ``ebai.torch._choice``);
- their ratio, and the target's Pearson to the eager fp32 output on the same synthetic input.

Timing: ``ebai.core.latency.measure_latency`` with a CUDA synchronisation inside each call, inputs
already on the GPU for both rows, medians of ``--rounds`` interleaved rounds of ``--repeats`` calls.

Without a CUDA GPU it says so and exits 0; ``--cpu`` then runs the same rows on the CPU (slow for the
3D networks: use ``--networks``). The GPU figures in the README are unverified until this has been
run on an NVIDIA GPU.

Run:  python benchmarks/gpu.py [--precision fp16|bf16|tf32] [--batches 1,8] [--networks denoising,unet32-256]
      [--rounds 3] [--repeats 20] [--cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebai.core import InputSpec
from ebai.core.latency import measure_latency
from ebai.core.metrics import pearson
from ebai.torch import TorchBackend

#: Tiles of the reference tasks as measured in the issue (the nuclei task at its test size).
TASK_TILES = {"denoising": (32, 128, 128), "nuclei": (256, 256), "labelfree": (32, 64, 64), "semantic": (32, 64, 64)}
UNET_TILE = (32, 128, 128)


def smooth_batch(batch: int, channels: int, tile: tuple[int, ...], seed: int) -> np.ndarray:
    """Image-like input ``(batch, channels, *tile)``: noise box-filtered along every spatial axis."""
    x = np.random.default_rng(seed).standard_normal((batch, channels, *tile)).astype(np.float32)
    for axis in range(2, x.ndim):
        x = sum(np.roll(x, k, axis=axis) for k in range(-2, 3)) / 5.0
    return (x / x.std()).astype(np.float32)


def monai_unet() -> torch.nn.Module:
    """MONAI UNet 32-256 with residual units, BatchNorm statistics settled on smooth volumes."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 1, channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2, norm="batch").train()
    with torch.no_grad():
        for i in range(3):
            net(torch.from_numpy(smooth_batch(2, 1, UNET_TILE, 1000 + i)))
    return net.eval()


def networks(names: list[str]) -> list[tuple[str, torch.nn.Module, InputSpec]]:
    """Build the networks asked for: task names and ``unet32-256``."""
    out = []
    for name in names:
        if name == "unet32-256":
            out.append((name, monai_unet(), InputSpec(axes="bczyx", channels=1, tile=UNET_TILE)))
            continue
        from ebai.tasks import get_task  # the reference tasks (package ebai-tasks)

        task = get_task(name)
        spec = InputSpec(axes=task.axes, channels=task.channels, tile=TASK_TILES[name])
        out.append((name, task.load_trained().eval(), spec))
    return out


def timed(fn: Callable[[], Any], device: torch.device, rounds: int, repeats: int) -> float:
    """Median seconds per call over ``rounds`` x ``repeats`` calls, synchronising the GPU in each."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    medians = [measure_latency(call, warmup=3 if r == 0 else 1, repeats=repeats).median_s for r in range(rounds)]
    return float(np.median(medians))


def eager_fp32(module: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The original network in eager mode, true fp32 (TF32 off for convolutions and matrix products)."""
    net = module.to(device).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.no_grad():
                return net(x)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    return run


def torch_target(
    module: torch.nn.Module,
    spec: InputSpec,
    precision: str,
    device: torch.device,
    batch: int,
    work: Path,
    x: torch.Tensor,
    ref: np.ndarray,
) -> tuple[Any, float]:
    """Lower every variant, keep the best by Pearson (as the guard does), load it with the measured choice."""
    backend = TorchBackend()
    best: tuple[Any, float] | None = None
    for i, options in enumerate(backend.variants(precision)):
        folder = work / f"{precision}-{i}" / f"torch-{precision}"
        lowering = backend.lower_module(
            module.cpu().eval(), folder, precision=precision, input_spec=spec, calibration=[], options=options
        )
        engine = backend.load(folder, lowering, device=str(device), batch=batch, cache_dir=work / "choices")
        score = pearson(engine.run_tensor(x).cpu().numpy(), ref)
        if best is None or score > best[1]:
            if best is not None:
                best[0].close()
            best = (engine, score)
        else:
            engine.close()
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp16", choices=("fp32", "tf32", "fp16", "bf16"))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--networks", default="denoising,nuclei,labelfree,semantic,unet32-256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="Without a CUDA GPU, run the rows on the CPU instead.")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)

    if torch.cuda.is_available():
        device = torch.device("cuda", 0)
        where = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        why = "this torch has no CUDA" if not torch.version.cuda else "no CUDA GPU is visible"
        print(f"no NVIDIA GPU: {why} (torch {torch.__version__}); the GPU rows cannot be measured here.")
        if not args.cpu:
            return 0
        device = torch.device("cpu")
        from ebai.core.hardware import cpu_info

        where = f"CPU {cpu_info().model}, torch {torch.__version__}"
    print(f"device: {where}; precision {args.precision}; {args.rounds} rounds x {args.repeats} calls")
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    head = f"{'network':<12}{'tile':>14}{'batch':>6}{'eager fp32 ms':>15}{'target ms':>11}{'ratio':>8}{'pearson':>9}  chosen configuration"
    print(head)
    print("-" * len(head))
    for name, module, spec in networks(args.networks.split(",")):
        for batch in batches:
            x = torch.from_numpy(smooth_batch(batch, spec.channels, tuple(spec.tile), seed=batch)).to(device)
            eager = eager_fp32(module, device)
            ref = eager(x).float().cpu().numpy()
            with tempfile.TemporaryDirectory(prefix="ebai-gpu-bench-") as tmp:
                engine, score = torch_target(module, spec, args.precision, device, batch, Path(tmp), x, ref)
                module.to(device)
                eager_s = timed(lambda x=x, f=eager: f(x), device, args.rounds, args.repeats)
                target_s = timed(lambda x=x, e=engine: e.run_tensor(x), device, args.rounds, args.repeats)
                config = engine.execution_precision
                engine.close()
            row = {
                "network": name,
                "tile": list(spec.tile),
                "batch": batch,
                "eager_fp32_ms": eager_s * 1e3,
                "target_ms": target_s * 1e3,
                "ratio": eager_s / target_s,
                "pearson": score,
                "configuration": config,
            }
            rows.append(row)
            tile = "x".join(map(str, spec.tile))
            print(
                f"{name:<12}{tile:>14}{batch:>6}{row['eager_fp32_ms']:>15.2f}{row['target_ms']:>11.2f}"
                f"{row['ratio']:>7.2f}x{score:>9.4f}  {config}"
            )
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps({"device": where, "precision": args.precision, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
