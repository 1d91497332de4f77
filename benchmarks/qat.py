"""Int8 routes side by side on a network post-training int8 cannot keep: PTQ, accuracy control, QAT.

The network is the test suite's instance-norm 3D U-Net (``packages/ebai-compress/tests/compress_nets.py``,
random weights, each block's mid channels spread over ``--spread``-fold ranges). It is compressed
to OpenVINO int8 twice: with the default routes (post-training presets, then accuracy control,
which keeps the most harmful layers in float) and with quantization-aware training instead of
accuracy control. Prints each route's Pearson to the original on held-out tiles and the two int8
networks' latency per tile against OpenVINO's default precision, in the same interleaved rounds.

    python benchmarks/qat.py [--spread 20] [--tile 16,32,32] [--steps 300]

On a shared machine set one torch thread (OMP_NUM_THREADS=1) and run it under ``nice``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "packages" / "ebai-compress" / "tests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, default=20.0)
    parser.add_argument("--tile", default="16,32,32")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(TESTS))  # the test nets and images, not copied here
    import compress_nets as nets

    from conftest import smooth_images
    from ebai.adapters import TorchAdapter
    from ebai.compress import Recipe, compress
    from ebai.core.data import ArraySource
    from ebai.core.latency import measure_interleaved

    torch.set_num_threads(1)
    tile = tuple(int(t) for t in args.tile.split(","))
    shape = tuple(t + t // 4 for t in tile)
    images = smooth_images(6, shape, seed=1)
    source = TorchAdapter(nets.instance_unet3d(spread=args.spread), axes="bczyx", channels=1, tile=tile)
    base = {
        "targets": ["openvino"],
        "precision": "int8",
        "calibration": {"samples": 8},
        "fidelity": {"tiles": 4, "threshold": 0.995},
        "timing": {"rounds": args.rounds},
        "qat": {"steps": args.steps},
    }
    runs = {"accuracy control": base, "qat": {**base, "fidelity": {**base["fidelity"], "accuracy_control": False}}}
    with tempfile.TemporaryDirectory(prefix="ebai-qat-") as tmp:
        arts = {}
        for name, plan in runs.items():
            try:
                arts[name] = compress(source, ArraySource(images), Recipe.from_dict(plan), Path(tmp) / f"{name}.ebai")
            except Exception as exc:  # a refused route is a result too
                print(f"{name}: {exc}")
                continue
            target = arts[name].manifest.targets[0]
            tried = ", ".join(f"{v['route']} {v['pearson']:.4f}" for v in target.record["variants"])
            qat = target.record.get("qat") or {}
            extra = f"; QAT {qat['steps']} steps in {qat['seconds']:.0f} s" if qat else ""
            print(f"{name}: kept {target.record['route']} ({tried}){extra}")
            if target.timing:
                print(
                    f"  {target.timing.median_s * 1e3:.1f} ms per tile vs OpenVINO default "
                    f"({target.timing.default_precision}) {target.timing.default_median_s * 1e3:.1f} ms: "
                    f"{target.timing.speedup:.2f}x"
                )
        if len(arts) == 2:
            batch = np.stack([images[0][(slice(None), *[slice(0, t) for t in tile])]]).astype(np.float32)
            engines = {k: a.load_engine("openvino", "int8") for k, a in arts.items()}
            try:
                calls = {k: (lambda e=e: e.infer(batch)) for k, e in engines.items()}
                stats = measure_interleaved(calls, rounds=args.rounds, warmup=2)
            finally:
                for e in engines.values():
                    e.close()
            ac, qat = stats["accuracy control"].median_s, stats["qat"].median_s
            print(
                f"int8 latency per tile, interleaved: accuracy control {ac * 1e3:.1f} ms, QAT {qat * 1e3:.1f} ms "
                f"({ac / qat:.2f}x)"
            )


if __name__ == "__main__":
    main()
