"""End to end: each built-in adapter's network, unmodified, through prune 0.5 + int8 on OpenVINO.

For every adapter the compressed artifact's OpenVINO int8 output must keep Pearson >= 0.99 to the
pruned fp32 model (``reference.onnx`` in the artifact, run by ONNX Runtime) on tiles of images
never seen by compression; for cellpose, the masks of the compressed model must reach AP50 >= 0.9
against the original network's masks on synthetic nuclei.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
compress_mod = pytest.importorskip("ebai.compress", reason="ebai-compress is not installed")
pytest.importorskip("ebai.openvino", reason="ebai-openvino is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime runs the pruned fp32 reference.onnx")

from ebai.core import Artifact  # noqa: E402
from ebai.core.data import ArraySource  # noqa: E402
from ebai.core.metrics import average_precision, pearson  # noqa: E402


def _recipe(steps: int = 60, threshold: float = 0.2, metric: str = "pearson") -> Any:
    """Prune 0.5 (L1) + distillation + int8 on OpenVINO.

    The guard compares with the ORIGINAL network; a randomly initialised network with half its
    channels pruned is only partly recovered by a few dozen distillation steps, so its threshold
    is low here. What these tests check is the int8 artifact against the pruned fp32 network.
    """
    return compress_mod.Recipe.from_dict(
        {
            "prune": {"method": "l1", "ratio": 0.5},
            "fine_tune": {"method": "distill", "steps": steps, "batch_size": 4, "lr": 2e-3},
            "calibration": {"samples": 16},
            "fidelity": {"metric": metric, "threshold": threshold, "held_out": 2, "tiles": 4},
            "targets": ["openvino"],
            "precision": "int8",
            "seed": 0,
        }
    )


def _int8_vs_reference(artifact: Artifact, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of the artifact's OpenVINO int8 target and of its pruned fp32 reference.onnx."""
    import onnxruntime as ort

    with artifact.load_engine("openvino", "int8") as engine:
        int8 = np.asarray(engine.infer(batch))
    session = ort.InferenceSession(str(artifact.path / artifact.manifest.reference), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fp32 = np.asarray(session.run(None, {name: batch})[0])
    return int8, fp32


def _test_tiles(adapter: Any, images: list[np.ndarray]) -> np.ndarray:
    """Preprocessed tiles (the top-left tile of each image) of images compression never saw."""
    tile = adapter.input_spec.tile
    out = []
    for image in images:
        x = adapter.preprocess(image)
        out.append(x[(slice(None), *(slice(0, t) for t in tile))])
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def _check_artifact(adapter: Any, out: Path, unseen: list[np.ndarray]) -> tuple[Artifact, np.ndarray, np.ndarray]:
    artifact = Artifact.open(out)
    manifest = artifact.manifest
    assert manifest.source == adapter.describe()
    assert manifest.pruning is not None and manifest.pruning.get("ratio", 0.5) == 0.5
    assert manifest.target("openvino", "int8").fidelity.passed
    batch = _test_tiles(adapter, unseen)
    int8, fp32 = _int8_vs_reference(artifact, batch)
    assert int8.shape == fp32.shape == (len(unseen), adapter.output_spec.channels, *adapter.input_spec.tile)
    score = pearson(int8, fp32)
    print(f"{adapter.name}: Pearson(int8 OpenVINO, pruned fp32 ONNX) = {score:.4f}")
    assert score >= 0.99, f"{adapter.name}: int8 vs pruned fp32 Pearson {score:.4f} < 0.99"
    return artifact, batch, int8


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], count: int = 12) -> np.ndarray:
    """A smooth random image of bright blobs (channels first, one channel)."""
    from scipy import ndimage

    image = np.zeros(shape, np.float32)
    for _ in range(count):
        index = tuple(int(rng.integers(0, s)) for s in shape)
        image[index] = rng.uniform(50, 200)
    image = ndimage.gaussian_filter(image, 2.0) * 30 + rng.normal(10, 2, size=shape).astype(np.float32)
    return image[np.newaxis]


@pytest.mark.slow
def test_torch_adapter_compresses(tmp_path: Path, net_file: Path) -> None:
    import torch

    from ebai.adapters import TorchAdapter

    torch.manual_seed(0)
    adapter = TorchAdapter(
        f"{net_file}:build", axes="yx", channels=1, tile=64, normalization="percentile", model_kwargs={"width": 16}
    )
    rng = np.random.default_rng(1)
    images = [_blobs(rng, (96, 96)) for _ in range(6)]
    compress_mod.compress(adapter, ArraySource(images), _recipe(), tmp_path / "torch.ebai")
    _check_artifact(adapter, tmp_path / "torch.ebai", [_blobs(rng, (64, 64)) for _ in range(3)])


