from __future__ import annotations

import re

import compress_nets as nets
import numpy as np
import pytest
from compress_backends import OrtBackend

from ebai.adapters import TorchAdapter
from ebai.compress import Recipe, compress
from ebai.compress._samples import split_samples
from ebai.core import Artifact
from ebai.core.data import ArraySource
from ebai.core.errors import FidelityError, InputError, OutputExistsError, PluginNotFoundError
from ebai.core.metrics import dice

pytest.importorskip("onnxruntime")

TILE = (32, 32)
BASE = {
    "targets": ["ort"],
    "prune": {"method": "l1"},
    "fine_tune": {"steps": 6, "eval_every": 3},
    "calibration": {"samples": 4},
    "fidelity": {"threshold": 0.5, "tiles": 4},
}
# the guard tests need no pruning; the TorchScript exporter is the quicker of the two supported ones
UNPRUNED = {
    **BASE,
    "prune": {"method": "none"},
    "export": {"exporter": "torchscript"},
    "fidelity": {"threshold": 0.99, "tiles": 4},
    "timing": {"rounds": 3, "warmup": 1},
}
# int8 alone, with every guard setting left to its default
INT8 = {
    "targets": ["ort"],
    "precision": "int8",
    "calibration": {"samples": 4},
    "export": {"exporter": "torchscript"},
    "fidelity": {"tiles": 4},
    "timing": {"rounds": 3, "warmup": 1},
}


def source(model=None):
    return TorchAdapter(model if model is not None else nets.resunet2d(), axes="bcyx", channels=1, tile=TILE)


def small_source():
    return TorchAdapter(nets.resunet2d(ch=(8, 16, 32)), axes="bcyx", channels=1, tile=TILE)


def recipe(base, **changes):
    return Recipe.from_dict(base).updated(changes)


def assert_nothing_written(folder):
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def test_compress_prunes_distills_lowers_and_verifies(tmp_path, images2d):
    backend = OrtBackend()
    out = tmp_path / "denoiser.ebai"
    art = compress(source(), ArraySource(images2d), recipe(BASE), out, backends={"ort": backend})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser.ebai"]  # no temporary folders left
    assert sorted(art.manifest.files) == ["ort-fp32/model.onnx", "reference.onnx"]
    reopened = Artifact.open(out)  # every hash checks out
    m = reopened.manifest
    assert m.name == "denoiser" and m.reference == "reference.onnx"
    assert m.source == source().describe()
    assert m.pruning["method"] == "l1" and m.pruning["macs_before"] / m.pruning["macs_after"] >= 2.5
    assert m.fine_tuning["method"] == "distill" and m.fine_tuning["steps"] <= 6
    assert m.fine_tuning["pearson_after"] >= m.fine_tuning["pearson_before"]
    (target,) = m.targets
    assert (target.key, target.directory) == ("ort:fp32", "ort-fp32")
    fid = target.fidelity
    assert fid.passed and fid.metric == "pearson" and fid.samples == 4 and fid.max_abs_error >= 0
    # where the loss came from: pruning (reference vs original) and lowering (target vs reference)
    assert fid.pearson == pytest.approx(m.pruning["fidelity"]["pearson"], abs=1e-4)
    assert target.record["fidelity_vs_reference"]["pearson"] > 0.9999
    assert target.record["reference"]["max_rel_error_vs_torch"] <= 1e-4
    assert target.calibration["samples"] == 4 and len(target.calibration["held_out_images"]) == 2
    assert backend.lowered[0]["calibration"] == 4
    engine = backend.load(out / target.directory, target.lowering())
    assert engine.infer(np.zeros((3, 1, *TILE), np.float32)).shape == (3, 1, *TILE)
    # an existing artifact is only replaced on request
    with pytest.raises(OutputExistsError):
        compress(source(), ArraySource(images2d), recipe(UNPRUNED), out, backends={"ort": OrtBackend()})
    art2 = compress(
        source(), ArraySource(images2d), recipe(UNPRUNED), out, overwrite=True, backends={"ort": OrtBackend()}
    )
    assert art2.manifest.pruning is None and art2.manifest.targets[0].fidelity.pearson > 0.9999


