"""The ``mmv_im2im`` adapter: model from an mmv_im2im config + Lightning checkpoint, its ops and tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmv_im2im", reason="mmv_im2im is not installed (pip install 'ebai-adapters[mmv_im2im]')")

from ebai.adapters import MmvIm2ImAdapter, build_adapter  # noqa: E402
from ebai.adapters._mmv_im2im import read_mmv_config  # noqa: E402
from ebai.core import InputError  # noqa: E402

FNET = """\
mode: inference
data:
  inference_input:
    reader_params: {dimension_order_out: ZYX, C: 0, T: 0}
  preprocess:
    - module_name: mmv_im2im.preprocessing.transforms
      func_name: norm_around_center
      params: {min_z: 32}
model:
  framework: FCN
  net:
    module_name: mmv_im2im.models.nets.fnet_nn_3d
    func_name: Net
    params: {depth: 2, mult_chan: 8, in_channels: 1, out_channels: 1}
  checkpoint: CKPT
  model_extra:
    sliding_window_params: {roi_size: [16, 32, 32], sw_batch_size: 4, overlap: 0.2, mode: gaussian}
"""


def _config(tmp_path: Path, text: str = FNET, ckpt: str | None = None) -> Path:
    path = tmp_path / "fnet.yaml"
    body = text.replace("CKPT", ckpt) if ckpt else "\n".join(ln for ln in text.splitlines() if "CKPT" not in ln) + "\n"
    path.write_text(body)
    return path


def test_fnet_from_config_and_lightning_checkpoint(tmp_path: Path) -> None:
    from mmv_im2im.models.nets.fnet_nn_3d import Net

    torch.manual_seed(0)
    net = Net(depth=2, mult_chan=8, in_channels=1, out_channels=1).eval()
    # the layout Lightning saves for mmv_im2im's FCN model: the network under "net."
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"epoch": 7, "global_step": 70, "state_dict": state}, tmp_path / "best.ckpt")
    adapter = MmvIm2ImAdapter(_config(tmp_path, ckpt="best.ckpt"))
    spec = adapter.input_spec
    assert spec.axes == "bczyx" and spec.tile == (16, 32, 32) and spec.overlap == 0.2 and spec.divisor == 4
    assert spec.normalization.kind == "zscore"
    assert adapter.checkpoint == str((tmp_path / "best.ckpt").resolve())
    module = adapter.load_module()
    assert type(module) is Net and not module.training
    x = np.random.default_rng(0).normal(size=(2, 1, 16, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(adapter.torch_infer(module)(x), net(torch.from_numpy(x)).detach().numpy())
    assert adapter.output_spec.channels == 1


def test_preprocess_runs_mmv_im2im_own_normalisation(tmp_path: Path) -> None:
    from mmv_im2im.preprocessing.transforms import norm_around_center

    adapter = MmvIm2ImAdapter(_config(tmp_path))
    image = np.random.default_rng(1).uniform(50, 150, size=(1, 32, 40, 40)).astype(np.float32)
    out = adapter.preprocess(image)
    expected = norm_around_center(torch.from_numpy(image), min_z=32)
    expected = expected.numpy() if torch.is_tensor(expected) else expected
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and abs(out.mean()) < 0.05


def test_postprocess_runs_the_config_ops(tmp_path: Path) -> None:
    text = FNET.replace(
        "model:\n",
        "  postprocess:\n"
        "    - module_name: mmv_im2im.postprocessing.basic_collection\n"
        "      func_name: extract_segmentation\n"
        "      params: {channel: 0, cutoff: 0.5}\n"
        "model:\n",
    )
    adapter = MmvIm2ImAdapter(_config(tmp_path, text))
    output = np.zeros((1, 4, 8, 8), np.float32)
    output[0, :2] = 1.0
    mask = adapter.postprocess(output)
    assert mask.shape == (4, 8, 8)
    assert mask[:2].all() and not mask[2:].any()
    assert adapter.evaluate(mask.astype(np.uint8), mask.astype(np.uint8)) == {"dice": 1.0}


def test_monai_network_in_an_mmv_config(tmp_path: Path) -> None:
    text = FNET.replace(
        "    module_name: mmv_im2im.models.nets.fnet_nn_3d\n    func_name: Net\n"
        "    params: {depth: 2, mult_chan: 8, in_channels: 1, out_channels: 1}\n",
        "    module_name: monai.networks.nets\n    func_name: UNet\n"
        "    params: {spatial_dims: 3, in_channels: 1, out_channels: 2, channels: [4, 8, 16], strides: [2, 2]}\n",
    )
    adapter = MmvIm2ImAdapter(_config(tmp_path, text))
    assert adapter.input_spec.divisor == 4 and adapter.output_spec.channels == 2
    out = adapter.torch_infer()(np.zeros((1, 1, 16, 32, 32), np.float32))
    assert out.shape == (1, 2, 16, 32, 32)


def test_random_initialisation_is_the_same_on_every_build(tmp_path: Path) -> None:
    adapter = MmvIm2ImAdapter(_config(tmp_path))
    a, b = adapter.load_module(), adapter.load_module()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_description_round_trip_without_the_file(tmp_path: Path) -> None:
    path = _config(tmp_path)
    adapter = MmvIm2ImAdapter(path, tile=(16, 32, 32), overlap=0.5)
    described = adapter.describe()
    assert described["config"]["config"]["model"]["framework"] == "FCN"
    path.unlink()  # an artifact moved to another machine carries the parsed config
    again = build_adapter(described)
    assert again.describe() == described
    assert again.input_spec == adapter.input_spec
    image = np.random.default_rng(2).uniform(0, 100, size=(1, 32, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(again.preprocess(image), adapter.preprocess(image))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("framework: FCN", "framework: pix2pix"), "framework 'pix2pix' is not supported"),
        (
            ("in_channels: 1, out_channels: 1}", "in_channels: 1, out_channels: 1, task: regression}"),
            "one value per image",
        ),
        (
            (
                "    sliding_window_params: {roi_size: [16, 32, 32], sw_batch_size: 4, overlap: 0.2, mode: gaussian}\n",
                "",
            ),
            "roi_size",
        ),
    ],
)
def test_config_errors(tmp_path: Path, edit: tuple[str, str], match: str) -> None:
    text = FNET.replace(*edit)
    if "sliding_window_params" not in text:
        text = text.replace("  model_extra:\n", "")
    with pytest.raises(InputError, match=match):
        MmvIm2ImAdapter(_config(tmp_path, text))


def test_checkpoint_errors(tmp_path: Path) -> None:
    torch.save({"state_dict": {"net.other.weight": torch.zeros(1)}}, tmp_path / "wrong.ckpt")
    with pytest.raises(InputError, match="does not fit model.net"):
        MmvIm2ImAdapter(_config(tmp_path), checkpoint=tmp_path / "wrong.ckpt").load_module()
    with pytest.raises(InputError, match="does not exist"):
        MmvIm2ImAdapter(_config(tmp_path), checkpoint=tmp_path / "missing.ckpt").load_module()


def test_read_config_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_mmv_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: {}\n")
    with pytest.raises(InputError, match="no 'model' section"):
        read_mmv_config(tmp_path / "bad.yaml")


# ------------------------------------------------------------- mmv_im2im itself as the oracle
def _presets() -> list[Path]:
    import mmv_im2im

    return sorted((Path(mmv_im2im.__file__).parent / "configs").glob("preset_*.yaml"))


#: Ops that read files or add the channel axis: the oracle, like ebai, is handed channel-first arrays.
_LOADING = ("LoadImage", "LoadImaged", "AddChannel", "AddChanneld", "EnsureChannelFirst", "EnsureChannelFirstd")


def _spatial_axes(cfg: dict) -> int:
    """Spatial axes of the input image: the inference reader's, else the training loader's for IM."""
    data = cfg.get("data") or {}
    order = ((data.get("inference_input") or {}).get("reader_params") or {}).get("dimension_order_out")
    for op in data.get("preprocess") or []:
        params = op.get("params") or {}
        if order is None and op["func_name"] == "LoadImaged" and "IM" in params.get("keys", []):
            order = params.get("dimension_order_out")
    return sum(a in "ZYX" for a in str(order))


def _mmv_prepared(cfg: dict, image: np.ndarray) -> np.ndarray:
    """The input image as mmv_im2im's own transform pipeline prepares it.

    An inference config: ``ProjectTester``'s ``parse_monai_ops_vanilla`` on the image tensor. A
    training config: its data module's ``parse_monai_ops`` on the data dictionary (``IM`` the
    image, the other keys random arrays of its shape), then ``IM``. Loading, channel-adding and
    random-crop ops are left out (ebai is handed channel-first images and tiles them itself).
    """
    import copy

    from mmv_im2im.utils.for_transform import parse_monai_ops, parse_monai_ops_vanilla

    every = copy.deepcopy(cfg["data"]["preprocess"])
    ops = [op for op in every if op["func_name"] not in _LOADING and not op["func_name"].startswith("Rand")]
    keys = {k for op in every for k in (op.get("params") or {}).get("keys", [])}
    if not keys:
        out = parse_monai_ops_vanilla(ops)(torch.from_numpy(image))
    else:
        rng = np.random.default_rng(5)
        data = {k: torch.from_numpy(rng.uniform(0, 9, size=image.shape).astype(np.float32)) for k in keys}
        data["IM"] = torch.from_numpy(image)
        out = parse_monai_ops(ops)(data)["IM"]
    return np.asarray(torch.as_tensor(out).detach().cpu(), dtype=np.float32)


def _preset_adapter(path: Path) -> tuple[dict, MmvIm2ImAdapter | None]:
    """The config and the adapter built from it; ``None`` for configs the adapter refuses."""
    cfg = read_mmv_config(path)
    try:
        return cfg, MmvIm2ImAdapter(cfg, tile=[32, 64, 64] if _spatial_axes(cfg) == 3 else [64, 64])
    except InputError as exc:
        assert "not supported" in str(exc) or "one value per image" in str(exc), exc
        return cfg, None


@pytest.mark.parametrize("path", _presets(), ids=lambda p: p.stem)
def test_prepared_input_equals_mmv_im2im_on_every_bundled_config(path: Path) -> None:
    cfg, adapter = _preset_adapter(path)
    if adapter is None:
        pytest.skip(f"the adapter does not build {path.name} (not an FCN image-to-image model)")
    spec = adapter.input_spec
    shape = (spec.channels, 36, 40, 48) if spec.ndim == 3 else (spec.channels, 40, 48)
    rng = np.random.default_rng(4)
    image = (rng.gamma(2.0, 30.0, size=shape) + rng.uniform(0, 50, size=shape[1:])).astype(np.float32)
    expected = _mmv_prepared(cfg, image)
    np.testing.assert_allclose(adapter.preprocess(image), expected, rtol=1e-6, atol=1e-6)


def test_bundled_configs_are_covered() -> None:
    # the comparison above skips the configs the adapter refuses (other frameworks): these it builds
    built = {p.stem for p in _presets() if _preset_adapter(p)[1] is not None}
    fcn = {"inference_labelfree_3d", "train_labelfree_2d", "train_labelfree_3d", "train_semanticseg_2d"}
    fcn |= {"train_semanticseg_3d", "train_modality_transfer_3d", "train_AttentionUnet_Segmentation_regularizers"}
    assert built == {f"preset_{name}" for name in fcn}


def _labelfree_2d() -> Path:
    return next(p for p in _presets() if p.stem == "preset_train_labelfree_2d")


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (None, {"kind": "percentile", "low": 0.5, "high": 99.5, "out_low": -1.0, "out_high": 1.0}),
        (
            {
                "module_name": "monai.transforms",
                "func_name": "ScaleIntensityd",
                "params": {"keys": ["IM"], "minv": -1, "maxv": 3},
            },
            {"kind": "minmax", "out_low": -1.0, "out_high": 3.0},
        ),
    ],
)
def test_recorded_normalisation_keeps_the_output_range(op: dict | None, expected: dict) -> None:
    cfg = read_mmv_config(_labelfree_2d())
    if op is not None:  # the input's op replaced; the target's (GT) op stays and must not count
        cfg["data"]["preprocess"] = [
            op if (o.get("params") or {}).get("keys") == ["IM"] else o for o in cfg["data"]["preprocess"]
        ]
    adapter = MmvIm2ImAdapter(cfg, tile=[64, 64])
    recorded = adapter.input_spec.normalization
    assert {k: v for k, v in recorded.to_dict().items() if k in expected} == expected
    image = np.random.default_rng(6).gamma(2.0, 30.0, size=(1, 40, 48)).astype(np.float32)
    # what runs without mmv_im2im installed gives what mmv_im2im's own op gives
    np.testing.assert_allclose(recorded.apply(image), adapter.preprocess(image), rtol=1e-5, atol=1e-5)


def test_evaluate_scores_classes_and_channels(tmp_path: Path) -> None:
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot
    from skimage.metrics import structural_similarity

    adapter = MmvIm2ImAdapter(_config(tmp_path))
    labels = np.random.default_rng(7).integers(0, 4, size=(4, 16, 16)).astype(np.uint8)
    swapped = np.where(labels > 0, labels % 3 + 1, 0).astype(np.uint8)

    def hot(x: np.ndarray) -> object:
        return one_hot(torch.from_numpy(x.astype(np.int64))[None, None], num_classes=4)

    monai = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)(hot(swapped), hot(labels))
    assert adapter.evaluate(swapped, labels)["dice"] == pytest.approx(float(monai.mean())) == 0.0
    rng = np.random.default_rng(8)
    for channels in (3, 8):  # each channel scored over the spatial axes alone
        ref = rng.normal(size=(channels, 8, 16, 16)).astype(np.float32)
        pred = ref + 0.5 * rng.normal(size=ref.shape).astype(np.float32)
        expected = np.mean(
            [
                structural_similarity(p, r, data_range=float(max(p.max(), r.max()) - min(p.min(), r.min())))
                for p, r in zip(pred, ref, strict=True)
            ]
        )
        assert adapter.evaluate(pred, ref)["ssim"] == pytest.approx(expected, abs=1e-6)
    assert adapter.evaluate(ref[:, :4], ref[:, :4]) == {}  # 4 slices: shorter than the SSIM window


def test_2d_tile_for_a_3d_network_is_refused_at_compress_time(tmp_path: Path) -> None:
    pytest.importorskip("ebai.compress", reason="ebai-compress is not installed")
    from click.testing import CliRunner

    from ebai.core.cli import cli

    # a training config: no data.inference_input.reader_params.dimension_order_out
    path = next(p for p in _presets() if p.stem == "preset_train_labelfree_3d")
    (tmp_path / "adapter.yaml").write_text(f"config: {path}\n")
    (tmp_path / "images").mkdir()
    for i in range(3):
        np.save(tmp_path / "images" / f"{i}.npy", np.random.default_rng(i).uniform(0, 100, size=(96, 96)))
    args = ["compress", "--adapter", "mmv_im2im", "--adapter-config", str(tmp_path / "adapter.yaml")]
    args += ["--tile", "64,64", "--data", str(tmp_path / "images"), "--fp32", "-o", str(tmp_path / "out.ebai")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the tile [64, 64] is 2D but the LoadImaged of IM" in errors[0], result.output
    assert "give a tile of 3 sizes" in errors[0] and not (tmp_path / "out.ebai").exists()
    # the network itself is checked too, for configs that name no axes at all
    cfg = read_mmv_config(path)
    cfg["data"]["preprocess"] = [op for op in cfg["data"]["preprocess"] if op["func_name"] != "LoadImaged"]
    with pytest.raises(
        InputError, match=r"model.net is 3D \(its first layer is Conv3d\) but the tile \[64, 64\] is 2D"
    ):
        MmvIm2ImAdapter(cfg, tile=[64, 64]).load_module()


@pytest.mark.parametrize(
    ("module", "func", "params"),
    [
        ("subprocess", "Popen", "{args: [touch, MARKER]}"),
        ("pathlib", "Path.touch", "{}"),
        ("monai.transforms", "SaveImage", "{output_dir: MARKER}"),
    ],
    ids=["popen", "not-a-transform-module", "monai-op-that-writes"],
)
def test_only_allow_listed_ops_are_ever_built(tmp_path: Path, module: str, func: str, params: str) -> None:
    """The config travels in an artifact's manifest: an op it names outside the allow-list is refused, not imported."""
    marker = tmp_path / "marker"
    text = FNET.replace(
        "    - module_name: mmv_im2im.preprocessing.transforms\n      func_name: norm_around_center\n      params: {min_z: 32}",
        f"    - module_name: {module}\n      func_name: {func}\n      params: {params.replace('MARKER', str(marker))}",
    )
    adapter = MmvIm2ImAdapter(read_mmv_config(_config(tmp_path, text)))  # as rebuilt from a manifest
    with pytest.raises(InputError, match=rf"names {module}\.{func}, which is not a transform ebai applies"):
        adapter.preprocess(np.zeros((1, 16, 32, 32), np.float32))
    assert not marker.exists()
