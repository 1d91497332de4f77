"""fp16 and bf16 on the CPU (autocast and cast weights), TF32 falling back to fp32 off CUDA, and bad names."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from torch_tasks import task_case

from ebai.core.errors import ArtifactError, EbaiError, InputError
from ebai.core.metrics import pearson
from ebai.torch import PRECISIONS, TorchBackend


@pytest.fixture(scope="module")
def semantic_lowered(tmp_path_factory):
    """The semantic task's network lowered once; its program serves every precision."""
    case = task_case("semantic")
    backend = TorchBackend()
    target = tmp_path_factory.mktemp("art") / "model.ebai" / "torch-fp32"
    lowering = backend.lower_module(case.module, target, precision="fp32", input_spec=case.spec, calibration=[])
    return case, target, lowering


def _as(lowering, precision, mode):
    return replace(lowering, precision=precision, options={**lowering.options, "mode": mode})


@pytest.mark.parametrize(
    ("precision", "mode"), [("fp16", "autocast"), ("fp16", "cast"), ("bf16", "autocast"), ("bf16", "cast")]
)
def test_low_precision_on_cpu_stays_close_to_fp32(semantic_lowered, precision, mode, user_cache):
    case, target, lowering = semantic_lowered
    ref = case.reference(case.samples)
    try:
        engine = TorchBackend().load(target, _as(lowering, precision, mode), device="cpu", tune=False)
        out = engine.infer(case.samples)
    except RuntimeError as exc:  # a CPU build without that kernel
        pytest.skip(f"{precision} {mode} is not supported by this CPU build of torch: {exc}")
    assert engine.execution_precision == f"{precision} {mode} (cpu)"
    assert out.dtype == np.float32 and np.isfinite(out).all()
    score = pearson(out, ref)
    assert 0.995 <= score  # bf16 has 8 mantissa bits, fp16 11
    assert score < 1.0 - 1e-9  # the low precision really ran (not fp32 again)


def test_tf32_off_cuda_is_fp32_and_says_so(semantic_lowered, user_cache):
    case, target, lowering = semantic_lowered
    with TorchBackend().load(target, _as(lowering, "tf32", "none"), device="cpu", tune=False) as engine:
        assert engine.execution_precision == "fp32 (TF32 needs a CUDA GPU) (cpu)"
        assert pearson(engine.infer(case.samples), case.reference(case.samples)) >= 0.9999


def test_variants_offer_both_modes_for_half_precisions():
    backend = TorchBackend()
    assert backend.precisions == PRECISIONS == ("fp32", "tf32", "fp16", "bf16")
    assert backend.variants("fp16") == backend.variants("bf16") == [{"mode": "autocast"}, {"mode": "cast"}]
    assert backend.variants("fp32") == backend.variants("tf32") == [{}]


def _one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


def test_bad_names_are_one_line_errors(semantic_lowered, tmp_path, user_cache):
    case, target, lowering = semantic_lowered
    backend = TorchBackend()
    with pytest.raises(InputError) as info:
        backend.variants("fp8")
    assert "knows precisions fp32, tf32, fp16, bf16, not 'fp8'" in _one_line(info)
    with pytest.raises(InputError) as info:
        backend.lower_module(case.module, tmp_path / "x", precision="int8", input_spec=case.spec, calibration=[])
    assert "not 'int8'" in _one_line(info)
    with pytest.raises(InputError) as info:
        backend.lower_module(
            case.module,
            tmp_path / "x",
            precision="fp16",
            input_spec=case.spec,
            calibration=[],
            options={"mode": "half"},
        )
    assert "unknown torch target mode 'half': use one of autocast, cast" in _one_line(info)
    with pytest.raises(InputError) as info:
        backend.lower_module(
            case.module,
            tmp_path / "x",
            precision="fp32",
            input_spec=case.spec,
            calibration=[],
            options={"mode": "cast"},
        )
    assert "applies to fp16/bf16 only" in _one_line(info)
    with pytest.raises(InputError) as info:
        backend.load(target, lowering, precision="fp16")
    assert "unknown torch target load option(s) precision" in _one_line(info)
    for key, value, text in (
        ("device", "tpu", "unknown device 'tpu'"),
        ("device", "cuda:7", "device 'cuda:7' was asked for but"),
        ("batch", 0, "batch=0 is not a positive whole number"),
        ("compile", "maybe", "compile='maybe' is not true or false"),
    ):
        with pytest.raises(EbaiError) as info:
            backend.load(target, lowering, **{key: value})
        assert text in _one_line(info)
    with pytest.raises(InputError) as info:
        backend.lower(target / "model.pt2", tmp_path / "y", precision="fp32", input_spec=case.spec, calibration=[])
    assert "exported from the PyTorch network, not from model.pt2" in _one_line(info)
    with pytest.raises(ArtifactError) as info:
        backend.load(target, replace(lowering, options={"mode": "none"}))
    assert "records no input_shape" in _one_line(info)


def test_recipe_knows_the_new_precisions_and_refuses_others():
    from ebai.compress import Recipe

    assert Recipe.from_dict({"targets": ["torch"], "precision": "bf16"}).precision_for("torch") == "bf16"
    with pytest.raises(InputError) as info:
        Recipe.from_dict({"targets": ["torch"], "precision": "bf17"})
    assert "unknown precision 'bf17': use one of fp32, tf32, fp16, bf16, int8" in _one_line(info)