def test_pruning_in_rounds_distils_after_each_cut(tmp_path, images2d):
    plan = recipe(BASE, prune={"method": "l1", "ratio": 0.5, "rounds": 2})
    art = compress(source(), ArraySource(images2d), plan, tmp_path / "r.ebai", backends={"ort": OrtBackend()})
    m = art.manifest
    # two cuts: three quarters of the channels left, then half
    assert m.pruning["rounds"] == 2 and [r["left"] for r in m.pruning["per_round"]] == [0.75, 0.5]
    one_cut = compress(
        source(), ArraySource(images2d), recipe(BASE, prune={"method": "l1", "ratio": 0.5}),
        tmp_path / "o.ebai", backends={"ort": OrtBackend()},
    ).manifest  # fmt: skip
    assert m.pruning["channels"] == one_cut.pruning["channels"]  # the same channel counts as one cut
    assert m.pruning["macs_before"] == one_cut.pruning["macs_before"]
    assert m.pruning["macs_after"] == m.pruning["per_round"][-1]["macs_after"] < m.pruning["macs_before"]
    # the step budget is shared: each round distils half of it, and the record sums them
    rounds = m.fine_tuning["rounds"]
    assert len(rounds) == 2 and all(r["steps"] <= 3 for r in rounds)
    assert m.fine_tuning["steps"] == sum(r["steps"] for r in rounds) and m.fine_tuning["budget"] == 6
    assert m.fine_tuning["pearson_before"] == rounds[0]["pearson_before"]
    assert m.fine_tuning["pearson_after"] == rounds[-1]["pearson_after"]


def test_distillation_trains_on_the_crop_asked_for(tmp_path, images2d):
    plan = recipe(BASE, fine_tune={"steps": 4, "eval_every": 2, "crop": "16,16"})
    art = compress(source(), ArraySource(images2d), plan, tmp_path / "c.ebai", backends={"ort": OrtBackend()})
    assert art.manifest.fine_tuning["crop"] == [16, 16] and art.manifest.fine_tuning["steps"] == 4
    # validation and the guard still run on whole tiles
    assert art.manifest.targets[0].fidelity.passed


@pytest.mark.parametrize(
    ("crop", "match"),
    [
        (
            "16,16,16",
            "fine_tune.crop 16,16,16 has 3 axes but the model's tile 32,32 has 2: give one size per spatial axis",
        ),
        ("12,20", "fine_tune.crop 12,20 does not fit this model, which takes only multiples of 8 per axis: e.g. 8,16"),
        ("16,-4", "fine_tune.crop must be positive sizes separated by commas, one per spatial axis"),
        ("a,b", "fine_tune.crop must be positive sizes"),
    ],
)
def test_a_crop_that_does_not_fit_is_one_line_before_any_work(tmp_path, images2d, crop, match):
    src = TorchAdapter(nets.resunet2d(), axes="bcyx", channels=1, tile=TILE, divisor=8)
    with pytest.raises(InputError, match=match) as err:
        plan = recipe(BASE, fine_tune={"crop": crop})
        compress(src, ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"ort": OrtBackend()})
    assert "\n" not in str(err.value)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("global_pruning", [False, True])
def test_rounds_end_at_the_channels_of_one_cut(global_pruning):
    """Each round names every layer's own count: equal ratios per round floored the counts round after
    round (a 32-channel layer of the label-free network ended at 8 of 32 after 5 rounds to 50%)."""
    import compress_nets
    import torch

    from ebai.compress import PruneSettings, prune
    from ebai.compress._rounds import round_cut

    net, example = compress_nets.unet3d(), torch.randn(1, 1, 8, 16, 16)
    settings = PruneSettings(method="l1", ratio=0.5, rounds=5, global_pruning=global_pruning)
    one = prune(net, example, PruneSettings(method="l1", ratio=0.5, global_pruning=global_pruning))
    targets = dict(one.channels)
    current = {n: before for n, (before, _) in targets.items()}
    model, seen = net, []
    for i in range(1, 6):
        result = prune(model, example, round_cut(settings, targets, current, i))
        model, current = result.model, {n: after for n, (_, after) in result.channels.items()}
        seen.append(current)
    assert current == {n: after for n, (_, after) in targets.items()}
    for name, (before, after) in targets.items():  # every layer gets there evenly, never below its end
        counts = [before] + [c[name] for c in seen]
        assert counts == sorted(counts, reverse=True) and min(counts) == after
        if before - after >= 5:
            assert all(a > b for a, b in zip(counts, counts[1:], strict=False)), (name, counts)


