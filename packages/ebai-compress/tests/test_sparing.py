"""``prune.spare``: layers whose cut costs the most fidelity per second saved are kept whole."""

from __future__ import annotations

from pathlib import Path

import compress_nets as nets
import numpy as np
import pytest
import torch
from compress_backends import OrtBackend

from ebai.adapters import TorchAdapter
from ebai.compress import PruneSettings, Recipe, compress
from ebai.compress._pruning import count_macs_and_params, prunable_layers, prune
from ebai.compress._sparing import LayerCost, choose_spared, resolved, spare_layers
from ebai.core.data import ArraySource
from ebai.core.errors import InputError
from ebai.core.metrics import pearson

SHAPE = (1, 1, 8, 16, 16)


def cost(name, loss, saved_ms):
    return LayerCost(name, 1.0 - loss, loss, saved_ms * 1e-3)


def test_the_worst_trade_is_spared_first_within_the_share_of_the_savings():
    costs = [
        cost("a", loss=0.8, saved_ms=0.5),  # 1.6 per ms
        cost("b", loss=0.2, saved_ms=2.0),  # 0.1 per ms
        cost("c", loss=0.3, saved_ms=0.3),  # 1.0 per ms
        cost("d", loss=0.0, saved_ms=0.1),  # costs nothing: never spared
        cost("e", loss=0.1, saved_ms=-0.05),  # saves nothing: spared first, for free
        cost("f", loss=0.5, saved_ms=1.0),  # 0.5 per ms, over what is left of the budget
    ]
    # savings 3.9 ms in all; 0.3 of them is 1.17 ms: e (0), a (0.5), c (0.3) fit, f (1.0) does not
    assert choose_spared(costs, 0.3) == ("e", "a", "c")
    assert choose_spared(costs, 0.0) == ("e",)
    # with room for everything, every layer that loses fidelity is spared, and the free one is not
    assert set(choose_spared(costs, 0.99)) == {"a", "b", "c", "e", "f"}


def test_a_cheaper_layer_after_an_unaffordable_one_is_still_spared():
    costs = [cost("big", loss=0.9, saved_ms=3.0), cost("small", loss=0.1, saved_ms=0.2), cost("rest", 0.01, 6.8)]
    assert choose_spared(costs, 0.1) == ("small",)


def test_every_layer_is_probed_alone_and_timed_by_the_given_clock():
    model = nets.unet3d()
    example = torch.randn(SHAPE)
    tiles = [np.random.default_rng(i).standard_normal(SHAPE[1:]).astype(np.float32) for i in range(3)]
    with torch.no_grad():
        reference = model(torch.from_numpy(np.stack(tiles))).numpy()
    timed = []

    def macs_as_time(models):  # a deterministic clock: one MAC per picosecond
        timed.append(list(models))
        return {name: count_macs_and_params(m, example)[0] * 1e-12 for name, m in models.items()}

    settings = PruneSettings(method="l1", ratio=0.5, keep=("enc1",), spare=0.25)
    sparing = spare_layers(
        model, example, settings, tiles, reference, pearson, macs_as_time,
        metric_name="pearson", backend="clock", precision="fp32",
    )  # fmt: skip
    names = [c.name for c in sparing.costs]
    # every convolution outside the kept block and the output layer, in network order, all timed in one call
    assert names == [n for n in prunable_layers(model, ("enc1",)) if n != "head"]
    assert len(timed) == 1 and timed[0] == ["(unpruned)", *names]
    macs = count_macs_and_params(model, example)[0]
    assert sparing.whole_s == pytest.approx(macs * 1e-12)
    for c in sparing.costs:  # each saving is that of cutting the layer alone
        alone = prune(
            model,
            example,
            PruneSettings(method="l1", ratio=0.5, keep=tuple(n for n in names if n != c.name) + ("enc1",)),
        )
        assert c.saved_s == pytest.approx((macs - alone.macs_after) * 1e-12)
        assert c.saved_s > 0 and 0 <= c.loss <= 2 and c.loss == pytest.approx(1.0 - c.fidelity, abs=1e-6)
    assert sparing.spared == choose_spared(sparing.costs, 0.25) and sparing.spared
    assert sparing.given_up_s <= 0.25 * sparing.saved_s + 1e-15
    record = sparing.to_dict()
    assert record["spared"] == list(sparing.spared) and len(record["layers"]) == len(names)
    assert record["backend"] == "clock" and record["share"] == 0.25