@pytest.mark.slow
def test_monai_unet_compresses(tmp_path: Path) -> None:
    import torch

    from ebai.adapters import MonaiAdapter

    torch.manual_seed(0)
    adapter = MonaiAdapter(
        "UNet",
        {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 1,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
            "norm": "batch",
        },
        tile=(16, 32, 32),
        normalization="percentile",
    )
    rng = np.random.default_rng(2)
    images = [_blobs(rng, (24, 48, 48), count=20) for _ in range(6)]
    compress_mod.compress(adapter, ArraySource(images), _recipe(), tmp_path / "monai.ebai")
    _check_artifact(adapter, tmp_path / "monai.ebai", [_blobs(rng, (16, 32, 32), count=8) for _ in range(3)])


@pytest.mark.slow
def test_mmv_im2im_fnet_compresses(tmp_path: Path) -> None:
    pytest.importorskip("mmv_im2im", reason="mmv_im2im is not installed (pip install 'ebai-adapters[mmv_im2im]')")
    import torch

    from ebai.adapters import MmvIm2ImAdapter

    config = tmp_path / "fnet.yaml"
    config.write_text(
        "mode: inference\n"
        "data:\n"
        "  inference_input: {reader_params: {dimension_order_out: ZYX}}\n"
        "  preprocess:\n"
        "    - {module_name: monai.transforms, func_name: NormalizeIntensity, params: {}}\n"
        "model:\n"
        "  framework: FCN\n"
        "  net:\n"
        "    module_name: mmv_im2im.models.nets.fnet_nn_3d\n"
        "    func_name: Net\n"
        "    params: {depth: 2, mult_chan: 8, in_channels: 1, out_channels: 1}\n"
        "  model_extra:\n"
        "    sliding_window_params: {roi_size: [16, 32, 32], overlap: 0.2, mode: gaussian}\n"
    )
    torch.manual_seed(0)
    adapter = MmvIm2ImAdapter(config)
    rng = np.random.default_rng(3)
    images = [_blobs(rng, (24, 48, 48), count=20) for _ in range(6)]
    compress_mod.compress(adapter, ArraySource(images), _recipe(steps=20), tmp_path / "mmv.ebai")
    _check_artifact(adapter, tmp_path / "mmv.ebai", [_blobs(rng, (16, 32, 32), count=8) for _ in range(3)])


@pytest.mark.slow
def test_cellpose_compresses_and_keeps_masks(tmp_path: Path, nuclei: Any, cellpose_weights: Path) -> None:
    pytest.importorskip("cellpose", reason="cellpose is not installed (pip install 'ebai-adapters[cellpose]')")

    from ebai.adapters import CellposeAdapter

    adapter = CellposeAdapter(cellpose_weights, tile=64)
    images = [nuclei.nuclei_image(seed, size=96, count=14)[0][np.newaxis] for seed in range(200, 208)]
    recipe = _recipe(steps=40, threshold=0.9, metric="ap50")
    compress_mod.compress(adapter, ArraySource(images), recipe, tmp_path / "cellpose.ebai")
    unseen = [nuclei.nuclei_image(seed)[0][np.newaxis] for seed in range(300, 306)]
    _, batch, int8 = _check_artifact(adapter, tmp_path / "cellpose.ebai", unseen)

    original = adapter.torch_infer()(batch)
    scores = [
        average_precision(adapter.postprocess(c), adapter.postprocess(o)) for c, o in zip(int8, original, strict=True)
    ]
    print(f"cellpose: AP50(compressed masks, original masks) = {np.mean(scores):.3f} per image {np.round(scores, 3)}")
    assert np.mean(scores) >= 0.9

    # `ebai run` rebuilds the adapter from the manifest and writes label masks, tiled over a larger image
    import tifffile
    from click.testing import CliRunner

    from ebai.core.cli import cli

    large = nuclei.nuclei_image(310, size=112, count=16)[0]
    tifffile.imwrite(tmp_path / "large.tif", large)
    args = ["run", str(tmp_path / "cellpose.ebai"), str(tmp_path / "large.tif"), "-o", str(tmp_path / "masks")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    masks = tifffile.imread(tmp_path / "masks" / "large.tif")
    assert masks.shape == large.shape and masks.dtype.kind == "u" and masks.max() >= 10
    expected = adapter.predict(large[np.newaxis])
    run_score = average_precision(masks, expected)
    print(f"cellpose: AP50(ebai run masks, original adapter.predict masks) = {run_score:.3f}")
    assert run_score >= 0.9