@pytest.mark.parametrize("rounds", [0, -1, 1.5, True])
def test_pruning_rounds_must_be_a_positive_whole_number(rounds):
    with pytest.raises(InputError, match="prune.rounds must be a whole number"):
        recipe(BASE, prune={"method": "l1", "rounds": rounds})


def test_guard_rejects_a_noisy_lowering_and_writes_nothing(tmp_path, images2d):
    backend = OrtBackend(noises=(0.5,))
    with pytest.raises(FidelityError) as err:
        compress(
            small_source(), ArraySource(images2d), recipe(UNPRUNED), tmp_path / "m.ebai", backends={"ort": backend}
        )
    msg = str(err.value)
    assert "ort fp32 reaches pearson 0." in msg and "below the threshold 0.99" in msg and "nothing was written" in msg
    assert len(backend.fallback_calls) == 1  # the accuracy-aware fallback was asked for, and had none
    assert "ort has no accuracy-aware fallback for fp32" in msg
    assert_nothing_written(tmp_path)


def test_best_variant_is_kept(tmp_path, images2d):
    backend = OrtBackend(noises=(0.5, 0.0, 0.2))
    art = compress(
        small_source(), ArraySource(images2d), recipe(UNPRUNED), tmp_path / "m.ebai", backends={"ort": backend}
    )
    (target,) = art.manifest.targets
    assert target.options == {"noise": 0.0}
    assert [v["options"]["noise"] for v in target.record["variants"]] == [0.5, 0.0, 0.2]
    assert sorted(art.manifest.files) == ["ort-fp32/model.onnx", "reference.onnx"]  # losers removed


def test_accuracy_aware_fallback_rescues_a_target(tmp_path, images2d):
    backend = OrtBackend(noises=(0.5,), fallback_noise=0.0)
    art = compress(
        small_source(), ArraySource(images2d), recipe(UNPRUNED), tmp_path / "m.ebai", backends={"ort": backend}
    )
    (target,) = art.manifest.targets
    assert target.record["accuracy_control"] is True and target.fidelity.passed
    (call,) = backend.fallback_calls
    assert call["max_drop"] == pytest.approx(0.01, abs=1e-6)  # the unpruned reference scores 1.0
    assert call["validation"] == 4 and call["score"] == pytest.approx(1.0)


def test_fallback_that_stays_below_threshold_fails(tmp_path, images2d):
    backend = OrtBackend(noises=(0.5,), fallback_noise=0.4)
    with pytest.raises(FidelityError, match="the accuracy-aware fallback reached 0\\.[0-9]+"):
        compress(
            small_source(), ArraySource(images2d), recipe(UNPRUNED), tmp_path / "m.ebai", backends={"ort": backend}
        )
    assert_nothing_written(tmp_path)


def test_pruned_reference_below_threshold_fails_before_lowering(tmp_path, images2d):
    backend = OrtBackend()
    plan = recipe(BASE, fine_tune={"steps": 0}, fidelity={"threshold": 0.999})
    with pytest.raises(FidelityError, match="the pruned fp32 network reaches pearson 0.[0-9]+ against the original"):
        compress(source(), ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"ort": backend})
    assert backend.lowered == []
    assert_nothing_written(tmp_path)


