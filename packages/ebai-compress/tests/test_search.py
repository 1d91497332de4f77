"""``prune.method: auto``: the largest pruning ratio whose distilled network keeps the fidelity asked for."""

from __future__ import annotations

import compress_nets as nets
import pytest
from compress_backends import OrtBackend

from ebai.adapters import TorchAdapter
from ebai.compress import Recipe, compress
from ebai.compress.cli import parse_prune
from ebai.core import Artifact
from ebai.core.data import ArraySource
from ebai.core.errors import FidelityError, InputError
from ebai.core.search_curve import curve_lines, plot_curve

pytest.importorskip("onnxruntime")

TILE = (32, 32)
AUTO = {
    "targets": ["ort"],
    "prune": {"method": "auto"},
    "search": {"low": 0.25, "high": 0.75, "step": 0.25, "margin": 0.01},
    "fine_tune": {"steps": 4, "eval_every": 2},
    "calibration": {"samples": 4},
    "export": {"exporter": "torchscript"},
    "fidelity": {"tiles": 4},
    "timing": {"rounds": 2, "warmup": 1},
}


def source():
    return TorchAdapter(nets.resunet2d(ch=(8, 16, 32)), axes="bcyx", channels=1, tile=TILE)


def test_search_keeps_the_largest_passing_ratio_and_records_the_curve(tmp_path, images2d):
    # 0.25 keeps this small net's Pearson near 0.9 and 0.75 far below: a target between them
    plan = Recipe.from_dict({**AUTO, "fidelity": {"tiles": 4, "threshold": 0.6}})
    out = tmp_path / "auto.ebai"
    compress(source(), ArraySource(images2d), plan, out, backends={"ort": OrtBackend()})
    m = Artifact.open(out).manifest
    search = m.pruning["search"]
    probes = search["probes"]
    assert search["target"] == 0.6 and [p["method"] for p in probes] == ["l1"] * len(probes)
    assert probes[0]["ratio"] == 0.5 and 1 <= len(probes) <= 2  # bisection: the middle of the grid first
    passing = [p["ratio"] for p in probes if p["passed"]]
    failing = [p["ratio"] for p in probes if not p["passed"]]
    assert passing and m.pruning["ratio"] == max(passing) == search["chosen"]["ratio"]
    assert all(f > m.pruning["ratio"] for f in failing)  # nothing larger passed
    # a probe passes with the margin above the target, and only when it cuts more MACs than a smaller ratio did
    assert all(p["pearson"] >= 0.61 and not p["degenerate"] for p in probes if p["passed"])
    assert all(p["pearson"] < 0.61 or p["degenerate"] for p in probes if not p["passed"])
    assert m.fine_tuning["method"] == "distill" and m.targets[0].fidelity.passed
    assert all(p["mac_reduction"] > 1 and p["seconds"] >= 0 for p in probes)
    # the recorded curve is what `ebai info` prints and plots
    assert search["metric"] == "pearson"
    lines = curve_lines(search)
    assert len(lines) == 2 + len(probes) and sum("<- chosen" in line for line in lines) == 1
    png = plot_curve(search, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_probe_is_cut_in_the_rounds_asked_for(tmp_path, images2d):
    plan = Recipe.from_dict(
        {
            **AUTO,
            "prune": {"method": "auto", "rounds": 2},
            "search": {"low": 0.5, "high": 0.5, "step": 0.25, "margin": 0.0},
            "fidelity": {"tiles": 4, "threshold": -1.0},
        }
    )
    compress(source(), ArraySource(images2d), plan, tmp_path / "r.ebai", backends={"ort": OrtBackend()})
    m = Artifact.open(tmp_path / "r.ebai").manifest
    (probe,) = m.pruning["search"]["probes"]
    # the probe, and so the network kept, was cut in two rounds with half the steps after each
    assert m.pruning["rounds"] == 2 and [r["left"] for r in m.pruning["per_round"]] == [0.75, 0.5]
    assert [r["steps"] <= 2 for r in m.fine_tuning["rounds"]] == [True, True]
    assert probe["steps"] == m.fine_tuning["steps"] and probe["mac_reduction"] == m.pruning["mac_reduction"]


def test_a_target_no_ratio_meets_is_one_line_with_the_best_reached(tmp_path, images2d):
    plan = Recipe.from_dict({**AUTO, "fidelity": {"tiles": 4, "threshold": 0.99999}})
    with pytest.raises(FidelityError) as err:
        compress(source(), ArraySource(images2d), plan, tmp_path / "m.ebai", backends={"ort": OrtBackend()})
    msg = str(err.value)
    assert (
        "\n" not in msg
        and "no pruning ratio from 0.25 to 0.75 (l1) reaches pearson 0.99999 + margin 0.01 against" in msg
    )
    assert "the best was l1 at ratio 0.25: pearson 0." in msg and "nothing was written" in msg
    assert list(tmp_path.iterdir()) == []


def test_search_settings_and_the_command_line_spelling():
    assert parse_prune("auto") == {"method": "auto"}
    assert parse_prune("auto:l1,FPGM") == {"method": "auto", "search_methods": ["l1", "fpgm"]}
    recipe = Recipe.from_dict({"prune": {"method": "auto"}, "search": {"methods": ["l2"], "budget_minutes": 5}})
    assert recipe.prune.enabled and recipe.search.methods == ("l2",) and recipe.search.budget_minutes == 5
    with pytest.raises(InputError, match="unknown search method 'none'"):
        Recipe.from_dict({"search": {"methods": ["none"]}})
    with pytest.raises(InputError, match="search.margin must be in \\[0, 1\\), got -0.1"):
        Recipe.from_dict({"search": {"margin": -0.1}})
    with pytest.raises(InputError, match="search.high 0.2 is below search.low 0.5"):
        Recipe.from_dict({"search": {"low": 0.5, "high": 0.2}})
