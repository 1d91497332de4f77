"""The ``cellpose`` adapter: cellpose 3's CPnet, its normalisation and its flows-to-masks dynamics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cellpose", reason="cellpose is not installed (pip install 'ebai-adapters[cellpose]')")

from cellpose import dynamics, transforms  # noqa: E402
from cellpose.resnet_torch import CPnet  # noqa: E402

from ebai.adapters import CellposeAdapter, build_adapter  # noqa: E402
from ebai.core import InputError, MissingDependencyError  # noqa: E402
from ebai.core.metrics import average_precision  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),  # raised inside cellpose 3
]


def test_wrapper_returns_only_the_flows_of_the_unmodified_cpnet() -> None:
    torch.manual_seed(0)
    adapter = CellposeAdapter(nbase=[2, 8, 16, 32], tile=64)
    module = adapter.load_module()
    assert isinstance(module.net, CPnet) and type(module.net) is CPnet
    x = torch.randn(2, 1, 64, 64)
    out = module(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 64, 64)
    # the wrapper feeds the zero second channel cellpose adds to grayscale images
    direct = module.net(torch.cat([x, torch.zeros_like(x)], dim=1))[0]
    torch.testing.assert_close(out, direct)
    assert adapter.input_spec.divisor == 4 and adapter.input_spec.channels == 1


def test_random_initialisation_is_the_same_on_every_build() -> None:
    adapter = CellposeAdapter(nbase=[2, 8, 16, 32], tile=32)
    a, b = adapter.load_module(), adapter.load_module()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_two_channel_images_need_no_padding() -> None:
    adapter = CellposeAdapter(nbase=[2, 8, 16, 32], channels=2, tile=32)
    module = adapter.load_module()
    assert module.pad_channels == 0
    assert module(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_architecture_is_read_from_weights(tmp_path: Path, cellpose_weights: Path) -> None:
    adapter = CellposeAdapter(cellpose_weights, tile=64)
    assert adapter.nbase == [2, 8, 16, 32] and adapter.nout == 3 and adapter.sz == 3
    state = torch.load(cellpose_weights, weights_only=True)
    module = adapter.load_module()
    torch.testing.assert_close(module.net.state_dict()["output.2.weight"], state["output.2.weight"])
    with pytest.raises(InputError, match="does not match the weights"):
        CellposeAdapter(cellpose_weights, nbase=[2, 16, 32, 64])
    torch.save({"W2": torch.zeros(1), "encoder.x": torch.zeros(1)}, tmp_path / "cpsam.pt")
    with pytest.raises(InputError, match="cellpose 4"):
        CellposeAdapter(tmp_path / "cpsam.pt")


def test_builtin_model_names_are_looked_up_without_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cellpose_weights: Path
) -> None:
    from cellpose import models

    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    with pytest.raises(InputError, match="run cellpose once"):
        CellposeAdapter("nuclei")
    (tmp_path / "nucleitorch_0").write_bytes(cellpose_weights.read_bytes())
    adapter = CellposeAdapter("nuclei", tile=64)
    assert adapter.weights == str((tmp_path / "nucleitorch_0").resolve())
    with pytest.raises(InputError, match="do not exist"):
        CellposeAdapter("some/where/model_file")


def test_preprocess_is_cellpose_normalisation(nuclei: Any) -> None:
    image, _ = nuclei.nuclei_image(0)
    adapter = CellposeAdapter(nbase=[2, 8, 16, 32], tile=64)
    out = adapter.preprocess(image[np.newaxis])
    expected = transforms.normalize_img(image[..., np.newaxis].copy(), normalize=True, percentile=(1.0, 99.0))[..., 0]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)
    # the recorded normalisation (for engines run without cellpose) gives the same numbers
    np.testing.assert_allclose(
        adapter.input_spec.normalization.apply(image[np.newaxis])[0], expected, rtol=1e-4, atol=1e-4
    )


def test_postprocess_turns_true_flows_into_the_true_masks(nuclei: Any) -> None:
    _, labels = nuclei.nuclei_image(3)
    flows = dynamics.masks_to_flows(labels)
    # what a perfect network outputs: 5x the flows (cellpose's training target) and cell logits
    output = np.concatenate([5.0 * flows, np.where(labels > 0, 5.0, -5.0)[np.newaxis]]).astype(np.float32)
    adapter = CellposeAdapter(nbase=[2, 8, 16, 32], tile=64)
    masks = adapter.postprocess(output)
    assert masks.shape == labels.shape and masks.max() == labels.max()
    assert adapter.evaluate(masks, labels) == {"ap50": 1.0}
    assert average_precision(np.zeros_like(labels), labels) == 0.0
    with pytest.raises(InputError, match="flows and cell probability"):
        adapter.postprocess(output[:2])


def test_trained_fixture_segments_synthetic_nuclei(nuclei: Any, cellpose_weights: Path) -> None:
    adapter = CellposeAdapter(cellpose_weights, tile=64)
    scores = []
    for seed in range(400, 403):
        image, labels = nuclei.nuclei_image(seed, size=96, count=12)
        scores.append(adapter.evaluate(adapter.predict(image[np.newaxis]), labels)["ap50"])
    assert np.mean(scores) >= 0.9, scores


def test_description_round_trip(tmp_path: Path, cellpose_weights: Path, nuclei: Any) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(cellpose_weights.read_bytes())
    adapter = CellposeAdapter(weights, tile=64, flow_threshold=0.0, min_size=5)
    again = build_adapter(adapter.describe())
    assert isinstance(again, CellposeAdapter)
    assert again.describe() == adapter.describe()
    assert again.input_spec == adapter.input_spec
    # on a machine without the weights file the description still gives pre/postprocessing
    weights.unlink()
    moved = build_adapter(adapter.describe())
    _, labels = nuclei.nuclei_image(4)
    output = np.concatenate([5.0 * dynamics.masks_to_flows(labels), np.where(labels > 0, 5.0, -5.0)[None]]).astype(
        np.float32
    )
    np.testing.assert_array_equal(moved.postprocess(output), adapter.postprocess(output))
    with pytest.raises(InputError, match="does not exist"):
        moved.load_module()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"channels": 3}, "use 1 to 2"), ({"nout": 2}, "nout >= 3"), ({"nbase": [2, 8]}, "too short")],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        CellposeAdapter(**kwargs)


def test_cellpose_4_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # cellpose/__init__ re-exports the version string as ``cellpose.version``: patch the module
    monkeypatch.setattr(sys.modules["cellpose.version"], "version", "4.0.1")
    with pytest.raises(MissingDependencyError, match=r"pip install 'cellpose>=3.0,<4'"):
        CellposeAdapter(nbase=[2, 8, 16, 32]).load_module()