def test_ctrl_c_leaves_no_artifact_and_no_temporary_folder(tmp_path, images2d):
    with pytest.raises(KeyboardInterrupt):
        compress(
            small_source(),
            ArraySource(images2d),
            recipe(UNPRUNED),
            tmp_path / "m.ebai",
            backends={"ort": OrtBackend(interrupt=True)},
        )
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        ([np.zeros((1, 40, 40), np.float32)] * 2, "2 image\\(s\\) given but compression needs at least 3"),
        ([np.zeros((2, 40, 40), np.float32)] * 4, "2 channels but the model takes 1"),
        ([np.zeros((1, 8, 40, 40), np.float32)] * 4, "takes 2D images"),
    ],
    ids=["too-few", "channels", "dimensions"],
)
def test_bad_data_is_refused_before_any_work(tmp_path, images, match):
    with pytest.raises(InputError, match=match):
        compress(
            small_source(), ArraySource(images), recipe(UNPRUNED), tmp_path / "m.ebai", backends={"ort": OrtBackend()}
        )
    assert_nothing_written(tmp_path)


def test_target_whose_backend_is_not_installed(tmp_path, images2d):
    with pytest.raises(PluginNotFoundError, match="'nosuch'"):
        compress(small_source(), ArraySource(images2d), recipe(UNPRUNED, targets=["nosuch"]), tmp_path / "m.ebai")
    assert_nothing_written(tmp_path)


class MaskAdapter(TorchAdapter):
    """A segmentation-like adapter: outputs are thresholded into masks, scored by Dice."""

    def postprocess(self, output):
        return np.asarray(output)[0] > np.median(output)

    def evaluate(self, prediction, target):
        return {"dice": dice(prediction, target)}


def test_task_metric_decides_and_is_recorded(tmp_path, images2d):
    src = MaskAdapter(nets.resunet2d(), axes="bcyx", channels=1, tile=TILE)
    plan = recipe(UNPRUNED, fidelity={"metric": "dice", "threshold": 0.9, "tiles": 4})
    art = compress(src, ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"ort": OrtBackend(noises=(0.05,))})
    fid = art.manifest.targets[0].fidelity
    assert fid.metric == "dice" and fid.passed and 0.9 <= fid.metrics["dice"] < 1.0
    with pytest.raises(InputError, match="'ap50' is not measured for this model: use one of pearson, ssim, dice"):
        compress(
            src,
            ArraySource(images2d),
            recipe(UNPRUNED, fidelity={"metric": "ap50"}),
            tmp_path / "x.ebai",
            backends={"ort": OrtBackend()},
        )


def test_fine_tune_callback(tmp_path, images2d):
    calls = []

    def tune(model, data):
        calls.append(len(data))
        return model

    plan = recipe(BASE, fine_tune={"method": tune}, fidelity={"threshold": 0.0, "tiles": 4})
    art = compress(source(), ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"ort": OrtBackend()})
    assert calls == [3]  # the training images only: 5 given, 2 held out
    assert art.manifest.fine_tuning["method"] == "callback" and "tune" in art.manifest.fine_tuning["callback"]


def test_held_out_images_never_feed_calibration_or_training():
    images = [np.full((1, 40, 40), i, np.float32) for i in range(6)]  # each image's value is its index
    split = split_samples(images, tile=TILE, held_out=2, calibration=8, tiles=5, seed=3)
    held = set(split.held_out_indices)
    assert len(held) == 2 and set(split.train_indices) == set(range(6)) - held
    assert {int(t.flat[0]) for t in split.held_out_tiles} == held
    assert {int(t.flat[0]) for t in split.calibration} | {int(t.flat[0]) for t in split.validation} <= set(
        split.train_indices
    )
    assert all(t.shape == (1, *TILE) for t in split.calibration + split.held_out_tiles)


def test_int8_alone_neither_prunes_nor_distils_and_holds_int8s_standard(tmp_path, images2d):
    backend = OrtBackend(noises=(0.1,))  # output noise of 10%: Pearson about 0.995
    art = compress(
        small_source(), ArraySource(images2d), Recipe.from_dict(INT8), tmp_path / "m.ebai", backends={"ort": backend}
    )
    m = art.manifest
    assert m.pruning is None and m.fine_tuning is None
    (target,) = m.targets
    assert target.key == "ort:int8" and target.fidelity.passed
    assert target.fidelity.threshold == 0.99  # not the 0.95 a pruned network is held to


