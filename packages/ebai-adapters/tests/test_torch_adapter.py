"""The ``torch`` adapter: factories, TorchScript, safe weights loading, layout and description."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# torch 2.13 deprecates torch.jit.script/load; TorchScript files are still a supported input.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

from ebai.adapters import TorchAdapter, build_adapter, load_state_dict  # noqa: E402
from ebai.adapters._loading import is_factory_ref  # noqa: E402
from ebai.core import InputError  # noqa: E402


def _adapter(model: object, **kw: object) -> TorchAdapter:
    return TorchAdapter(model, axes="yx", channels=1, tile=16, **kw)  # type: ignore[arg-type]


def _run(adapter: TorchAdapter, x: np.ndarray) -> np.ndarray:
    return adapter.torch_infer()(x)


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)


def test_file_factory_with_weights(tmp_path: Path, net_file: Path, x: np.ndarray) -> None:
    torch.manual_seed(0)
    first = _adapter(f"{net_file}:build")
    module = first.load_module()
    assert not module.training
    torch.save(module.state_dict(), tmp_path / "w.pt")
    second = _adapter(f"{net_file}:build", weights=tmp_path / "w.pt")
    np.testing.assert_array_equal(_run(second, x), module(torch.from_numpy(x)).detach().numpy())
    assert second.output_spec.channels == 2 and second.output_spec.axes == "bcyx"


def test_each_load_is_a_fresh_copy(net_file: Path) -> None:
    adapter = _adapter(f"{net_file}:build")
    a, b = adapter.load_module(), adapter.load_module()
    assert a is not b
    before = next(b.parameters()).detach().clone()
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert torch.equal(next(b.parameters()), before)


def test_builds_without_weights_are_the_same_network(net_file: Path) -> None:
    adapter = _adapter(f"{net_file}:build")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = adapter.load_module(), adapter.load_module()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


def test_in_memory_module_is_copied(x: np.ndarray) -> None:
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    adapter = _adapter(net)
    module = adapter.load_module()
    assert module is not net
    np.testing.assert_allclose(_run(adapter, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    assert adapter.output_spec.channels == 3


def test_package_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "labnets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "zoo.py").write_text(
        "import torch\n\nclass Nets:\n    @staticmethod\n    def small(out=4):\n        return torch.nn.Conv2d(1, out, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = _adapter("labnets.zoo:Nets.small", model_kwargs={"out": 5})
    assert adapter.output_spec.channels == 5
    assert adapter.describe()["config"]["model"] == "labnets.zoo:Nets.small"
    sys.modules.pop("labnets.zoo", None)
    sys.modules.pop("labnets", None)


def test_torchscript_file(tmp_path: Path, x: np.ndarray) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU()).eval()
    path = tmp_path / "net.ts"
    torch.jit.script(net).save(str(path))
    adapter = _adapter(path)
    np.testing.assert_allclose(_run(adapter, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    with pytest.raises(InputError, match="holds its own weights"):
        _adapter(path, weights=path).load_module()


def test_pickled_model_needs_trust(tmp_path: Path, x: np.ndarray) -> None:
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    path = tmp_path / "whole.pth"
    torch.save(net, path)
    with pytest.raises(InputError, match="trust_pickle=True"):
        _adapter(path).load_module()
    adapter = _adapter(path, trust_pickle=True)
    np.testing.assert_allclose(_run(adapter, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)


def test_pickled_weights_are_refused_without_trust(tmp_path: Path, net_file: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weight": np.zeros(3)}, path)  # a numpy array unpickles through numpy's own globals
    with pytest.raises(InputError, match="cannot be read as a state dict"):
        _adapter(f"{net_file}:build", weights=path).load_module()


def test_checkpoint_layouts_are_unwrapped(tmp_path: Path, net_file: Path, x: np.ndarray) -> None:
    torch.manual_seed(1)
    module = _adapter(f"{net_file}:build").load_module()
    state = module.state_dict()
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "lightning.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pt")
    for name in ("lightning.ckpt", "dp.pt"):
        assert set(load_state_dict(tmp_path / name)) == set(state)
        adapter = _adapter(f"{net_file}:build", weights=tmp_path / name)
        np.testing.assert_array_equal(_run(adapter, x), module(torch.from_numpy(x)).detach().numpy())


def test_mismatched_weights_name_the_keys(tmp_path: Path, net_file: Path) -> None:
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match="do not fit the network: missing"):
        _adapter(f"{net_file}:build", weights=tmp_path / "other.pt").load_module()
    wide = _adapter(f"{net_file}:build", model_kwargs={"width": 4}).load_module()
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(InputError, match="do not fit the network"):
        _adapter(f"{net_file}:build", weights=tmp_path / "wide.pt").load_module()


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("nonexistent_file.py:build", "does not exist"),
        ("{net}:nothing", "has no 'nothing'"),
        ("no_such_pkg_ebai.models:build", "cannot be imported"),
        ("model.onnx", "not understood"),
        ("missing.pt", "does not exist"),
        (42, "give a torch.nn.Module"),
    ],
)
def test_bad_model_references(net_file: Path, model: object, match: str) -> None:
    if isinstance(model, str):
        model = model.format(net=net_file)
    with pytest.raises(InputError, match=match):
        _adapter(model).load_module()


def test_factory_must_return_a_module(tmp_path: Path) -> None:
    path = tmp_path / "notnet.py"
    path.write_text("def build():\n    return 3\n")
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        _adapter(f"{path}:build").load_module()


def test_is_factory_ref() -> None:
    assert is_factory_ref("a/b/net.py:build")
    assert is_factory_ref("pkg.mod:Class.make")
    assert not is_factory_ref("model.pt")
    assert not is_factory_ref("C:/models/model.pt")
    assert not is_factory_ref("pkg.mod")
    assert not is_factory_ref("pkg mod:build")


def test_axes_and_tile_forms() -> None:
    net = torch.nn.Conv3d(2, 1, 1)
    for axes in ("zyx", "czyx", "bczyx"):
        adapter = TorchAdapter(net, axes=axes, channels=2, tile="8,16,16")
        assert adapter.input_spec.axes == "bczyx"
        assert adapter.input_spec.tile == (8, 16, 16)
    with pytest.raises(InputError, match="batch and channel"):
        TorchAdapter(net, axes="zcyx", channels=2, tile=8)
    with pytest.raises(InputError, match="multiple"):
        TorchAdapter(net, axes="zyx", channels=2, tile=(8, 12, 12), divisor=8)


def test_output_must_be_one_image_tensor() -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(InputError, match="not one tensor"):
        _ = _adapter(Pair()).output_spec
    with pytest.raises(InputError, match="spatial shape"):
        _ = _adapter(torch.nn.MaxPool2d(2)).output_spec


def test_description_rebuilds_an_equal_adapter(tmp_path: Path, net_file: Path, x: np.ndarray) -> None:
    torch.manual_seed(2)
    torch.save(_adapter(f"{net_file}:build").load_module().state_dict(), tmp_path / "w.pt")
    adapter = TorchAdapter(
        f"{net_file}:build",
        weights=tmp_path / "w.pt",
        axes="yx",
        channels=1,
        tile=16,
        normalization="percentile",
        overlap=0.5,
    )
    described = adapter.describe()
    config = described["config"]
    assert config["weights"] == str((tmp_path / "w.pt").resolve())
    assert config["out_channels"] == 2
    assert config["normalization"] == {"kind": "percentile", "low": 1.0, "high": 99.8}
    again = build_adapter(described)
    assert again.input_spec == adapter.input_spec
    np.testing.assert_array_equal(_run(again, x), _run(adapter, x))


def test_in_memory_description_rebuilds_for_processing_only(x: np.ndarray) -> None:
    adapter = _adapter(torch.nn.Conv2d(1, 2, 1), normalization="zscore")
    config = adapter.describe()["config"]
    assert config["model"] is None and config["model_class"] == "torch.nn.modules.conv.Conv2d"
    again = TorchAdapter.from_config(config)
    assert again.output_spec.channels == 2
    np.testing.assert_array_equal(again.preprocess(x[0]), adapter.preprocess(x[0]))
    with pytest.raises(InputError, match="holds no network"):
        again.load_module()
