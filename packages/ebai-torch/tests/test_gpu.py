"""The CUDA paths (TF32, fp16/bf16 on the GPU, CUDA graphs, torch.compile, the measured choice).

Marked ``gpu``; they skip with the reason where torch sees no CUDA GPU (as on the development
machine, where they have never run).
"""

from __future__ import annotations

import pytest
import torch
from torch_tasks import task_case

from ebai.core.metrics import pearson
from ebai.torch import RunConfig, TorchBackend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason=f"torch {torch.__version__} sees no CUDA GPU"),
]

CONFIGS = [
    RunConfig("fp32"),
    RunConfig("tf32"),
    RunConfig("fp16", "autocast", channels_last=True),
    RunConfig("fp16", "cast", cuda_graph=True),
    RunConfig("bf16", "autocast", channels_last=True, cuda_graph=True),
    RunConfig("fp16", "autocast", channels_last=True, compile=True, cuda_graph=True),
]


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    case = task_case("denoising")
    target = tmp_path_factory.mktemp("art") / "model.ebai" / "torch-fp32"
    lowering = TorchBackend().lower_module(case.module, target, precision="fp32", input_spec=case.spec, calibration=[])
    return case, target, lowering


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.describe("cuda"))
def test_every_configuration_runs_faithfully_on_the_gpu(lowered, config, user_cache):
    from dataclasses import replace

    case, target, lowering = lowered
    if config.precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs compute capability >= 8.0")
    low = replace(lowering, precision=config.precision, options={**lowering.options, "mode": config.mode})
    fixed = {"channels_last": config.channels_last, "compile": config.compile, "cuda_graph": config.cuda_graph}
    with TorchBackend().load(target, low, device="cuda", tune=False, **fixed) as engine:
        assert engine.config == config
        ref = case.reference(case.samples)
        for batch in (case.samples[:1], case.samples, case.samples[:1]):  # graphs per batch size, replayed
            out = engine.infer(batch)
        assert pearson(out, ref[:1]) >= (0.9999 if config.precision in ("fp32", "tf32") else 0.999)
        assert pearson(engine.infer(case.samples), ref) >= 0.999


def test_measured_choice_on_the_gpu_is_cached(lowered, tmp_path, user_cache):
    import shutil

    case, target, lowering = lowered
    copy = tmp_path / "model.ebai" / "torch-fp32"
    shutil.copytree(target, copy)
    with TorchBackend().load(copy, lowering, device="cuda", batch=2) as engine:
        assert engine.choice_info["source"] == "measured" and len(engine.choice_info["trials"]) >= 3
        assert engine.identity.compute_capability and engine.identity.cuda_version
        assert pearson(engine.infer(case.samples), case.reference(case.samples)) >= 0.9999
    with TorchBackend().load(copy, lowering, device="cuda", batch=2) as engine:
        assert engine.choice_info["source"] == "cache"