def test_int8_alone_is_refused_below_0_99_after_every_variant_and_accuracy_control(tmp_path, images2d):
    # Pearson about 0.96, 0.98 and 0.989: each would pass a pruned network's 0.95, none passes 0.99
    backend = OrtBackend(noises=(0.3, 0.2), fallback_noise=0.15)
    with pytest.raises(FidelityError) as err:
        compress(
            small_source(),
            ArraySource(images2d),
            Recipe.from_dict(INT8),
            tmp_path / "m.ebai",
            backends={"ort": backend},
        )
    msg = str(err.value)
    assert "below the threshold 0.99, the standard for a network only lowered" in msg, msg
    assert re.search(r"tried: noise=0\.3 0\.9\d{3}, noise=0\.2 0\.9\d{3}, accuracy control 0\.9\d{3}", msg), msg
    assert "the accuracy-aware fallback reached" in msg and len(backend.fallback_calls) == 1
    assert backend.fallback_calls[0]["max_drop"] == pytest.approx(0.01, abs=1e-6)
    assert_nothing_written(tmp_path)


def _int8_said(backend, images, out, caplog):
    """Compress to int8 with ``backend``; return the artifact and the "buys little" lines logged."""
    caplog.clear()
    with caplog.at_level("WARNING", logger="ebai"):
        art = compress(small_source(), ArraySource(images), Recipe.from_dict(INT8), out, backends={"ort": backend})
    return art, [r.getMessage() for r in caplog.records if "buys little" in r.getMessage()]


def test_each_target_is_timed_against_the_backends_default_precision(tmp_path, images2d, caplog):
    # the int8 engine does its work 8 times over: int8 that does not pay off
    backend = OrtBackend(repeat={"int8": 8})
    art, notes = _int8_said(backend, images2d, tmp_path / "m.ebai", caplog)
    (target,) = art.manifest.targets
    timing = target.timing
    assert timing.rounds == 3 and timing.default_precision == "fp32" and timing.batch_shape == (1, 1, *TILE)
    assert timing.median_s > 0 and timing.default_median_s > 0
    # paired round by round; eight times the work runs well under half the speed
    assert timing.speedup < 0.6 and "buys little" in timing.note and "ort:int8" in timing.note
    assert notes == [timing.note] and "\n" not in timing.note
    assert Artifact.open(tmp_path / "m.ebai").manifest.targets[0].timing == timing  # kept in manifest.json
    assert sorted(art.manifest.files) == ["ort-int8/model.onnx", "reference.onnx"]  # the default's files are gone
    assert [entry["options"] for entry in backend.lowered][-1] == {}  # the default: fp32, default options
    # when the default is the slow one, nothing is said
    art, notes = _int8_said(OrtBackend(repeat={"fp32": 8}), images2d, tmp_path / "n.ebai", caplog)
    assert art.manifest.targets[0].timing.speedup >= 1.2 and art.manifest.targets[0].timing.note == ""
    assert notes == []


def test_fastest_target_comes_first(tmp_path, images2d):
    slow = OrtBackend(name="slow", repeat={"fp32": 8})
    fast = OrtBackend(name="fast")
    plan = recipe(UNPRUNED, targets=["slow", "fast"])
    art = compress(
        small_source(), ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"slow": slow, "fast": fast}
    )
    assert [t.backend for t in art.manifest.targets] == ["fast", "slow"]
    assert art.manifest.target().backend == "fast"  # what `ebai run` picks when no target is named
    assert art.manifest.targets[0].timing.median_s < art.manifest.targets[1].timing.median_s


def test_openvino_int8_is_timed_against_openvinos_own_default(tmp_path, images2d):
    """OpenVINO's default is its engine without a precision hint, whatever that computes in here."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from ebai.openvino import OpenVINOBackend, OpenVINOEngine

    plan = Recipe.from_dict({**INT8, "targets": ["openvino"], "fidelity": {"threshold": 0.8, "tiles": 4}})
    art = compress(
        small_source(), ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"openvino": OpenVINOBackend()}
    )
    (target,) = art.manifest.targets
    assert [v["options"]["preset"] for v in target.record["variants"]] == ["mixed", "performance"]
    with OpenVINOEngine(art.path / target.directory / target.entry, precision="fp32") as plain:
        assert target.timing.default_precision == plain.execution_precision  # bf16 on CPUs that have it
    assert target.timing.rounds == 3 and target.timing.speedup > 0
