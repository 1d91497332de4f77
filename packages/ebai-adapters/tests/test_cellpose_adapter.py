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


# ------------------------------------------------------------------ cellpose itself as the oracle
class _Style256(torch.nn.Module):
    """A CPnet whose style vector is zero-padded to the 256 entries ``cellpose.core.run_net`` stores.

    The small CPnets here end at 32 or 64 channels; the flows, all the masks come from, are the
    network's own.
    """

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net, self.nout, self.mkldnn = net, net.nout, False

    @property
    def device(self) -> Any:
        return next(self.parameters()).device

    def forward(self, x: Any) -> tuple[Any, Any]:
        flows, style = self.net(x)[:2]
        return flows, torch.nn.functional.pad(style, (0, 256 - style.shape[1]))


def _cellpose_eval_masks(adapter: CellposeAdapter, module: Any, image: np.ndarray) -> np.ndarray:
    """Masks of ``CellposeModel.eval`` with the adapter's CPnet and settings, on a 2D image."""
    from cellpose import models

    model = models.CellposeModel(
        gpu=False, pretrained_model=False, nchan=adapter.nbase[0], diam_mean=adapter.diam_mean, mkldnn=False
    )
    model.net = _Style256(module.net)  # the same CPnet
    masks, _, _ = model.eval(
        image,
        diameter=adapter.diam_mean,  # no rescaling, as the adapter
        bsize=adapter.input_spec.tile[0],
        tile_overlap=adapter.input_spec.overlap,
        normalize={"percentile": list(adapter.percentile)},
        flow_threshold=adapter.flow_threshold,
        cellprob_threshold=adapter.cellprob_threshold,
        min_size=adapter.min_size,
        max_size_fraction=adapter.max_size_fraction,
        niter=adapter.niter,
    )
    return np.asarray(masks)


@pytest.mark.parametrize("shape", [(250, 301), (100, 130), (224, 224)])
def test_masks_equal_cellpose_eval_on_the_fixture(nuclei: Any, cellpose_weights: Path, shape: tuple[int, int]) -> None:
    # sides not multiples of 16, larger and smaller than cellpose's 224-pixel tile
    image = nuclei.nuclei_image(7, size=304, count=60)[0][: shape[0], : shape[1]]
    adapter = CellposeAdapter(cellpose_weights)
    module = adapter.load_module()
    expected = _cellpose_eval_masks(adapter, module, image)
    masks = adapter.predict(image[np.newaxis], adapter.torch_infer(module), batch_size=8)
    assert expected.max() >= 5
    np.testing.assert_array_equal(masks, expected)
    # the default (torch) inference runs cellpose's smaller tile where the padded image is smaller
    np.testing.assert_array_equal(adapter.predict(image[np.newaxis], batch_size=8), expected)


def test_engines_get_only_the_tile_and_padding_is_cellposes(nuclei: Any, cellpose_weights: Path) -> None:
    from cellpose import transforms as cp_transforms

    adapter = CellposeAdapter(cellpose_weights, tile=64)
    module = adapter.torch_infer()
    seen: list[np.ndarray] = []

    def engine(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return module(batch)

    image = nuclei.nuclei_image(3, size=96)[0][:40, :50]
    x = adapter.preprocess(image[np.newaxis])
    out = adapter.run_tiled(x, engine, batch_size=2)
    assert out.shape == (3, 40, 50) and {b.shape[1:] for b in seen} == {(1, 64, 64)}
    # cellpose pads 40 x 50 with zeros to 64 x 80: one row of two 64-pixel tiles
    assert cp_transforms.get_pad_yx(40, 50) == (12, 12, 15, 15)
    assert sum(len(b) for b in seen) == 2
    first = seen[0][0, 0]
    assert np.all(first[:12] == 0) and np.all(first[52:] == 0) and np.all(first[:, :15] == 0)
    np.testing.assert_array_equal(first[12:52, 15:64], x[0, :, :49])


def test_tile_must_be_square() -> None:
    with pytest.raises(InputError, match="not square"):
        CellposeAdapter(nbase=[2, 8, 16, 32], tile=[64, 128])
    assert CellposeAdapter(nbase=[2, 8, 16, 32], tile="64").input_spec.tile == (64, 64)


def _nuclei_task() -> Any:
    """The nuclei reference task (package ebai-tasks) and its adapter with the shipped network."""
    tasks = pytest.importorskip("ebai.tasks", reason="ebai-tasks is not installed")
    return tasks.get_task("nuclei"), tasks.TaskAdapter("nuclei")


@pytest.mark.parametrize("shape", [None, (250, 301)])
def test_nuclei_task_masks_equal_cellpose_eval(shape: tuple[int, int] | None) -> None:
    task, adapter = _nuclei_task()
    from ebai.tasks import TEST_SEED

    tool = task.tool_adapter()
    module = adapter.load_module()
    count = task.test_count if shape is None else 1
    inputs, _ = task.make_samples(count, TEST_SEED, shape or task.test_shape)
    for x in inputs:
        expected = _cellpose_eval_masks(tool, module, x[0])
        masks = adapter.predict(x, adapter.torch_infer(module), batch_size=8)
        assert expected.max() >= 10
        np.testing.assert_array_equal(masks, expected)


def test_nuclei_task_cellpose_adapter_refuses_to_run_a_random_network() -> None:
    task, _ = _nuclei_task()
    image = task.make_samples(1, 0, (64, 64))[0][0]
    with pytest.raises(InputError, match="holds no weights") as err:
        task.tool_adapter().predict(image)
    assert "\n" not in str(err.value)
