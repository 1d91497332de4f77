"""Every built-in adapter keeps the ModelSource contract, checked with the helper plugin authors use."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from ebai.adapters import TorchAdapter
from ebai.core.testing import check_adapter


def test_torch_adapter_keeps_the_contract(net_file):
    adapter = TorchAdapter(
        f"{net_file}:build", axes="bcyx", channels=1, tile=(32, 32), normalization="zscore", out_channels=2
    )
    out = check_adapter(adapter)
    assert out["description"]["adapter"] == "torch" and out["output"].shape[1:] == (32, 32)


def test_monai_adapter_keeps_the_contract():
    pytest.importorskip("monai")
    from ebai.adapters import MonaiAdapter

    unet = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [8, 16, 32], "strides": [2, 2]}
    check_adapter(MonaiAdapter("UNet", unet, tile=(16, 32, 32)))


def test_cellpose_adapter_keeps_the_contract(cellpose_weights):
    pytest.importorskip("cellpose")
    from ebai.adapters import CellposeAdapter

    out = check_adapter(CellposeAdapter(cellpose_weights, tile=64))
    assert out["result"].shape == (64, 64)  # label masks from cellpose's dynamics


def test_the_contract_check_catches_a_wrong_output_spec(net_file):
    from ebai.core import OutputSpec

    class Lying(TorchAdapter):
        @property
        def output_spec(self):
            return OutputSpec(self.input_spec.axes, 3)  # the network gives two channels

    adapter = Lying(f"{net_file}:build", axes="bcyx", channels=1, tile=(32, 32), out_channels=2)
    with pytest.raises(AssertionError, match=r"must give \(2, 3, 32, 32\), got \(2, 2, 32, 32\)"):
        check_adapter(adapter)
