from __future__ import annotations

import pytest

from ebai.compress import FineTuneSettings, PruneSettings, Recipe
from ebai.core.errors import InputError

YAML = """
prune:
  method: fpgm
  ratio: 0.4
  keep: [head]
  layer_ratios: {"enc1.*": 0.25}
fine_tune:
  steps: 50
  loss: l1
targets: [openvino, tensorrt]
precision: {openvino: int8, tensorrt: fp16}
calibration:
  samples: 16
fidelity:
  metric: pearson
  threshold: 0.97
  held_out: 3
"""

TOML = """
targets = ["openvino"]
precision = "int8"
[prune]
method = "l2"
ratio = 0.3
[fidelity]
threshold = 0.9
"""


def test_defaults_are_valid():
    r = Recipe()
    assert r.prune.round_to == 8 and r.timing.rounds >= 1
    assert r.targets == ("openvino",) and r.precision_for("openvino") == "fp32"
    assert Recipe.from_dict(r.to_dict()) == r


def test_nothing_is_pruned_unless_asked():
    assert not Recipe().prune.enabled and not Recipe(precision="int8").prune.enabled
    assert not Recipe.from_dict({"precision": "int8", "fine_tune": {"steps": 10}}).prune.enabled
    # naming a method or a ratio asks for pruning; the other takes its default
    assert (PruneSettings(method="fpgm").method, PruneSettings(method="fpgm").ratio) == ("fpgm", 0.5)
    assert (PruneSettings(ratio=0.3).method, PruneSettings(ratio=0.3).ratio) == ("l1", 0.3)
    assert Recipe.from_dict({"prune": {"ratio": 0.3}}).prune.method == "l1"


def test_guard_threshold_follows_what_was_done():
    auto = Recipe().fidelity
    assert auto.threshold is None
    assert auto.threshold_for(changed=True, fp32_value=0.97) == 0.95  # pruned or fine-tuned: as before
    assert auto.threshold_for(changed=False, fp32_value=1.0) == 0.99  # int8 alone: its own standard
    task = Recipe.from_dict({"fidelity": {"metric": "ap50"}}).fidelity
    assert task.threshold_for(changed=False, fp32_value=0.93) == pytest.approx(0.925)
    given = Recipe.from_dict({"fidelity": {"threshold": 0.9}}).fidelity
    assert (
        given.threshold_for(changed=False, fp32_value=1.0) == given.threshold_for(changed=True, fp32_value=1.0) == 0.9
    )


def test_timing_rounds_are_checked():
    assert Recipe.from_dict({"timing": {"rounds": 3}}).timing.rounds == 3
    with pytest.raises(InputError, match="timing.rounds must be at least 1, got 0"):
        Recipe.from_dict({"timing": {"rounds": 0}})


def test_yaml_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(YAML)
    r = Recipe.from_file(path)
    assert r.prune == PruneSettings(method="fpgm", ratio=0.4, keep=("head",), layer_ratios={"enc1.*": 0.25})
    assert r.fine_tune.steps == 50 and r.fine_tune.loss == "l1"
    assert r.precision_for("openvino") == "int8" and r.precision_for("tensorrt") == "fp16"
    assert r.calibration.samples == 16 and r.fidelity.held_out == 3 and r.fidelity.threshold == 0.97
    assert Recipe.from_dict(r.to_dict()) == r


def test_toml_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TOML)
    r = Recipe.from_file(path)
    assert (r.prune.method, r.prune.ratio, r.precision, r.fidelity.threshold) == ("l2", 0.3, "int8", 0.9)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"prnue": {}}, "'prnue'"),
        ({"prune": {"ratoi": 0.5}}, "'prune.ratoi'"),
        ({"fidelity": {"treshold": 0.9}}, "'fidelity.treshold'"),
    ],
)
def test_unknown_key_is_named(data, key):
    with pytest.raises(InputError) as err:
        Recipe.from_dict(data)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("fine_tune:\n  stpes: 3\n")
    with pytest.raises(InputError, match=r"r\.yaml.*'fine_tune\.stpes'"):
        Recipe.from_file(path)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, "half"])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(InputError, match="outside \\(0, 1\\)"):
        Recipe.from_dict({"prune": {"ratio": ratio}})


def test_unknown_method_and_precision():
    with pytest.raises(InputError, match="unknown pruning method 'l3'"):
        PruneSettings(method="l3")
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        Recipe(precision="int4")
    with pytest.raises(InputError, match="not a target"):
        Recipe(targets=("openvino",), precision={"tensorrt": "fp16"})


def test_fine_tune_callback_forms():
    assert FineTuneSettings(method="my_pkg.tune:run").enabled
    assert FineTuneSettings(method=lambda m, d: m).enabled
    assert not FineTuneSettings(steps=0).enabled
    with pytest.raises(InputError, match="unknown fine-tuning method"):
        FineTuneSettings(method="train")


def test_updated_merges_sections():
    r = Recipe().updated({"prune": {"ratio": 0.3}, "targets": ["tensorrt"], "precision": "fp16"})
    assert r.prune.ratio == 0.3 and r.prune.method == "l1" and r.targets == ("tensorrt",)
    assert r.describe()["prune"]["ratio"] == 0.3


def test_pruning_details_without_a_ratio_do_not_turn_pruning_on():
    # only a ratio (or a method) asks for pruning; rounds alone leave an unpruned recipe unpruned
    assert not Recipe().updated({"prune": {"rounds": 3}}).prune.enabled
    with pytest.raises(InputError, match="prune.spare needs a pruning ratio"):
        Recipe().updated({"prune": {"spare": 0.2}})
    assert Recipe().updated({"prune": {"ratio": 0.4, "spare": 0.2}}).prune.spare == 0.2


def test_unparsable_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("prune = [\n")
    with pytest.raises(InputError, match="cannot be parsed"):
        Recipe.from_file(path)


def test_unparsable_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prune: [\n")
    with pytest.raises(InputError, match=r"is not valid YAML \(.* at line 2, column 1\)") as err:
        Recipe.from_file(path)
    assert "\n" not in str(err.value)
