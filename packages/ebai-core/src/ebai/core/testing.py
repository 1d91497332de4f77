"""Contract checks for plugin authors: whether an adapter or a backend is usable by ebai.

Call them from any test (pytest or not); each raises ``AssertionError`` naming the broken rule and
the value seen, and returns what it built so a test can check more::

    from ebai.core.testing import check_adapter, check_backend

    def test_my_adapter_keeps_the_contract():
        check_adapter(MyAdapter(weights="tests/tiny.pt"))

    def test_my_backend_keeps_the_contract(tmp_path):
        check_backend(MyBackend(), "tests/tiny.onnx", spec, tmp_path)

ebai's own adapters and backends are tested with them. They import nothing heavy at import time;
:func:`check_adapter` imports torch only to run the network (``run_model=True``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.interfaces import PRECISIONS, Backend, ComparisonVariant, Engine, Lowering, ModelSource
from ebai.core.specs import InputSpec, OutputSpec

__all__ = ["check_adapter", "check_backend"]


def _sample(spec: InputSpec, seed: int) -> np.ndarray:
    """Return a raw sample of the tile's shape, image-like (positive, varying), for the checks."""
    rng = np.random.default_rng(seed)
    return (100.0 + 20.0 * rng.standard_normal((spec.channels, *spec.tile))).astype(np.float32)


def check_adapter(adapter: ModelSource, sample: np.ndarray | None = None, *, run_model: bool = True) -> dict[str, Any]:
    """Check that ``adapter`` keeps the :class:`~ebai.core.interfaces.ModelSource` contract.

    Checked: the attributes and their types; ``describe()`` is JSON-ready and, when it names an
    installed adapter, rebuilds an adapter that describes itself the same way (what ``ebai run``
    does from a manifest); ``preprocess`` keeps the layout and gives float32; and, with
    ``run_model``, ``load_module()`` gives a fresh module per call whose output on a batch of two
    tiles has the declared channels and spatial shape, and which ``postprocess`` and ``evaluate``
    accept.

    Parameters
    ----------
    adapter
        The adapter under test.
    sample
        A raw sample ``(C, *spatial)``; by default synthetic values of the tile's shape.
    run_model
        Build the network and run it (needs torch and the adapter's tool).

    Returns
    -------
    dict
        ``description``, ``preprocessed`` and, with ``run_model``, ``output`` (the raw network
        output of the first tile) and ``result`` (its postprocessed form).
    """
    assert isinstance(adapter, ModelSource), f"{adapter!r} lacks members of ebai.core.ModelSource"
    assert isinstance(adapter.name, str) and adapter.name, (
        f"adapter name must be a non-empty string, got {adapter.name!r}"
    )
    spec = adapter.input_spec
    assert isinstance(spec, InputSpec), f"input_spec must be an ebai.core.InputSpec, got {type(spec).__name__}"
    out_spec = adapter.output_spec
    assert isinstance(out_spec, OutputSpec), (
        f"output_spec must be an ebai.core.OutputSpec, got {type(out_spec).__name__}"
    )

    description = adapter.describe()
    assert isinstance(description, Mapping), f"describe() must return a mapping, got {type(description).__name__}"
    try:
        json.dumps(description)
    except TypeError as exc:
        msg = f"describe() is not JSON-ready ({exc}): {description!r}"
        raise AssertionError(msg) from exc
    _check_rebuild(description)

    raw = _sample(spec, 0) if sample is None else np.asarray(sample)
    pre = np.asarray(adapter.preprocess(raw))
    assert pre.dtype == np.float32, f"preprocess must return float32, got {pre.dtype}"
    assert pre.shape == raw.shape, f"preprocess must keep the layout {raw.shape}, got {pre.shape}"
    assert np.isfinite(pre).all(), "preprocess returned NaN or infinite values"
    out: dict[str, Any] = {"description": dict(description), "preprocessed": pre}
    if not run_model:
        return out

    import torch

    module = adapter.load_module()
    assert adapter.load_module() is not module, "load_module() must build a fresh module on every call"
    assert not module.training, "load_module() must return the module in eval mode"
    batch = np.stack([_sample(spec, 1), _sample(spec, 2)])
    batch = np.stack([adapter.preprocess(x) for x in batch]).astype(np.float32)
    with torch.inference_mode():
        y = module(torch.from_numpy(batch))
    assert isinstance(y, torch.Tensor), f"the module must return one tensor, got {type(y).__name__}"
    expected = (2, out_spec.channels, *spec.tile)
    assert tuple(y.shape) == expected, f"a batch {tuple(batch.shape)} must give {expected}, got {tuple(y.shape)}"
    first = y[0].float().numpy()
    result = np.asarray(adapter.postprocess(first))
    scores = adapter.evaluate(result, result)
    assert isinstance(scores, Mapping), f"evaluate() must return a mapping, got {type(scores).__name__}"
    for key, value in scores.items():
        assert isinstance(key, str) and np.isfinite(float(value)), f"evaluate() gave {key!r}: {value!r}"
    return {**out, "output": first, "result": result}


