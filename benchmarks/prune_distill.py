"""Pruning and distillation of the demo 3D U-Net: MACs/parameters before and after, fidelity before/after.

The network is the denoising demo's MONAI ``UNet(spatial_dims=3, in_channels=1, out_channels=1,
channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2)``. Nothing is downloaded: the
teacher is first trained briefly as a denoiser on synthetic blob volumes (so that it behaves like a
trained network rather than a random one), then pruned with each importance criterion, and the
pruned copy is distilled from it on the training volumes. Fidelity is the Pearson correlation of
the pruned network's output with the original's on held-out volumes, before and after distillation.

Run:  python benchmarks/prune_distill.py [--steps 200] [--teacher-steps 150] [--threads 1]

On a shared CPU use one thread: with two threads on a 2-core machine that other processes keep busy,
a training step was 2-10x slower than with one (spin-waiting on the busy core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ebai.compress import FineTuneSettings, PruneSettings, distill, prune
from ebai.core.metrics import max_abs_error, pearson


def blob_volume(shape: tuple[int, int, int], rng: np.random.Generator, blobs: int = 40) -> np.ndarray:
    """A clean synthetic volume: Gaussian blobs of random size and brightness on a dark background."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(blobs):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        s = rng.uniform(1.5, 4.0)
        vol += rng.uniform(0.3, 1.0) * np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * s * s))
    return vol


def make_data(n: int, shape: tuple[int, int, int], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    clean = [blob_volume(shape, rng) for _ in range(n)]
    noisy = [(c + rng.normal(0, 0.25, c.shape)).astype(np.float32)[np.newaxis] for c in clean]
    return noisy, [c[np.newaxis] for c in clean]


def starts(shape: tuple[int, ...], tile: tuple[int, ...], rng: np.random.Generator | None) -> list[int]:
    """Corner of a random crop (centred without ``rng``)."""
    return [
        (d - t) // 2 if rng is None else int(rng.integers(0, d - t + 1)) for d, t in zip(shape[1:], tile, strict=True)
    ]


def crop(vol: np.ndarray, tile: tuple[int, ...], corner: list[int]) -> np.ndarray:
    return vol[(slice(None), *[slice(s, s + t) for s, t in zip(corner, tile, strict=True)])]


def train_teacher(model: torch.nn.Module, noisy, clean, tile, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            i = int(rng.integers(len(noisy)))
            corner = starts(noisy[i].shape, tile, rng)
            xs.append(crop(noisy[i], tile, corner))
            ys.append(crop(clean[i], tile, corner))
        loss = torch.mean((model(torch.from_numpy(np.stack(xs))) - torch.from_numpy(np.stack(ys))) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def outputs(model: torch.nn.Module, tiles: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(tiles[i : i + 2])).numpy() for i in range(0, len(tiles), 2)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", default="32,64,64")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--methods", default="l1,l2,fpgm")
    parser.add_argument("--steps", type=int, default=200, help="distillation step budget")
    parser.add_argument("--teacher-steps", type=int, default=150, help="denoising training of the teacher first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from monai.networks.nets import UNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tile = tuple(int(t) for t in args.tile.split(","))
    volume = (tile[0] + 16, tile[1] + 32, tile[2] + 32)
    noisy, clean = make_data(8, volume, args.seed)
    train_x, held_x, held_clean = noisy[:6], noisy[6:], clean[6:]
    corners = [
        (v, starts(held_x[v].shape, tile, np.random.default_rng([args.seed, k]))) for k in range(4) for v in range(2)
    ]
    held = np.stack([crop(held_x[v], tile, c) for v, c in corners])
    truth = np.stack([crop(held_clean[v], tile, c) for v, c in corners])

    teacher = UNet(
        spatial_dims=3, in_channels=1, out_channels=1, channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2
    )
    started = time.perf_counter()
    train_teacher(teacher, train_x, clean[:6], tile, args.teacher_steps, args.seed)
    teacher_out = outputs(teacher, held)
    print(f"MONAI UNet 3D channels (32, 64, 128, 256), num_res_units=2, tile {tile}, {args.threads} thread(s)")
    print(
        f"teacher: {args.teacher_steps} denoising steps in {time.perf_counter() - started:.0f} s, "
        f"Pearson to the clean volumes {pearson(teacher_out, truth):.4f} (noisy input: {pearson(held, truth):.4f})"
    )
    print()
    header = (
        f"{'method':7}{'params before':>15}{'params after':>14}{'ratio':>7}{'GMACs before':>14}{'GMACs after':>13}"
        f"{'ratio':>7}{'Pearson pruned':>16}{'distilled':>11}{'steps':>7}{'s/step':>8}{'max err':>9}"
    )
    print(header)
    print("-" * len(header))
    for method in args.methods.split(","):
        result = prune(teacher, (1, 1, *tile), PruneSettings(method=method, ratio=args.ratio))
        before = pearson(outputs(result.model, held), teacher_out)
        t0 = time.perf_counter()
        tuned = distill(
            result.model,
            teacher,
            train_x,
            FineTuneSettings(steps=args.steps, eval_every=20, patience=4),
            tile=tile,
            seed=args.seed,
        )
        per_step = (time.perf_counter() - t0) / max(tuned.steps, 1)
        out = outputs(tuned.model, held)
        after = pearson(out, teacher_out)
        print(
            f"{method:7}{result.params_before / 1e6:>13.2f} M{result.params_after / 1e6:>12.2f} M{result.param_reduction:>6.2f}x"
            f"{result.macs_before / 1e9:>14.2f}{result.macs_after / 1e9:>13.2f}{result.mac_reduction:>6.2f}x"
            f"{before:>16.4f}{after:>11.4f}{tuned.steps:>7d}{per_step:>8.2f}{max_abs_error(out, teacher_out):>9.3g}",
            flush=True,
        )
    print()
    print("Pearson: pruned network's output vs the original's on 8 held-out tiles (2 volumes never trained on),")
    print("right after pruning and after distillation (best of the validation checks; early stop on no improvement).")


if __name__ == "__main__":
    main()
