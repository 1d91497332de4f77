"""Export/load round trips of every reference task network and of a pruned one (fp32 vs the original)."""

from __future__ import annotations

import numpy as np
import pytest
from torch_tasks import TASK_NAMES, task_case

from ebai.core.metrics import pearson
from ebai.torch import TorchBackend, check_archive


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_network_round_trip_is_faithful(name, tmp_path, user_cache):
    case = task_case(name)
    backend = TorchBackend()
    target = tmp_path / "model.ebai" / "torch-fp32"
    lowering = backend.lower_module(case.module, target, precision="fp32", input_spec=case.spec, calibration=[])
    assert lowering.files == ("model.pt2",) and lowering.options["mode"] == "none"
    assert check_archive(target / "model.pt2")["operators"] > 0
    with backend.load(target, lowering, device="cpu", tune=False) as engine:
        for batch in (case.samples[:1], case.samples):  # the batch axis is dynamic
            out = engine.infer(batch)
            ref = case.reference(batch)
            assert out.dtype == np.float32 and out.shape == ref.shape
            assert pearson(out, ref) >= 0.9999
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_pruned_network_round_trip_is_faithful(tmp_path, user_cache):
    import torch

    from ebai.compress import PruneSettings, prune

    case = task_case("denoising")
    pruned = prune(case.module, torch.from_numpy(case.samples[:1]), PruneSettings(method="l1", ratio=0.5))
    assert pruned.params_after < pruned.params_before
    backend = TorchBackend()
    target = tmp_path / "model.ebai" / "torch-fp32"
    lowering = backend.lower_module(pruned.model, target, precision="fp32", input_spec=case.spec, calibration=[])
    with backend.load(target, lowering, device="cpu", tune=False) as engine:
        out = engine.infer(case.samples)
    with torch.inference_mode():
        ref = pruned.model.eval()(torch.from_numpy(case.samples)).numpy()
    assert pearson(out, ref) >= 0.9999