def _check_rebuild(description: Mapping[str, Any]) -> None:
    """Rebuild the adapter from its description through the registry, when it is registered here."""
    from ebai.core.plugins import ADAPTERS, build_adapter, plugin_names

    if description.get("adapter") not in plugin_names(ADAPTERS):
        return
    again = build_adapter(description).describe()
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(description)), (
        f"rebuilt from its description, the adapter describes itself as {again!r}, not {description!r}"
    )


def check_backend(
    backend: Backend,
    onnx_path: str | Path,
    input_spec: InputSpec,
    workdir: str | Path,
    *,
    precisions: Sequence[str] = ("fp32",),
    calibration: Sequence[np.ndarray] | None = None,
) -> dict[str, Engine | np.ndarray]:
    """Check that ``backend`` keeps the :class:`~ebai.core.interfaces.Backend` contract on one model.

    Checked: name, precisions and availability; every comparison variant is a
    :class:`~ebai.core.interfaces.ComparisonVariant` with its own key and loads; for each of
    ``precisions``, ``lower`` writes the files it lists into an empty folder and records its name
    and precision, and the loaded engine takes batches of one and two tiles, gives float32
    ``(N, C_out, *tile)`` with the same result for a tile alone or in a batch, runs
    ``infer_many`` in order, and closes.

    Parameters
    ----------
    backend
        The backend under test; it must be available here.
    onnx_path
        An fp32 ONNX model with a dynamic batch axis, input ``(N, C, *tile)`` of ``input_spec``.
    input_spec
        The model's input layout.
    workdir
        An existing folder for the lowered files (a pytest ``tmp_path``).
    precisions
        Precisions to lower to (``"int8"`` uses ``calibration``).
    calibration
        Preprocessed batches for int8; by default eight synthetic ones.

    Returns
    -------
    dict
        Precision -> the output of a batch of two tiles, for comparisons across precisions.
    """
    assert isinstance(backend, Backend), f"{backend!r} is not an ebai.core.Backend"
    assert isinstance(backend.name, str) and backend.name, (
        f"backend name must be a non-empty string, got {backend.name!r}"
    )
    assert set(backend.precisions) <= set(PRECISIONS), f"precisions {backend.precisions} are not among {PRECISIONS}"
    reason = backend.available()
    assert reason is None, f"backend {backend.name!r} is not available here: {reason}"
    variants = backend.comparison_variants()
    assert all(isinstance(v, ComparisonVariant) for v in variants), f"comparison_variants() gave {variants!r}"
    assert len({v.key for v in variants}) == len(variants), (
        f"comparison variant keys repeat: {[v.key for v in variants]}"
    )

    rng = np.random.default_rng(0)
    batch = rng.standard_normal(input_spec.batch_shape(2)).astype(np.float32)
    calib = (
        list(calibration)
        if calibration is not None
        else [rng.standard_normal(input_spec.batch_shape(1)).astype(np.float32) for _ in range(8)]
    )
    outputs: dict[str, Any] = {}
    for precision in precisions:
        assert precision in backend.precisions, (
            f"{backend.name!r} cannot make {precision}: it offers {backend.precisions}"
        )
        folder = Path(workdir) / f"{backend.name}-{precision}"
        folder.mkdir()
        lowering = backend.lower(Path(onnx_path), folder, precision=precision, input_spec=input_spec, calibration=calib)
        assert isinstance(lowering, Lowering), (
            f"lower() must return an ebai.core.Lowering, got {type(lowering).__name__}"
        )
        assert (lowering.backend, lowering.precision) == (backend.name, precision), (
            f"lower() recorded {lowering.backend}:{lowering.precision}, not {backend.name}:{precision}"
        )
        assert lowering.entry in lowering.files, f"entry {lowering.entry!r} is not among the files {lowering.files}"
        missing = [f for f in lowering.files if not (folder / f).is_file()]
        assert not missing, f"lower() lists files it did not write: {missing}"
        outputs[precision] = _check_engine(backend.load(folder, lowering), batch, input_spec)
        if precision == "fp32":
            for variant in variants:
                _check_engine(backend.load(folder, lowering, **dict(variant.options)), batch, input_spec)
    return outputs


def _check_engine(engine: Engine, batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    assert isinstance(engine, Engine), f"load() must return an ebai.core.Engine, got {type(engine).__name__}"
    with engine:
        both = np.asarray(engine.infer(batch))
        assert both.dtype == np.float32, f"infer must return float32, got {both.dtype}"
        assert both.shape[0] == 2 and both.shape[2:] == tuple(spec.tile), (
            f"a batch {batch.shape} must give (2, C_out, *{spec.tile}), got {both.shape}"
        )
        alone = np.asarray(engine.infer(batch[1:]))
        scale = float(np.abs(both[1]).max()) or 1.0
        assert np.allclose(alone[0], both[1], rtol=0, atol=1e-3 * scale), (
            "a tile gives a different result alone than in a batch: the batch axis is not independent"
        )
        many = list(engine.infer_many([batch[:1], batch[1:]]))
        assert len(many) == 2 and np.allclose(many[1], alone, rtol=0, atol=1e-3 * scale), "infer_many broke the order"
    return both
