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