def test_savings_within_the_timing_noise_spare_nothing():
    # 14 layers saving 0.1 ms of 15 ms in all, as on the denoising network: no saving can be told from noise
    noisy = [cost(f"l{i}", loss=0.3, saved_ms=0.1 / 14 if i % 2 else -0.01) for i in range(14)]
    assert not resolved(noisy, 15e-3) and resolved(noisy, 1e-3)
    model = nets.unet3d()
    example = torch.randn(SHAPE)
    tiles = [np.random.default_rng(i).standard_normal(SHAPE[1:]).astype(np.float32) for i in range(2)]
    with torch.no_grad():
        reference = model(torch.from_numpy(np.stack(tiles))).numpy()
    sparing = spare_layers(
        model, example, PruneSettings(method="l1", ratio=0.5, spare=0.5), tiles, reference, pearson,
        lambda models: dict.fromkeys(models, 1e-3),  # every cut as fast as the whole network
        metric_name="pearson", backend="clock", precision="fp32",
    )  # fmt: skip
    assert sparing.spared == () and sparing.to_dict()["resolved"] is False
    assert all(c.loss > 0 for c in sparing.costs)  # every layer would have been "free" to keep


TILE = (32, 32)


def test_compress_spares_layers_timed_on_the_target_and_records_them(tmp_path, images2d):
    plan = Recipe.from_dict(
        {
            "targets": ["ort"],
            "prune": {"method": "l1", "ratio": 0.5, "spare": 0.3},
            "fine_tune": {"steps": 2, "eval_every": 1},
            "calibration": {"samples": 4},
            "export": {"exporter": "torchscript"},
            "fidelity": {"tiles": 4, "threshold": -1.0},
            "timing": {"rounds": 2, "warmup": 1},
        }
    )
    backend = OrtBackend()
    source = TorchAdapter(nets.unet3d(ch=(8, 16, 32)).eval(), axes="bczyx", channels=1, tile=(8, 16, 16))
    images = [np.random.default_rng(i).standard_normal((1, 12, 24, 24)).astype(np.float32) for i in range(5)]
    art = compress(source, ArraySource(images), plan, tmp_path / "s.ebai", backends={"ort": backend})
    pruning = art.manifest.pruning
    sparing = pruning["sparing"]
    assert sparing["backend"] == "ort" and sparing["precision"] == "fp32" and sparing["metric"] == "pearson"
    probed = [layer["layer"] for layer in sparing["layers"]]
    assert probed == [n for n in prunable_layers(source.load_module(), ()) if n != "head"]
    # the spared layers are kept whole, the others cut
    for name in sparing["spared"]:
        assert name in pruning["kept"] and pruning["channels"][name][0] == pruning["channels"][name][1]
    assert any(pruning["channels"][n][1] < pruning["channels"][n][0] for n in probed if n not in sparing["spared"])
    # every probe was lowered by the target's backend, in scratch folders that are gone
    probes = [e["dir"] for e in backend.lowered if e["dir"].name.startswith("probe")]
    assert len(probes) == len(probed) + 1 and not any(Path(d).exists() for d in probes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ebai"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"method": "l1", "spare": 1.0}, r"prune.spare must be a share of the time saving in \[0, 1\), got 1.0"),
        ({"method": "l1", "spare": -0.1}, "prune.spare must be a share"),
        ({"method": "l1", "spare": "some"}, "prune.spare must be a share"),
        ({"method": "l1", "spare": True}, "prune.spare must be a share"),
        ({"method": "none", "spare": 0.2}, "prune.spare needs a pruning ratio"),
        ({"method": "auto", "spare": 0.2}, "prune.spare needs a fixed ratio"),
    ],
    ids=["one", "negative", "text", "bool", "no-pruning", "auto"],
)
def test_bad_spare_is_one_line(changes, match):
    with pytest.raises(InputError, match=match) as info:
        PruneSettings(**changes)
    assert "\n" not in str(info.value)
