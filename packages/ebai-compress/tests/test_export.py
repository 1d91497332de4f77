from __future__ import annotations

import builtins
import logging

import compress_nets as nets
import numpy as np
import onnx
import pytest
import torch

from ebai.compress import PruneSettings, export_onnx, prune
from ebai.core.errors import InputError, OutputExistsError

ort = pytest.importorskip("onnxruntime")


def _ort_vs_torch(path, model, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        want = model(batch).numpy()
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(nets.unet3d, (1, 1, 8, 16, 16)), (nets.resunet2d, (1, 1, 32, 32))],
    ids=["unet3d", "resunet2d"],
)
def test_pruned_net_exports_to_one_checked_file_with_dynamic_batch(tmp_path, factory, shape):
    pruned = prune(factory(), shape, PruneSettings(method="l1", ratio=0.5)).model
    path = tmp_path / "model.onnx"
    result = export_onnx(pruned, path, torch.randn(shape))
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # self-contained: no external data, no leftovers
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert result.opset >= 17 and result.exporter == "dynamo"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(shape[1:])
    assert result.max_rel_error is not None and result.max_rel_error <= 1e-4
    # independent check at a batch size never seen by the exporter
    assert _ort_vs_torch(path, pruned, torch.randn(3, *shape[1:])) <= 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_model_uses_the_torchscript_exporter(tmp_path):
    scripted = torch.jit.script(nets.ResUNet2D(ch=(8, 16, 32)).eval())
    result = export_onnx(scripted, tmp_path / "m.onnx", np.zeros((1, 1, 32, 32), np.float32))
    assert result.exporter == "torchscript" and result.max_rel_error <= 1e-4
    assert _ort_vs_torch(tmp_path / "m.onnx", scripted, torch.randn(2, 1, 32, 32)) <= 1e-4


def test_data_dependent_control_flow_names_the_module(tmp_path):
    with pytest.raises(InputError) as err:
        export_onnx(nets.DataDependent().eval(), tmp_path / "m.onnx", torch.randn(1, 1, 16, 16))
    msg = str(err.value)
    assert "'body.1' (Gate)" in msg and "data-dependent control flow" in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())


def test_existing_file_needs_overwrite(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_text("old")
    with pytest.raises(OutputExistsError):
        export_onnx(nets.ResUNet2D(ch=(8, 16, 32)).eval(), path, torch.randn(1, 1, 32, 32))
    assert path.read_text() == "old"


def test_without_onnxruntime_the_numeric_check_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with caplog.at_level(logging.WARNING, logger="ebai"):
        result = export_onnx(nets.ResUNet2D(ch=(8, 16, 32)).eval(), tmp_path / "m.onnx", torch.randn(1, 1, 32, 32))
    assert result.max_rel_error is None
    assert result.to_dict()["numeric_check"].startswith("skipped")
    assert any("onnxruntime is not installed" in r.message for r in caplog.records)


class _Cancelling(torch.nn.Module):
    """Two large, nearly equal convolutions subtracted: a small output float32 rounds coarsely."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(4, 1, 3, 3, 3, generator=g) * 1e4
        self.a = torch.nn.Conv3d(1, 4, 3, padding=1, bias=False)
        self.b = torch.nn.Conv3d(1, 4, 3, padding=1, bias=False)
        self.a.weight.data = w + torch.randn(w.shape, generator=g)
        self.b.weight.data = w.clone()

    def forward(self, x):
        return self.a(x) - self.b(x)

    def merged(self) -> torch.nn.Module:
        """The same function with the weights subtracted first: well conditioned in float32."""
        conv = torch.nn.Conv3d(1, 4, 3, padding=1, bias=False)
        conv.weight.data = (self.a.weight.data.double() - self.b.weight.data.double()).float()
        return conv.eval()


@pytest.mark.parametrize("onnx_from_merged", [True, False])
def test_numeric_check_holds_the_onnx_file_to_the_float64_result(tmp_path, onnx_from_merged):
    """Above the limit, an ONNX file is accepted only when it is no further from float64 than torch is."""
    from ebai.compress._onnx_export import _numeric_check

    coarse = _Cancelling().eval()
    fine = coarse.merged()
    batch = torch.randn(2, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    exported, compared = (fine, coarse) if onnx_from_merged else (coarse, fine)
    path = export_onnx(exported, tmp_path / "m.onnx", batch, exporter="torchscript").path
    rel, acceptable = _numeric_check(path, compared, batch, 1e-4)
    assert rel > 1e-4  # float32 torch and the file disagree beyond the limit either way
    # the accurate file against the coarse torch network is fine; the coarse file against the accurate one is not
    assert acceptable is onnx_from_merged
