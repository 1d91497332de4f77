"""Int8 speed on normalization- and attention-heavy networks: ebai's int8 lowering before and after issue 17.

Networks: public MONAI architectures, unmodified (constructor arguments only), with weights settled
by a few Adam steps of denoising on synthetic images (random weights give activations no trained
network has), and the four reference tasks of ``ebai-tasks`` with their shipped weights:

- ``basicunet2d``: ``BasicUNet(spatial_dims=2)`` (instance norm, LeakyReLU, transposed convolutions), 1x1x256x256;
- ``attentionunet2d``: ``AttentionUnet(spatial_dims=2, channels=(16, 32, 64, 128))`` (batch norm,
  attention gates: sigmoid products), 1x1x256x256;
- ``segresnet3d``: ``SegResNet(spatial_dims=3, init_filters=16)`` (group norm, residual blocks,
  trilinear upsampling), 1x1x32x64x64;
- ``basicunet3d``: ``BasicUNet(spatial_dims=3)`` (instance norm), 1x1x32x64x64;
- ``denoising``, ``nuclei``, ``labelfree``, ``semantic``: the reference tasks at their tiles.

Rows per network, each timed in the same interleaved rounds (``ebai.core.latency.measure_interleaved``;
the table gives the ratio of medians, of fastest calls, and the paired ratio
(``ebai.core.latency.paired_speedup``: per round, the ratio of the two rows' fastest calls; the
median over rounds), which is what the verdict uses: this machine switches between a fast state and
a 2-2.4x slower one for seconds at a time, and a median then depends on how many of a row's calls
fell in the slow state):

- OpenVINO f32 (``INFERENCE_PRECISION_HINT=f32``) and OpenVINO default (bf16 on CPUs with AVX-512 BF16/AMX);
- ebai int8 *before*: main's lowering, every quantizable layer in int8 and transposed convolutions
  rewritten where their input can be negative (``layer_precision="int8"``);
- ebai int8 *after*: the measured lowering (``layer_precision="measured"``, the default now): a layer
  stays int8 only where it ran faster than at the default precision here, transposed convolutions
  are rewritten only where they ran in f32, and the model is never slower than the default when
  the lowering timed it;
- plain NNCF: ``nncf.quantize(convert_model(onnx), preset=MIXED)`` of the same ONNX, for reference.

For ebai's two rows, both NNCF presets are lowered and the one with the better Pearson on a
validation tile is kept, as the accuracy guard does; below 0.99 the accuracy-controlled fallback
runs, as in ``ebai compress``. Pearson is against the original PyTorch network on a test tile used
for nothing else. Per network, a per-layer profile (``PERF_COUNT``) of the default, before and after
models (taken in turns one call apart, median of rounds) shows where the time goes; where the target
is missed, the script says what the profiles allow at most (:func:`ceiling`: each convolution at the
lesser of its int8 and default time, nothing else slower, from the round with the median ceiling)
and how much int8 gained on the convolutions by their number of input channels
(:func:`channel_gains`).

Run:  python benchmarks/int8_speed.py [--nets basicunet2d,denoising] [--rounds 11] [--repeats 2] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebai.core import InputSpec
from ebai.core.hardware import cpu_info
from ebai.core.latency import measure_interleaved, paired_speedup
from ebai.core.metrics import pearson
from ebai.core.profiling import LayerProfile, LayerTime, profile_table, profiles_in_turns
from ebai.openvino import OpenVINOBackend, OpenVINOEngine

MONAI_NETS = ("basicunet2d", "attentionunet2d", "segresnet3d", "basicunet3d")
TASKS = ("denoising", "nuclei", "labelfree", "semantic")
GUARD = 0.99
#: Options every timed engine is loaded with (``--threads`` sets ``num_threads``).
ENGINE_OPTIONS: dict[str, Any] = {}


def images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Image-like synthetic inputs ``(n, 1, *shape)``: smoothed noise plus bright blobs."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.nn.functional.avg_pool3d if len(shape) == 3 else torch.nn.functional.avg_pool2d
    x = pool(torch.randn(n, 1, *shape, generator=g), 5, 1, 2) * 4.0
    blobs = pool((torch.rand(n, 1, *shape, generator=g) > 0.998).float(), 7, 1, 3) * 60.0
    return (x + blobs).numpy().astype(np.float32)


def settle(net: torch.nn.Module, tile: tuple[int, ...], steps: int) -> torch.nn.Module:
    """A few Adam steps of denoising on synthetic images, so weights and norm statistics fit data."""
    pool = torch.nn.functional.avg_pool3d if len(tile) == 3 else torch.nn.functional.avg_pool2d
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    net.train()
    for i in range(steps):
        x = torch.from_numpy(images(2, tile, 2000 + i))
        loss = torch.nn.functional.mse_loss(net(x + 0.5 * torch.randn_like(x)), pool(x, 3, 1, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def monai_net(name: str, steps: int) -> tuple[torch.nn.Module, InputSpec, Callable[[int, int], np.ndarray]]:
    from monai.networks import nets

    torch.manual_seed(0)
    if name == "basicunet2d":
        net, tile = nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=1), (256, 256)
    elif name == "attentionunet2d":
        net = nets.AttentionUnet(
            spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2)
        )
        tile = (256, 256)
    elif name == "segresnet3d":
        net, tile = nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=1, init_filters=16), (32, 64, 64)
    else:
        net, tile = nets.BasicUNet(spatial_dims=3, in_channels=1, out_channels=1), (32, 64, 64)
    spec = InputSpec("bczyx" if len(tile) == 3 else "bcyx", 1, tile, divisor=16)
    return settle(net, tile, steps), spec, lambda n, seed: images(n, tile, seed)


def task_net(name: str) -> tuple[torch.nn.Module, InputSpec, Callable[[int, int], np.ndarray]]:
    from ebai.tasks import get_task

    task = get_task(name)
    spec = task.input_spec

    def samples(n: int, seed: int) -> np.ndarray:
        raw, _ = task.make_samples(n, seed, shape=spec.tile)
        return np.stack([task.preprocess(s) for s in raw]).astype(np.float32)

    return task.load_trained(), spec, samples


def torch_out(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def guarded_int8(
    backend: OpenVINOBackend,
    onnx_path: Path,
    out: Path,
    spec: InputSpec,
    calibration: list[np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    extra: dict[str, Any],
) -> tuple[Any, OpenVINOEngine, dict[str, float]]:
    """Lower both presets, keep the better on validation; accuracy control below the guard, as ebai compress does."""
    x_val, ref_val = validation
    scored = []
    for i, variant in enumerate(backend.variants("int8")):
        lowering = backend.lower(
            onnx_path,
            out / f"v{i}",
            precision="int8",
            input_spec=spec,
            calibration=calibration,
            options={**variant, **extra},
        )
        engine = backend.load(out / f"v{i}", lowering, **ENGINE_OPTIONS)
        scored.append((pearson(engine(x_val), ref_val), lowering, engine))
    scores = {s[1].options["preset"]: round(s[0], 4) for s in scored}
    score, lowering, engine = max(scored, key=lambda s: s[0])
    if score < GUARD:
        controlled = backend.lower_with_accuracy_control(
            onnx_path,
            out / "ac",
            precision="int8",
            input_spec=spec,
            calibration=calibration,
            validation=[(x_val, ref_val)],
            metric=pearson,
            max_drop=1.0 - GUARD,
            options=dict(lowering.options),
        )
        ac_engine = backend.load(out / "ac", controlled, **ENGINE_OPTIONS)
        ac_score = pearson(ac_engine(x_val), ref_val)
        scores["accuracy control"] = round(ac_score, 4)
        if ac_score > score:
            scored.append((ac_score, controlled, ac_engine))
            score, lowering, engine = ac_score, controlled, ac_engine
        else:
            ac_engine.close()
    for _, _, other in scored:
        if other is not engine:
            other.close()
    return lowering, engine, scores


def plain_nncf(onnx_path: Path, spec: InputSpec, calibration: list[np.ndarray]) -> OpenVINOEngine:
    import nncf

    from ebai.openvino._conversion import convert_onnx

    model = convert_onnx(onnx_path, spec)
    samples = [c[i : i + 1] for c in calibration for i in range(len(c))]
    quantized = nncf.quantize(
        model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples)
    )
    return OpenVINOEngine(quantized, precision="int8", **ENGINE_OPTIONS)


def run_network(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from ebai.compress import export_onnx

    started = time.perf_counter()
    net, spec, samples = task_net(name) if name in TASKS else monai_net(name, args.settle_steps)
    calibration = [samples(1, 100 + i) for i in range(args.calibration)]
    x_val, x_test = samples(1, 500), samples(1, 900)
    ref_val, ref_test = torch_out(net, x_val), torch_out(net, x_test)
    folder = tmp / name
    onnx_path = export_onnx(net, folder / "reference.onnx", calibration[0]).path
    backend = OpenVINOBackend()
    fp32 = backend.lower(onnx_path, folder / "fp32", precision="fp32", input_spec=spec, calibration=[])
    engines = {
        "OpenVINO f32": backend.load(folder / "fp32", fp32, inference_precision="f32", **ENGINE_OPTIONS),
        "OpenVINO default": backend.load(folder / "fp32", fp32, **ENGINE_OPTIONS),
    }
    notes: dict[str, Any] = {}
    before, engines["ebai int8 before"], notes["before_scores"] = guarded_int8(
        backend, onnx_path, folder / "before", spec, calibration, (x_val, ref_val), {"layer_precision": "int8"}
    )
    after, engines["ebai int8 after"], notes["after_scores"] = guarded_int8(
        backend, onnx_path, folder / "after", spec, calibration, (x_val, ref_val), {}
    )
    engines["plain NNCF mixed"] = plain_nncf(onnx_path, spec, calibration)
    choice = after.record.get("precision_choice", {})
    print(
        f"{name}: lowered in {time.perf_counter() - started:.0f}s; validation Pearson before {notes['before_scores']}, "
        f"after {notes['after_scores']}; after chose {choice.get('chosen', after.options.get('layer_precision'))}, "
        f"{len(after.options.get('keep_default', []))} layers kept at the default precision, "
        f"{len(choice.get('deconvolutions_rewritten', []))} transposed convolutions rewritten",
        flush=True,
    )
    outputs = {k: e(x_test) for k, e in engines.items()}
    stats = measure_interleaved(
        {k: (lambda e=e: e(x_test)) for k, e in engines.items()}, rounds=args.rounds, repeats=args.repeats, warmup=1
    )
    profiled = ("OpenVINO default", "ebai int8 before", "ebai int8 after")
    runs = profiles_in_turns(
        {k: engines[k] for k in profiled}, x_test, calls=args.profile_calls, rounds=args.profile_rounds
    )
    profiles = {k: median_profile(v) for k, v in runs.items()}
    for engine in engines.values():
        engine.close()
    default = stats["OpenVINO default"].median_s
    rows = [
        {
            "row": k,
            "median_ms": stats[k].median_s * 1e3,
            "vs_default": default / stats[k].median_s,
            "paired_vs_default": paired_speedup(stats["OpenVINO default"], stats[k]),
            "vs_f32": stats["OpenVINO f32"].median_s / stats[k].median_s,
            "fastest_ms": stats[k].min_s * 1e3,
            "fastest_vs_default": stats["OpenVINO default"].min_s / stats[k].min_s,
            "pearson": float(pearson(outputs[k], ref_test)),
        }
        for k in engines
    ]
    return {
        "net": name,
        "input": list(x_test.shape),
        "rows": rows,
        "after_options": {k: v for k, v in after.options.items() if k != "keep_default"},
        "kept_default": list(after.options.get("keep_default", [])),
        "precision_choice": {k: v for k, v in choice.items() if k not in ("layers_int8", "layers_default_precision")},
        "before_options": dict(before.options),
        "notes": notes,
        "profile": profile_table(profiles),
        "ceiling": paired_ceiling(runs["OpenVINO default"], runs["ebai int8 before"]),
        "by_input_channels": channel_gains(
            runs["OpenVINO default"], runs["ebai int8 before"], input_channels(onnx_path, spec)
        ),
        "profiles": {k: p.as_dict() for k, p in profiles.items()},
    }


def median_profile(profiles: list[LayerProfile]) -> LayerProfile:
    """Per (layer type, precision) group, the median time over ``profiles`` (0 where a run lacks it)."""
    first: dict[tuple[str, str], LayerTime] = {}
    for p in profiles:
        for g in p.groups:
            first.setdefault((g.layer_type, g.precision), g)
    groups = []
    for key, g in first.items():
        times = [sum(h.seconds for h in p.groups if (h.layer_type, h.precision) == key) for p in profiles]
        groups.append(LayerTime(g.layer_type, g.precision, float(np.median(times)), g.layers, g.kernels))
    groups.sort(key=lambda g: (-g.seconds, g.layer_type, g.precision))
    return LayerProfile(groups=tuple(groups), calls=sum(p.calls for p in profiles))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=",".join(MONAI_NETS + TASKS), help="comma-separated networks")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--calibration", type=int, default=8, help="calibration tiles for int8")
    ap.add_argument("--settle-steps", type=int, default=8, help="Adam steps settling the MONAI nets' weights")
    ap.add_argument("--profile-calls", type=int, default=1, help="calls per profile")
    ap.add_argument("--profile-rounds", type=int, default=15, help="profiles taken in turns; median per layer group")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of every timed engine (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        ENGINE_OPTIONS["num_threads"] = args.threads
    cpu = cpu_info()
    print(f"cpu: {cpu.model}, {cpu.cores} logical cores, {', '.join(cpu.features)}", flush=True)
    torch.set_num_threads(cpu.cores)
    results = []
    with tempfile.TemporaryDirectory(prefix="ebai-int8-speed-") as tmp:
        for name in [n.strip() for n in args.nets.split(",") if n.strip()]:
            result = run_network(name, args, Path(tmp))
            results.append(result)
            print(
                f"\n{name} per-layer profile (ms per call; per layer group, the median of {args.profile_rounds} "
                f"rounds taken in turns, {args.profile_calls} call(s) per engine per round):"
            )
            print(result["profile"])
            print(
                "  int8 gain of the convolutions by input channels, each round paired (share of the default's "
                f"convolution time): {_channel_text(result['by_input_channels'])}"
            )
            for row in result["rows"]:
                print(f"  {_row_line(name, row)}")
            print(flush=True)
            if args.json:  # written after every network, so a long run interrupted keeps what it measured
                args.json.write_text(json.dumps(_summary(cpu, args, results), indent=2) + "\n", encoding="utf-8")
    head = (
        f"{'network':<16} {'row':<18} {'median ms':>9} {'vs f32':>7} {'vs default':>10} {'fastest vs':>10} "
        f"{'paired vs':>9} {'Pearson':>8}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        for row in r["rows"]:
            print(_row_line(r["net"], row))
    print("\ntarget: ebai int8 after >= 1.6x OpenVINO default with Pearson >= 0.99, never below 1.0x")
    for r in results:
        after = next(row for row in r["rows"] if row["row"] == "ebai int8 after")
        verdict = "met" if after["paired_vs_default"] >= 1.6 and after["pearson"] >= GUARD else "NOT met"
        if r["precision_choice"].get("chosen") == "default":
            # the float model was kept: the default row's graph, so 1.0x by construction; the
            # measured ratio is this machine's noise between two identical models
            floor = f"ok: the default's own graph, measured {after['paired_vs_default']:.2f}x"
        else:
            floor = "ok" if after["paired_vs_default"] >= 1.0 else "BELOW 1.0x"
        print(
            f"  {r['net']:<16} {after['paired_vs_default']:.2f}x paired ({after['vs_default']:.2f}x by medians), "
            f"Pearson {after['pearson']:.4f}: {verdict} (floor {floor})"
        )
        if verdict != "met":
            before = next(row for row in r["rows"] if row["row"] == "ebai int8 before")
            print(f"  {'':<16} why, from the profiles: {_ceiling_text(r['ceiling'])}")
            print(
                f"  {'':<16} in wall-clock terms: the all-int8 model ran {before['paired_vs_default']:.2f}x paired; "
                f"at most {1 - 1 / r['ceiling']['headroom']:.0%} of its summed layer time could go, so at most "
                f"about {before['paired_vs_default'] * r['ceiling']['headroom']:.2f}x"
            )
            print(f"  {'':<16} int8 gain by input channels: {_channel_text(r['by_input_channels'])}")
    return _summary(cpu, args, results)


#: Layer types doing the dot products int8 speeds up; the rest (normalisation, activations,
#: layout changes, FakeQuantize) runs at best as fast as in the default model.
DOT_PRODUCT_TYPES = ("Convolution", "ConvolutionBackpropData", "GroupConvolution", "MatMul", "FullyConnected")


def paired_ceiling(default: list[LayerProfile], int8: list[LayerProfile]) -> dict[str, float]:
    """:func:`ceiling` of each round's pair of profiles; the figures of the round with the median ceiling.

    ``default`` and ``int8`` are :func:`~ebai.core.profiling.profiles_in_turns` runs. One round's
    figures, not a median per figure: medians taken figure by figure would mix rounds
    and could contradict each other.
    """
    each = sorted((ceiling(d, i) for d, i in zip(default, int8, strict=True)), key=lambda c: c["ceiling"])
    return each[(len(each) - 1) // 2]


def input_channels(onnx_path: Path, spec: InputSpec) -> dict[str, int]:
    """Input channels of every convolution of the float OpenVINO model, by layer name."""
    from ebai.openvino._conversion import convert_onnx

    model = convert_onnx(onnx_path, spec)
    return {
        op.get_friendly_name(): op.get_input_partial_shape(0)[1].get_length()
        for op in model.get_ops()
        if op.get_type_name() in DOT_PRODUCT_TYPES and op.get_input_partial_shape(0)[1].is_static
    }


def channel_gains(
    default: list[LayerProfile], int8: list[LayerProfile], channels: dict[str, int]
) -> list[dict[str, float]]:
    """Convolution time in the default and all-int8 models by input channels, each round paired.

    Why: AMX multiplies tiles whose rows hold 64 bytes of input channels (32 channels in bf16, 64
    in int8), so what int8 gains over bf16 depends on a convolution's input channels and on how
    oneDNN folds small channel counts with the kernel's taps. On this project's machine, 32 input
    channels gained 0.8-1.2x and 64 or more 1.4-2.4x, 16 in between or above: this table measures
    it for the network and machine at hand. Per round, each layer's time in the two models is summed
    by input channels; the table gives the median over rounds.
    """
    rounds: dict[int, list[tuple[float, float]]] = {}
    for d, i in zip(default, int8, strict=True):
        sums: dict[int, list[float]] = {}
        for name, c in channels.items():
            if name in d.layers and name in i.layers:
                acc = sums.setdefault(c, [0.0, 0.0])
                acc[0] += d.layers[name][2]
                acc[1] += i.layers[name][2]
        for c, (ds, its) in sums.items():
            rounds.setdefault(c, []).append((ds, its))
    total = sum(np.median([p[0] for p in pairs]) for pairs in rounds.values())
    return [
        {
            "input_channels": c,
            "default_ms": float(np.median([p[0] for p in pairs])) * 1e3,
            "int8_ms": float(np.median([p[1] for p in pairs])) * 1e3,
            "int8_gain": float(np.median([p[0] / p[1] for p in pairs if p[1] > 0])),
            "share_of_default_convolutions": float(np.median([p[0] for p in pairs]) / total) if total else 0.0,
        }
        for c, pairs in sorted(rounds.items())
    ]


def _channel_text(gains: list[dict[str, float]]) -> str:
    return "; ".join(
        f"{g['input_channels']} in: {g['int8_gain']:.2f}x ({g['share_of_default_convolutions']:.0%})" for g in gains
    )


def ceiling(default: Any, int8: Any) -> dict[str, float]:
    """What int8 can gain at most, from the default and the all-int8 (*before*) profiles.

    An upper bound over every choice of which layers run in int8: each dot-product layer costs the
    lesser of its time in the two models (layers matched by name; those found in one model only,
    renamed by a fusion, cost the lesser of their two sums), and all other layers together cost
    the lesser of their two sums (no FakeQuantize, no extra reorders). The default's summed time
    over that is ``ceiling`` (summed layer times; wall-clock ratios scatter around them). Below
    1.6, the target cannot be reached on this CPU by any choice of layer precision without
    rewriting the convolutions themselves. ``headroom`` is the all-int8 model's summed time over
    the same: times the all-int8 model's measured paired speed-up, a ceiling in wall-clock terms
    that leans less on the two profiles' absolute sums (which depend on the state the machine
    was in while each was taken).
    """
    dot_default = sum(default.seconds(t) for t in DOT_PRODUCT_TYPES)
    dot_int8 = sum(int8.seconds(t) for t in DOT_PRODUCT_TYPES)
    dot_layers_default = {n: v[2] for n, v in default.layers.items() if v[0] in DOT_PRODUCT_TYPES}
    dot_layers_int8 = {n: v[2] for n, v in int8.layers.items() if v[0] in DOT_PRODUCT_TYPES}
    matched = dot_layers_default.keys() & dot_layers_int8.keys()
    dot_best = sum(min(dot_layers_default[n], dot_layers_int8[n]) for n in matched) + min(
        sum(t for n, t in dot_layers_default.items() if n not in matched),
        sum(t for n, t in dot_layers_int8.items() if n not in matched),
    )
    if not dot_layers_int8:  # profiles without per-layer times: the all-int8 sum
        dot_best = dot_int8
    total = default.total_s
    rest = min(total - dot_default, int8.total_s - dot_int8)
    bound = total / (dot_best + rest) if dot_best + rest > 0 else float("nan")
    return {
        "dot_default_ms": dot_default * 1e3,
        "dot_int8_ms": dot_int8 * 1e3,
        "dot_best_ms": dot_best * 1e3,
        "dot_share_of_default": dot_default / total if total else float("nan"),
        "int8_overhead_ms": (int8.total_s - dot_int8 - (total - dot_default)) * 1e3,
        "ceiling": bound,
        "headroom": int8.total_s / (dot_best + rest) if dot_best + rest > 0 else float("nan"),
    }


def _ceiling_text(c: dict[str, float]) -> str:
    return (
        f"convolutions take {c['dot_share_of_default']:.0%} of the default and ran "
        f"{c['dot_default_ms'] / c['dot_int8_ms']:.2f}x faster in int8 ({c['dot_default_ms']:.2f} -> "
        f"{c['dot_int8_ms']:.2f} ms; each at the lesser of its two times, {c['dot_best_ms']:.2f} ms); with "
        f"every other layer at the lesser of its two costs (int8 adds {c['int8_overhead_ms']:+.2f} ms there: "
        f"FakeQuantize, reorders, layers slower in int8) int8 could run at most about {c['ceiling']:.2f}x "
        "the default"
    )


def _row_line(net: str, row: dict[str, Any]) -> str:
    return (
        f"{net:<16} {row['row']:<18} {row['median_ms']:>9.2f} {row['vs_f32']:>6.2f}x "
        f"{row['vs_default']:>9.2f}x {row['fastest_vs_default']:>9.2f}x {row['paired_vs_default']:>8.2f}x "
        f"{row['pearson']:>8.4f}"
    )


def _summary(cpu: Any, args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cpu": {"model": cpu.model, "cores": cpu.cores, "features": list(cpu.features)},
        "rounds": args.rounds,
        "repeats": args.repeats,
        "networks": results,
    }


if __name__ == "__main__":
    main()
