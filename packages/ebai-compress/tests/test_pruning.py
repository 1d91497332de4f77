from __future__ import annotations

import compress_nets as nets
import pytest
import torch

from ebai.compress import PruneSettings, prune
from ebai.compress._pruning import count_macs_and_params, output_layers
from ebai.core.errors import InputError

SHAPE3D = (1, 1, 8, 16, 16)  # MAC ratios do not depend on the tile; small keeps tests fast
SHAPE2D = (1, 1, 64, 64)


@pytest.mark.parametrize("method", ["l1", "l2", "fpgm"])
@pytest.mark.parametrize(
    ("factory", "shape"), [(nets.unet3d, SHAPE3D), (nets.resunet2d, SHAPE2D)], ids=["unet3d", "resunet2d"]
)
def test_half_the_channels_cut_macs_and_the_net_runs(method, factory, shape):
    model = factory()
    x = torch.randn(shape)
    with torch.no_grad():
        before = model(x)
    result = prune(model, x, PruneSettings(method=method, ratio=0.5))
    assert result.mac_reduction >= 2.5, result.to_dict()
    assert result.params_after < result.params_before / 2.5
    with torch.no_grad():
        out = result.model(torch.randn(3, *shape[1:]))  # another batch size runs too
    assert out.shape == (3, *before.shape[1:])
    assert torch.isfinite(out).all()
    # the input network is untouched, the output layer keeps its channels, widths are multiples of 8
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert result.kept == ("head",)
    widths = [after for name, (_, after) in result.channels.items() if name != "head"]
    assert all(w % 8 == 0 for w in widths) and max(widths) < max(b for b, _ in result.channels.values())


def test_output_layer_is_found_behind_activations():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1), torch.nn.Sigmoid()
    )
    assert output_layers(model, (1, 1, 16, 16)) == ["2"]


def test_keep_and_layer_ratios():
    model = nets.resunet2d()
    result = prune(model, SHAPE2D, PruneSettings(ratio=0.5, keep=["down2"], layer_ratios={"stem": 0.25}, round_to=1))
    assert result.channels["down2"][0] == result.channels["down2"][1] == 64
    assert "down2" in result.kept
    # stem's ratio applies to its whole group: the residual additions tie stem, res1, up1 and res5 together
    assert result.channels["stem"] == (16, 12) and result.channels["up1"] == (16, 12)
    assert result.channels["down1"] == (32, 16)


def test_global_pruning_keeps_every_layer_alive():
    result = prune(nets.resunet2d(), SHAPE2D, PruneSettings(ratio=0.5, global_pruning=True))
    assert result.mac_reduction > 1.5
    assert all(after >= 1 for _, after in result.channels.values())


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.2, -0.5])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(InputError, match=r"outside \(0, 1\)"):
        prune(nets.resunet2d(), SHAPE2D, PruneSettings(ratio=ratio))


def test_unknown_method():
    with pytest.raises(InputError, match="unknown pruning method 'taylor'"):
        prune(nets.resunet2d(), SHAPE2D, PruneSettings(method="taylor"))


def test_unknown_keep_name():
    with pytest.raises(InputError, match="'decoder' matches no layer"):
        prune(nets.resunet2d(), SHAPE2D, PruneSettings(method="l1", keep=["decoder"]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_cannot_be_pruned():
    scripted = torch.jit.script(nets.ResUNet2D(ch=(8, 16, 32)).eval())
    with pytest.raises(InputError, match="TorchScript"):
        prune(scripted, SHAPE2D)


def test_monai_unet_with_prelu_and_basicunet_with_inplace_activations():
    monai = pytest.importorskip("monai")
    from monai.networks.nets import BasicUNet, UNet

    unet = UNet(
        spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2
    )
    basic = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(16, 16, 32, 64, 128, 16))
    for model, shape in ((unet.eval(), (1, 1, 16, 16, 16)), (basic.eval(), (1, 1, 64, 64))):
        result = prune(model, shape, PruneSettings(method="l1", ratio=0.5))
        assert result.mac_reduction >= 2.5, (type(model).__name__, result.to_dict())
        with torch.no_grad():
            assert result.model(torch.randn(shape)).shape == shape
    # in-place flags are restored on the pruned copy
    assert any(getattr(m, "inplace", False) for m in result.model.modules())
    del monai


def test_scalar_parameters_outside_layers_are_left_alone(recwarn):
    """cellpose's CPnet holds ``diam_mean`` as a bare one-value parameter: not a channel, not pruned, no warning."""

    class WithScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 1, 3, padding=1)
            )
            self.scale = torch.nn.Parameter(torch.full((1,), 17.0), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) * self.scale

    result = prune(WithScale(), torch.zeros(1, 1, 16, 16), PruneSettings(ratio=0.5))
    assert result.model.body[0].out_channels == 8
    assert result.model.scale.shape == (1,) and float(result.model.scale) == 17.0
    assert not result.model.scale.requires_grad
    assert not [w for w in recwarn if "Unwrapped parameters" in str(w.message)]


def test_counting_a_network_with_shared_modules_twice_prints_nothing(capfd):
    """One activation module used by two blocks made Torch-Pruning's counter (ptflops') print a
    warning per visit and count that module's operations twice."""

    class Block(torch.nn.Module):
        def __init__(self, act: torch.nn.Module) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.act = act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    def net(shared: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        act = torch.nn.ReLU()
        blocks = [Block(act if shared else torch.nn.ReLU()) for _ in range(3)]
        return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), *blocks, torch.nn.Conv2d(16, 1, 1)).eval()

    x = torch.randn(1, 1, 16, 16)
    first = prune(net(shared=True), x, PruneSettings(method="l1", ratio=0.5))
    second = prune(first.model, x, PruneSettings(method="l1", ratio=0.5))  # the same modules counted again
    out = capfd.readouterr()
    assert "ptflops" not in out.out + out.err and "__flops__" not in out.out + out.err
    assert not any("flops" in name for m in second.model.modules() for name in vars(m))
    # each call site counted once: the same MACs as the network without sharing
    assert first.macs_before == count_macs_and_params(net(shared=False), x)[0]
    assert first.params_before == count_macs_and_params(net(shared=False), x)[1]


def test_pruning_works_inside_a_callers_no_grad():
    """Torch-Pruning traces with autograd; a caller's ``torch.no_grad()`` must not break it."""
    with torch.no_grad():
        result = prune(nets.resunet2d(), SHAPE2D, PruneSettings(method="l1", ratio=0.5))
    assert result.mac_reduction > 2
