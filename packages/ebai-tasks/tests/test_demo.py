"""`ebai demo --quick`: the README's first command, end to end on the CPU."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("matplotlib")

from click.testing import CliRunner

from ebai.core.cli import cli


@pytest.mark.slow
def test_demo_quick_writes_the_table_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("EBAI_PROGRESS", "0")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for row in ("PyTorch eager", "OpenVINO + NNCF", "pruned 50%"):
        assert row in result.output
    assert (out / "README.md").is_file()
    # the distillation's steps and wall time are quoted beside the pruning
    assert re.search(r"distillation \d+ steps in \d+\.\d min, Pearson", (out / "README.md").read_text())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 2
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run refuses to replace the report without --overwrite, and leaves it intact
    again = CliRunner().invoke(cli, ["demo", "--quick", "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert (out / "README.md").is_file()
    rows = {r["key"]: r for r in json.loads((out / "results.json").read_text())["tables"][0]["rows"]}
    assert set(rows) == {"torch", "openvino-f32", "openvino-default", "openvino-int8", "openvino-pruned-int8"}
    # accuracy against the ground truth, not timing: compression must not cost the denoiser its job
    fp32 = rows["torch"]["accuracy"]
    assert fp32 >= 0.95
    assert abs(rows["openvino-f32"]["accuracy"] - fp32) < 1e-3
    assert abs(rows["openvino-int8"]["accuracy"] - fp32) < 0.01
    assert abs(rows["openvino-pruned-int8"]["accuracy"] - fp32) < 0.02
    assert rows["openvino-pruned-int8"]["parameters"] < rows["torch"]["parameters"] / 2
    assert rows["openvino-default"]["precision"].startswith("fp32 IR, runs ")


def _table(rows, settings):
    from ebai.tasks._table import TaskTable

    return TaskTable(
        task="t",
        title="T",
        metric="pearson",
        tile=(8, 8),
        volume=(16, 16),
        rows=rows,
        energy_label="estimated",
        energy_source="test",
        settings=settings,
        machine={},
    )


def test_table_ratios_and_format():
    from ebai.tasks._report import format_table
    from ebai.tasks._table import Row

    def row(key, latency, energy, device="CPU"):
        return Row(key, key, device, "fp32", latency, latency, energy, 0.9, 1.0, 1.0, 10)

    table = _table(
        [
            row("torch", 0.4, 8.0),
            row("openvino-f32", 0.2, 4.0),
            row("openvino-default", 0.1, 2.0),
            row("openvino-int8", 0.05, 1.0),
            row("tensorrt-int8", 0.01, 0.5, "GPU"),
        ],
        {"rounds": 3},
    )
    int8 = table.row("openvino-int8")
    assert table.speedup(int8, "torch") == pytest.approx(8.0)
    assert table.speedup(int8, "openvino-f32") == pytest.approx(4.0)
    assert table.energy_saving(int8, "openvino-default") == pytest.approx(2.0)
    gpu = table.row("tensorrt-int8")
    assert table.speedup(gpu, "openvino-f32") is None  # GPU rows are not compared with CPU engines
    text = format_table(table)
    assert "energy/tile (estimated)" in text and "8.0x" in text and "4.0x" in text
    assert len(text.splitlines()) == 2 + len(table.rows)


def test_table_speedups_are_paired_round_by_round_when_rows_kept_their_rounds():
    import dataclasses

    from ebai.tasks._table import Row

    def row(key, rounds):
        median = sorted(rounds)[len(rounds) // 2]
        return Row(key, key, "CPU", "fp32", median, median, None, 0.9, 1.0, 1.0, round_latency_s=tuple(rounds))

    # the machine ran 3x slower in rounds 2-3 while the default's median landed there: medians say
    # 6x, each round says 2x
    default = row("openvino-default", [0.1, 0.3, 0.3])
    int8 = dataclasses.replace(row("openvino-int8", [0.05, 0.15, 0.15]), latency_s=0.05)
    table = _table([default, int8, row("openvino-f32", [0.2])], {"rounds": 3})
    assert table.speedup(int8, "openvino-default") == pytest.approx(2.0)
    assert default.latency_s / int8.latency_s == pytest.approx(6.0)
    # rows without the same rounds (older tables) fall back to the ratio of medians
    assert table.speedup(int8, "openvino-f32") == pytest.approx(0.2 / 0.05)
    assert table.to_dict()["rows"][1]["round_latency_s"] == (0.05, 0.15, 0.15)


def test_quick_mode_never_distils_below_what_a_task_needs():
    from ebai.tasks import get_task
    from ebai.tasks._settings import BenchSettings, distill_steps

    quick, full = BenchSettings.quick(), BenchSettings.full()
    assert distill_steps(get_task("denoising"), quick) == quick.distill_steps < full.distill_steps
    for name in ("nuclei", "labelfree", "semantic"):
        task = get_task(name)
        assert distill_steps(task, quick) == task.min_distill_steps > quick.distill_steps
        assert distill_steps(task, full) >= full.distill_steps


def test_energies_within_each_others_spread_are_marked():
    from ebai.tasks._report import energy_note, format_table
    from ebai.tasks._table import Row

    def row(key, energy, low, high, same=""):
        return Row(key, key, "CPU", "fp32", 0.1, 0.1, energy, 0.9, 1.0, 1.0, 10, low, high, same)

    table = _table(
        [row("openvino-f32", 0.35, 0.32, 0.62, "A"), row("openvino-default", 0.59, 0.30, 0.70, "A")],
        {"energy_rounds": 3, "energy_seconds": 2.0},
    )
    text = format_table(table)
    assert "0.35 J +-0.15 ~A" in text and "0.59 J +-0.20 ~A" in text
    note = energy_note(table)
    assert "median of 3 interleaved windows" in note
    assert "~A: 'openvino-f32' and 'openvino-default' lie within each other's spread" in note


def test_the_report_distils_in_rounds_within_a_time_budget_and_quick_mode_cuts_at_once():
    pytest.importorskip("ebai.compress")
    from ebai.tasks import get_task
    from ebai.tasks._settings import BenchSettings
    from ebai.tasks._variants import recipe

    task = get_task("semantic")
    full = recipe(task, BenchSettings.full(), pruned=True, targets={"openvino": "int8"})
    assert full.prune.rounds == 5 and full.fine_tune.steps == 4000 and full.fine_tune.budget_minutes == 9.0
    assert full.fine_tune.schedule == "cosine" and full.fine_tune.crop == task.plan.crop == (16, 48, 48)
    assert full.prune.spare == 0.2  # the worst trades kept whole, measured on the int8 target
    quick = recipe(task, BenchSettings.quick(), pruned=True, targets={"openvino": "int8"})
    assert quick.prune.rounds == 1 and quick.fine_tune.budget_minutes is None and quick.fine_tune.schedule == "constant"
    assert quick.prune.spare == 0.0
    assert quick.fine_tune.crop is None
    assert quick.fine_tune.steps == task.min_distill_steps
    unpruned = recipe(task, BenchSettings.full(), pruned=False, targets={"openvino": "int8"})
    assert not unpruned.prune.enabled and unpruned.fine_tune.steps == 0


def test_the_report_names_the_layers_kept_whole_and_the_time_given_up():
    from dataclasses import replace

    from ebai.tasks._report import _notes
    from ebai.tasks._variants import _short_pruning

    pruning = {
        "method": "l1",
        "ratio": 0.5,
        "mac_reduction": 1.6,
        "sparing": {
            "share": 0.2,
            "spared": ["body.convs.1.0", "body.down.0"],
            "given_up_ms": 0.48,
            "saved_ms": 2.53,
            "backend": "openvino",
            "precision": "int8",
            "layers": [{"layer": "body.convs.1.0"}],
        },
    }
    short = _short_pruning(pruning)
    assert "layers" not in short["sparing"]  # the per-layer measurements stay in the artifact
    table = replace(_table([], {"rounds": 3}), compression={"pruned-int8": {"pruning": short, "fine_tuning": {}}})
    line = next(n for n in _notes(table) if n.startswith("- Pruning:"))
    assert "layers kept whole (prune.spare 0.2): body.convs.1.0, body.down.0, giving up 0.48 of 2.53 ms" in line
    assert "measured on openvino int8" in line
