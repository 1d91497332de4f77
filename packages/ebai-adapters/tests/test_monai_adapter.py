"""The ``monai`` adapter: UNet, BasicUNet and DynUNet from constructor arguments (a small YAML)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from ebai.adapters import MonaiAdapter, build_adapter  # noqa: E402
from ebai.core import InputError  # noqa: E402

UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [8, 16, 32], "strides": [2, 2]}


@pytest.mark.parametrize(
    ("network", "args", "tile", "divisor"),
    [
        ("UNet", UNET, (16, 32, 32), 4),
        (
            "BasicUNet",
            {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]},
            (32, 32),
            16,
        ),
        (
            "DynUNet",
            {
                "spatial_dims": 3,
                "in_channels": 2,
                "out_channels": 3,
                "kernel_size": [3, 3, 3],
                "strides": [1, [1, 2, 2], 2],
                "upsample_kernel_size": [[1, 2, 2], 2],
                "filters": [8, 16, 32],
            },
            (16, 32, 32),
            4,  # per axis: z 1*1*2, y and x 1*2*2
        ),
    ],
)
def test_networks_build_and_run(network: str, args: dict, tile: tuple[int, ...], divisor: int) -> None:
    torch.manual_seed(0)
    adapter = MonaiAdapter(network, args, tile=tile)
    spec = adapter.input_spec
    assert spec.divisor == divisor and spec.tile == tile
    assert spec.channels == args["in_channels"]
    module = adapter.load_module()
    assert not module.training
    out = adapter.torch_infer(module)(np.zeros(spec.batch_shape(2), np.float32))
    assert out.shape == (2, adapter.output_spec.channels, *tile)
    assert adapter.output_spec.channels == args["out_channels"]


def test_random_initialisation_is_the_same_on_every_build() -> None:
    adapter = MonaiAdapter("UNet", UNET, tile=(16, 32, 32))
    a, b = adapter.load_module(), adapter.load_module()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_yaml_config_with_relative_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = MonaiAdapter("UNet", UNET, tile=(16, 32, 32))
    module = reference.load_module()
    torch.save(module.state_dict(), tmp_path / "unet.pt")
    cfg = tmp_path / "unet.yaml"
    cfg.write_text(
        "adapter: monai\n"
        "network: UNet\n"
        "args: {spatial_dims: 3, in_channels: 1, out_channels: 1, channels: [8, 16, 32], strides: [2, 2]}\n"
        "weights: unet.pt\n"
        "tile: [16, 32, 32]\n"
        "normalization: {kind: percentile, low: 1, high: 99}\n"
    )
    adapter = MonaiAdapter.from_file(cfg)
    assert adapter.weights == str((tmp_path / "unet.pt").resolve())
    x = np.random.default_rng(0).normal(size=(1, 1, 16, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(adapter.torch_infer()(x), module(torch.from_numpy(x)).detach().numpy())
    again = build_adapter(adapter.describe())
    assert again.describe() == adapter.describe()
    assert again.input_spec.normalization.kind == "percentile"


def test_yaml_act_and_norm_lists_become_tuples() -> None:
    args = {**UNET, "act": ["LeakyReLU", {"negative_slope": 0.2}], "norm": ["instance", {"affine": True}]}
    module = MonaiAdapter("UNet", args, tile=(16, 32, 32)).load_module()
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in module.modules())


def test_segmentation_postprocess_and_dice() -> None:
    adapter = MonaiAdapter("UNet", {**UNET, "out_channels": 3}, tile=(16, 32, 32), task="segmentation")
    logits = np.zeros((3, 4, 4, 4), np.float32)
    logits[1, :2] = 5.0
    logits[2, 2:] = 5.0
    labels = adapter.postprocess(logits)
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {1, 2}
    assert adapter.evaluate(labels, labels) == {"dice": 1.0}
    shifted = labels.copy()
    shifted[:, :, :1] = 0
    assert adapter.evaluate(shifted, labels)["dice"] < 1.0
    binary = MonaiAdapter("UNet", UNET, tile=(16, 32, 32), task="segmentation")
    mask = binary.postprocess(np.array([[[[-1.0, 2.0]]]], np.float32))
    assert mask.tolist() == [[[0, 1]]]


def test_segmentation_dice_scores_every_class_as_monai() -> None:
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    adapter = MonaiAdapter("UNet", {**UNET, "out_channels": 3}, tile=(16, 32, 32), task="segmentation")
    empty = np.zeros((4, 8, 8), np.uint16)
    only_class_2 = empty.copy()
    only_class_2[1:3, 2:5, 2:5] = 2
    swapped = np.where(only_class_2 == 2, 1, 0).astype(np.uint16)

    def monai_mean(pred: np.ndarray, true: np.ndarray) -> float:
        def hot(x: np.ndarray) -> object:
            return one_hot(torch.from_numpy(x.astype(np.int64))[None, None], num_classes=3)

        metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
        return float(metric(hot(pred), hot(true)).mean())

    # an empty target with a prediction holding only class 2: class 2 is wrong, not ignored
    assert adapter.evaluate(only_class_2, empty)["dice"] == pytest.approx(monai_mean(only_class_2, empty)) == 0.5
    assert adapter.evaluate(swapped, only_class_2)["dice"] == pytest.approx(monai_mean(swapped, only_class_2)) == 0.0
    assert adapter.evaluate(empty, empty) == {"dice": 1.0}


def test_regression_metric_is_ssim() -> None:
    adapter = MonaiAdapter("UNet", UNET, tile=(16, 32, 32))
    rng = np.random.default_rng(0)
    out = rng.normal(size=(1, 16, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(adapter.postprocess(out), out)
    assert adapter.evaluate(out, out)["ssim"] == pytest.approx(1.0)
    assert adapter.evaluate(out + rng.normal(size=out.shape).astype(np.float32), out)["ssim"] < 0.9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"network": "SegResNet", "args": UNET}, "not supported"),
        ({"network": "UNet", "args": {"spatial_dims": 3, "in_channels": 1}}, "needs 'out_channels'"),
        ({"network": "UNet", "args": UNET, "task": "detection"}, "task 'detection'"),
        ({"network": "UNet", "args": UNET, "tile": (16, 30, 32)}, "multiple"),
        ({"network": "UNet", "args": {**UNET, "spatial_dims": 4}}, "2D or 3D"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    kwargs.setdefault("tile", (16, 32, 32))
    with pytest.raises(InputError, match=match):
        MonaiAdapter(**kwargs)


def test_bad_constructor_args_are_reported() -> None:
    adapter = MonaiAdapter("UNet", {**UNET, "channels": [8, 16, 32], "strides": [2]}, tile=(16, 32, 32))
    with pytest.raises(InputError, match="cannot be built"):
        adapter.load_module()
