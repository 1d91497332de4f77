"""The measured run choice: its search, its cache keys and where the cache lives."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ebai.core.specs import InputSpec
from ebai.torch import ChoiceStore, DeviceIdentity, RunConfig, TorchBackend, choice_key
from ebai.torch._choice import CHOICE_FORMAT, GRAPH_MAX_BATCH, search

SPEC = InputSpec(axes="bcyx", channels=1, tile=(32, 32))
IDENTITY = DeviceIdentity("NVIDIA H200", "9.0", "2.13.0+cu130", "13.0")
SETTINGS = {"precision": "fp16", "mode": "autocast", "batch": 8, "fixed": {}}


def test_every_field_the_choice_depends_on_changes_the_key():
    base = choice_key(IDENTITY, "a" * 64, SETTINGS)
    assert base == choice_key(IDENTITY, "a" * 64, dict(SETTINGS))  # stable
    changed = [
        choice_key(replace(IDENTITY, device_name="NVIDIA A100-SXM4-40GB"), "a" * 64, SETTINGS),
        choice_key(replace(IDENTITY, compute_capability="8.0"), "a" * 64, SETTINGS),
        choice_key(replace(IDENTITY, torch_version="2.14.0+cu130"), "a" * 64, SETTINGS),
        choice_key(replace(IDENTITY, cuda_version="12.8"), "a" * 64, SETTINGS),
        choice_key(IDENTITY, "b" * 64, SETTINGS),
        choice_key(IDENTITY, "a" * 64, {**SETTINGS, "precision": "bf16"}),
        choice_key(IDENTITY, "a" * 64, {**SETTINGS, "mode": "cast"}),
        choice_key(IDENTITY, "a" * 64, {**SETTINGS, "batch": 1}),
        choice_key(IDENTITY, "a" * 64, {**SETTINGS, "fixed": {"compile": False}}),
    ]
    assert len({base, *changed}) == len(changed) + 1
    name = ChoiceStore.file_name("torch-fp16", IDENTITY, base)
    assert name == f"torch-fp16__NVIDIA-H200_sm90_torch2.13.0-cu130_cuda13.0__{base[:16]}.json"


def _timer(table):
    """A stand-in for timing: seconds per configuration from a table (``None``: fails here)."""

    def seconds(config: RunConfig):
        key = (config.channels_last, config.cuda_graph, config.compile)
        return table.get(key, 1.0)

    return seconds


def test_search_keeps_what_pays_one_setting_at_a_time():
    base = RunConfig(precision="fp16", mode="autocast")
    table = {(False, False, False): 8.5, (True, False, False): 4.7, (True, True, False): 4.0, (True, True, True): 3.3}
    best, trials = search(base, {}, device_type="cuda", batch=8, can_compile=True, time_config=_timer(table))
    assert (best.channels_last, best.cuda_graph, best.compile) == (True, True, True)
    assert [t["seconds"] for t in trials] == [8.5, 4.7, 4.0, 3.3]
    # a slower candidate is dropped, a failing one skipped
    table = {
        (False, False, False): 2.0,
        (True, False, False): 3.0,
        (False, True, False): None,
        (False, False, True): 1.5,
    }
    best, trials = search(base, {}, device_type="cuda", batch=1, can_compile=True, time_config=_timer(table))
    assert (best.channels_last, best.cuda_graph, best.compile) == (False, False, True)
    assert len(trials) == 4


def test_search_respects_the_device_batch_and_fixed_settings():
    base = RunConfig()
    _, trials = search(base, {}, device_type="cpu", batch=1, can_compile=True, time_config=_timer({}))
    assert len(trials) == 2  # CPU: layout only (no CUDA graphs, compile not tried)
    _, trials = search(
        base, {}, device_type="cuda", batch=GRAPH_MAX_BATCH + 1, can_compile=False, time_config=_timer({})
    )
    assert not any(t["cuda_graph"] for t in trials)  # graphs only for small batches
    best, trials = search(
        base,
        {"channels_last": True, "compile": False},
        device_type="cuda",
        batch=2,
        can_compile=True,
        time_config=_timer({}),
    )
    assert best.channels_last and not best.compile
    assert all(t["channels_last"] and not t["compile"] for t in trials)


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)
    ).eval()
    target = tmp_path_factory.mktemp("art") / "model.ebai" / "torch-fp32"
    return target, TorchBackend().lower_module(net, target, precision="fp32", input_spec=SPEC, calibration=[])


def _choice_files(root):
    return sorted((root / "cache" / "torch").glob("*.json"))


def test_choice_is_measured_once_then_read_from_the_artifact_cache(lowered, tmp_path, user_cache):
    import shutil

    target = tmp_path / "model.ebai" / "torch-fp32"
    shutil.copytree(lowered[0], target)
    lowering = lowered[1]
    with TorchBackend().load(target, lowering, device="cpu", batch=2) as first:
        assert first.choice_info["source"] == "measured" and len(first.choice_info["trials"]) == 2
    (path,) = _choice_files(target.parent)
    record = json.loads(path.read_text())
    assert record["format"] == CHOICE_FORMAT and record["program_sha256"] == lowering.record["program_sha256"]
    assert record["device"]["torch_version"] == torch.__version__ and record["batch"] == 2
    with TorchBackend().load(target, lowering, device="cpu", batch=2) as second:
        assert second.choice_info["source"] == "cache" and second.config == first.config
    with TorchBackend().load(target, lowering, device="cpu", batch=3) as other:
        assert other.choice_info["source"] == "measured"  # another batch size is another key
    assert len(_choice_files(target.parent)) == 2
    assert not user_cache.exists()


def test_foreign_or_damaged_choices_are_measured_again(lowered, tmp_path, user_cache, caplog):
    import logging
    import shutil

    # the ebai logger's own level, so a root level left high by an earlier test cannot drop the warning
    caplog.set_level(logging.WARNING, logger="ebai")

    target = tmp_path / "model.ebai" / "torch-fp32"
    shutil.copytree(lowered[0], target)
    TorchBackend().load(target, lowered[1], device="cpu", batch=1).close()
    (path,) = _choice_files(target.parent)
    record = json.loads(path.read_text())
    record["device"]["torch_version"] = "1.0"
    path.write_text(json.dumps(record))
    with TorchBackend().load(target, lowered[1], device="cpu", batch=1) as engine:
        assert engine.choice_info["source"] == "measured"
    assert "device differ" in caplog.text
    path.write_text("{not json")
    with TorchBackend().load(target, lowered[1], device="cpu", batch=1) as engine:
        assert engine.choice_info["source"] == "measured"


def test_unwritable_artifact_cache_falls_back_to_the_user_cache(lowered, tmp_path, user_cache):
    import shutil

    target = tmp_path / "model.ebai" / "torch-fp32"
    shutil.copytree(lowered[0], target)
    (target.parent / "cache").write_text("not a folder")
    with TorchBackend().load(target, lowered[1], device="cpu") as engine:
        assert engine.choice_info["cache_file"].startswith(str(user_cache / "torch"))
    with TorchBackend().load(target, lowered[1], device="cpu") as engine:
        assert engine.choice_info["source"] == "cache"


def test_fixed_settings_and_tune_off(lowered, user_cache):
    target, lowering = lowered
    with TorchBackend().load(target, lowering, device="cpu", tune=False, channels_last=True) as engine:
        assert engine.choice_info["source"] == "given" and engine.config.channels_last
        assert engine.execution_precision == "fp32, channels-last (cpu)"
        x = torch.randn(2, 1, 32, 32).numpy()
        assert engine.infer(x).shape == (2, 1, 32, 32)
    engine.close()
    from ebai.core.errors import InputError

    with pytest.raises(InputError, match="was closed"):
        engine.infer(x)
