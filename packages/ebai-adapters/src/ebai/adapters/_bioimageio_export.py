"""Writing a compressed artifact back out as a bioimage.io model package (format 0.5).

The package's weights are the artifact's fp32 ONNX (``reference.onnx``: the pruned and fine-tuned
network, or the original when nothing was pruned), which bioimageio.core runs with ONNX Runtime.
The backend files go along as attachments: the OpenVINO IR (int8), and an int8 QDQ ONNX where the
artifact holds one and ONNX Runtime runs it within the package's reproducibility tolerance.
The description of the original package is carried over (authors, cite, license, covers, tags,
pre- and post-processing), with the original as ``parent`` where it has a bioimage.io id; new test
outputs are made by running the compressed network through bioimageio.core itself. A documentation
page holds the ebai benchmark table and the recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.errors import InputError

__all__ = ["export_bioimageio"]


def _staged(src: Any, folder: Path, name: str) -> Path:
    """Copy a file of the original package (local, in a zip, or a URL already cached) into ``folder``."""
    from bioimageio.spec.common import FileDescr
    from bioimageio.spec.utils import get_reader

    reader = get_reader(src.source if isinstance(src, FileDescr) else src)
    path = folder / name
    path.write_bytes(reader.read())
    return path


def _axes(original_axes: Any, spatial: str, tile: tuple[int, ...] | None) -> list[Any]:
    """Return the original tensor's axes in ebai's order (batch, channel, z, y, x), which the ONNX network takes.

    With ``tile`` (inputs whose network has static spatial sizes), the space axes are fixed to it;
    without, they keep the original's sizes (``min + n*step``, or a reference to the input).
    """
    from bioimageio.spec.model import v0_5

    by_kind = {a.type: a for a in original_axes if a.type in ("batch", "channel")}
    by_id = {str(a.id): a for a in original_axes if a.type == "space"}
    channel = by_kind.get("channel") or v0_5.ChannelAxis(channel_names=[v0_5.Identifier("channel0")])
    space = [by_id[a] for a in spatial]
    if tile is not None:
        space = [a.model_copy(update={"size": int(t)}) for a, t in zip(space, tile, strict=True)]
    return [v0_5.BatchAxis(), channel, *space]


def _valid_sizes(original_axes: Any, spatial: str, tile: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Spatial sizes the package's input axes allow, to try a dynamic network on: the smallest and one step above the tile."""
    from bioimageio.spec.model import v0_5

    by_id = {str(a.id): a for a in original_axes if a.type == "space"}
    low, high = [], []
    for letter, t in zip(spatial, tile, strict=True):
        size = by_id[letter].size
        if isinstance(size, v0_5.ParameterizedSize):
            low.append(int(size.min))
            high.append(int(t) + int(size.step))
        else:
            low.append(int(t))
            high.append(int(t))
    return [s for s in dict.fromkeys([tuple(low), tuple(high)]) if s != tuple(tile)]


def _dynamic_onnx(
    source: Path, dest: Path, spatial: str, x: np.ndarray, sizes: list[tuple[int, ...]]
) -> tuple[bool, str]:
    """Write ``source`` to ``dest`` with symbolic space axes, where ONNX Runtime shows the network allows it.

    The artifact's ONNX is exported with static space sizes (only the batch is dynamic); a
    convolutional network usually computes the same for any valid size, but a shape baked into
    the graph (a Reshape, a Resize to fixed sizes) would not. So the rewritten network must give
    the static one's output on ``x`` (one preprocessed batch at the tile) and run at every size in
    ``sizes`` with an output of the input's space size; otherwise ``dest`` is left unwritten.

    Returns
    -------
    tuple
        Whether ``dest`` was written, and what was seen (for the documentation page).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(source))
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2 + len(spatial):
            return False, f"its {value.name!r} has {len(dims)} axes, not batch, channel and {', '.join(spatial)}"
        for dim, letter in zip(dims[2:], spatial, strict=True):
            dim.ClearField("dim_value")
            dim.dim_param = letter
    del model.graph.value_info[:]  # intermediate shapes inferred at the tile's size
    candidate = dest.with_name(f".{dest.name}.dynamic")
    onnx.save(model, str(candidate))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        static = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        dynamic = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
        name = dynamic.get_inputs()[0].name
        want = static.run(None, {static.get_inputs()[0].name: x})[0]
        got = dynamic.run(None, {name: x})[0]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            candidate.unlink()
            return False, "with symbolic space axes it computes other values at the tile's size"
        for size in sizes:
            probe = np.zeros((1, x.shape[1], *size), dtype=np.float32)
            out = dynamic.run(None, {name: probe})[0]
            if tuple(out.shape[2:]) != tuple(size):
                candidate.unlink()
                return False, f"at input size {size} it gives an output of size {tuple(out.shape[2:])}"
    except Exception as exc:  # ONNX Runtime refuses the graph or a size: keep the static network
        candidate.unlink(missing_ok=True)
        return False, f"ONNX Runtime cannot run it with symbolic space axes ({type(exc).__name__})"
    os.replace(candidate, dest)
    tried = ", ".join("x".join(map(str, s)) for s in sizes) or "the tile only"
    return True, f"checked in ONNX Runtime at {tried} besides the tile"


def _onnx_runs_within(path: Path, x: np.ndarray, want: np.ndarray, tol: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether ONNX Runtime's output for ``x`` matches ``want`` within the package's tolerance."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as exc:
        return False, f"ONNX Runtime cannot run it ({type(exc).__name__})"
    bad = np.abs(got - want) > tol["absolute_tolerance"] + tol["relative_tolerance"] * np.abs(want)
    per_million = 1e6 * float(bad.mean())
    ok = per_million <= tol["mismatched_elements_per_million"]
    return ok, f"{per_million:.0f} mismatched elements per million (allowed {tol['mismatched_elements_per_million']})"


def _lower_qdq(reference: Path, scratch: Path, adapter: Any, data: Sequence[str | Path], samples: int) -> Path:
    """Write an int8 QDQ copy of ``reference`` into ``scratch``, calibrated on tiles of the user's images.

    ebai-tensorrt's int8 lowering with ONNX Runtime's quantizer (symmetric int8, weights per
    channel, activations per tensor): it writes ONNX only and needs neither TensorRT nor a GPU,
    so its backend is loaded without the availability check that running an engine needs.
    """
    from ebai.core.data import ImageFiles
    from ebai.core.plugins import BACKENDS, get_plugin
    from ebai.core.tiling import fit_tile

    spec = adapter.input_spec
    images = [adapter.preprocess(np.asarray(x)) for x in ImageFiles(list(data), spec)]
    if not images:
        msg = "--data holds no images to calibrate the int8 QDQ network on: give a folder of your images"
        raise InputError(msg)
    rng = np.random.default_rng(0)
    calibration = [fit_tile(images[i % len(images)], spec.tile, rng)[np.newaxis] for i in range(samples)]
    backend = get_plugin(BACKENDS, "tensorrt").load()()
    lowering = backend.lower(
        reference,
        scratch,
        precision="int8",
        input_spec=spec,
        calibration=calibration,
        options={"quantizer": "onnxruntime", "calibration_method": "minmax"},
    )
    return scratch / lowering.entry


def _attach_qdq(
    qdq: Path, label: str, stage: Path, weights: Path, x: np.ndarray, tolerance: Mapping[str, Any], notes: list[str]
) -> list[Any]:
    """Return the QDQ network as an attachment where ONNX Runtime runs it within the package's tolerance of the weights."""
    import onnxruntime as ort
    from bioimageio.spec.model import v0_5

    fp32 = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    want = fp32.run(None, {fp32.get_inputs()[0].name: x})[0]
    ok, how = _onnx_runs_within(qdq, x, want, tolerance)
    if not ok:
        notes.append(f"the int8 QDQ network ({label}) is not included: in ONNX Runtime {how}.")
        return []
    dest = stage / "ebai_int8_qdq.onnx"
    shutil.copyfile(qdq, dest)
    notes.append(f"attachment `ebai_int8_qdq.onnx`: the int8 QDQ network ({label}); in ONNX Runtime {how}.")
    return [v0_5.FileDescr(source=dest)]


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _documentation(
    manifest: Any, original: Any, benchmark: Mapping[str, Any] | None, notes: list[str], recipe: Mapping[str, Any]
) -> str:
    from ebai.core.commands.benchmark import benchmark_table

    lines = [
        f"# {original.name}, compressed by ebai",
        "",
        f"This model is the bioimage.io model **{original.name}**"
        + (f" (`{original.id}`)" if original.id else "")
        + " made smaller and faster by [ebai](https://pypi.org/project/ebai-compress/): "
        + "structured pruning, fine-tuning by distillation from the original, and int8 quantization. "
        + "Its weights are the compressed network in fp32 ONNX; the int8 OpenVINO IR is attached.",
        "",
        "## Validation",
        "",
        "ebai's accuracy guard compares every compressed network with the original on held-out tiles "
        "(the user's images and the original package's test input), never seen during compression:",
        "",
        "| network | precision | Pearson vs original | max abs error | criterion | passed |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    pruning = manifest.pruning or {}
    ref = pruning.get("fidelity")
    if ref:
        lines.append(
            f"| pruned network (these ONNX weights) | fp32 | {ref['pearson']:.4f} | {ref['max_abs_error']:.3g} | "
            f"{ref['metric']} >= {ref['threshold']:g} | {'yes' if ref['passed'] else 'no'} |"
        )
    for t in manifest.targets:
        f = t.fidelity
        if f is None:
            continue
        value = f.pearson if f.metric == "pearson" else f.metrics.get(f.metric, float("nan"))
        lines.append(
            f"| {t.key} | {t.precision} | {f.pearson:.4f} | {f.max_abs_error:.3g} | "
            f"{f.metric} {value:.4f} >= {f.threshold:g} | {'yes' if f.passed else 'no'} |"
        )
    lines += ["", "## Benchmark", ""]
    if benchmark:
        cpu = benchmark.get("cpu", {})
        lines += [
            f"`ebai benchmark` on {cpu.get('model', '?')} ({cpu.get('cores', '?')} logical cores), input "
            f"{tuple(benchmark['input']['shape'])} ({benchmark['input']['what']}); every row names the precision "
            "the hardware computes in; speed-up and Pearson are against the first row.",
            "",
            "```",
            benchmark_table(dict(benchmark)),
            "```",
        ]
        lines += [f"- {n}" for n in benchmark.get("notes", [])]
    else:
        lines.append("Not measured at export (run `ebai benchmark` on the artifact).")
    if pruning:
        lines += [
            "",
            f"Pruning: parameters {pruning['params_before']} -> {pruning['params_after']}, "
            f"MACs {pruning['macs_before']} -> {pruning['macs_after']}.",
        ]
    lines += [
        "",
        "## Files",
        "",
        "- weights `onnx`: the compressed network in fp32 (what bioimageio.core runs).",
        "- attachment `ebai_openvino_int8.xml` + `.bin` (where present): the int8 OpenVINO IR. Run it with "
        "OpenVINO (`core.compile_model('ebai_openvino_int8.xml', 'CPU')`) on the preprocessed input in "
        "batch, channel, z, y, x order, or through ebai (`ebai run`), and apply the postprocessing above.",
        *[f"- {n}" for n in notes],
        "",
        "## Recipe",
        "",
        "```json",
        json.dumps(recipe, indent=2, sort_keys=True),
        "```",
    ]
    return "\n".join(lines) + "\n"


def export_bioimageio(
    artifact: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    benchmark: Mapping[str, Any] | bool = True,
    benchmark_repeats: int = 5,
    trust_source: bool = False,
    calibration_data: Sequence[str | Path] = (),
    calibration_samples: int = 16,
) -> Path:
    """Write a compressed artifact as a bioimage.io model package (format 0.5, a ``.zip``).

    Parameters
    ----------
    artifact
        An ``.ebai`` artifact made by ``ebai compress --bioimageio`` (its source is a bioimage.io
        package, which must still be readable at the path recorded in the artifact).
    out
        The package ``.zip`` to write; written whole or not at all.
    overwrite
        Replace an existing file.
    benchmark
        ``True`` measures the artifact (latency, energy, Pearson per engine, as ``ebai benchmark``
        does) for the documentation page; a ready :func:`ebai.core.commands.benchmark.measure_artifact`
        result is used as given; ``False`` leaves the table out.
    benchmark_repeats
        Timed calls per engine when measuring.
    trust_source
        Also time the original network in PyTorch eager (the baseline row), building it as the
        artifact records, which runs the package's architecture code: only for packages you trust.
    calibration_data
        The user's images (files or folders, as ``ebai compress --data`` takes them): an int8 QDQ
        ONNX of the compressed network is calibrated on ``calibration_samples`` tiles of them and
        attached where ONNX Runtime runs it within the package's reproducibility tolerance of the
        fp32 weights (the spec has one ``onnx`` weights entry, which the fp32 network keeps).
        Not needed when the artifact already holds a ``tensorrt`` int8 target.
    calibration_samples
        Calibration tiles for that QDQ network.

    Returns
    -------
    Path
        The written package.

    Raises
    ------
    InputError
        When the artifact was not made from a bioimage.io package, the original is gone, or the
        resulting description is invalid (naming the field).
    """
    from ebai.adapters._bioimageio import BioImageIOAdapter, _import_spec
    from ebai.core.artifact import Artifact
    from ebai.core.files import check_output
    from ebai.core.tiling import fit_tile

    spec = _import_spec()
    from bioimageio.core import predict
    from bioimageio.spec.model import v0_5

    out = Path(out)
    check_output(out, overwrite)
    art = Artifact.open(artifact)
    manifest = art.manifest
    source = dict(manifest.source or {})
    if source.get("adapter") != "bioimageio":
        msg = (
            f"artifact {str(artifact)!r} was made from {source.get('adapter', 'an unknown source')!r}, not a bioimage.io "
            "package: export --bioimageio needs an artifact made by ebai compress --bioimageio"
        )
        raise InputError(msg)
    if not manifest.reference:
        msg = f"artifact {str(artifact)!r} holds no fp32 ONNX (reference): compress it again with this ebai"
        raise InputError(msg)
    config = source.get("config") or {}
    adapter = BioImageIOAdapter(
        config.get("source", ""),
        tile=config.get("tile"),
        weight_format=config.get("weight_format"),
        check_architecture=False,
    )
    original = adapter.descr
    spatial = adapter.input_spec.spatial_axes
    inp, outp = original.inputs[0], original.outputs[0]
    tolerance = adapter.tolerance
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="ebai-bioimageio-") as tmp:
        stage = Path(tmp)
        weights = stage / "weights.onnx"
        reference = art.file(manifest.reference)
        import onnx

        proto = onnx.load(str(reference), load_external_data=False)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
        tile = tuple(adapter.input_spec.tile)
        x_raw, _ = adapter.test_tensors()
        x_raw = fit_tile(x_raw, tile, center=True).astype(x_raw.dtype)
        test_in = stage / "test_input.npy"
        np.save(test_in, x_raw[np.newaxis])
        pre = adapter.preprocess(x_raw)[np.newaxis]
        dynamic, how = _dynamic_onnx(reference, weights, spatial, pre, _valid_sizes(inp.axes, spatial, tile))
        if dynamic:
            notes.append(f"the ONNX weights take any input size the axes allow ({how}).")
        else:
            onnx.save(onnx.load(str(reference)), str(weights))
            notes.append(f"the ONNX weights take the tile {tile} only: {how}.")

        attachments = []
        for target in manifest.targets:
            if target.backend == "openvino":
                for name in target.files:
                    suffix = Path(name).suffix
                    if suffix in (".xml", ".bin"):
                        dest = stage / f"ebai_openvino_{target.precision}{suffix}"
                        shutil.copyfile(art.file(f"{target.directory}/{name}"), dest)
                        attachments.append(v0_5.FileDescr(source=dest))
            elif target.entry.endswith(".onnx") and target.precision == "int8":
                qdq = art.file(f"{target.directory}/{target.entry}")
                attachments += _attach_qdq(qdq, target.key, stage, weights, pre, tolerance, notes)
        if calibration_data and not (stage / "ebai_int8_qdq.onnx").exists():
            with tempfile.TemporaryDirectory(dir=stage, prefix=".qdq-") as scratch:
                qdq = _lower_qdq(reference, Path(scratch), adapter, calibration_data, calibration_samples)
                label = f"ONNX Runtime's quantizer, calibrated on {calibration_samples} tiles of the given images"
                attachments += _attach_qdq(qdq, label, stage, weights, pre, tolerance, notes)

        covers = [
            v0_5.FileDescr(source=_staged(c, stage, f"cover{i}{Path(str(getattr(c, 'source', c))).suffix}"))
            for i, c in enumerate(original.covers)
        ]
        bench: Mapping[str, Any] | None
        if benchmark is True:
            from ebai.core.commands.benchmark import measure_artifact

            bench = measure_artifact(
                Path(artifact),
                against_torch=trust_source,
                trust_source=trust_source,
                repeats=benchmark_repeats,
                warmup=1,
                energy=True,
            )
        else:
            bench = benchmark or None
        recipe = {
            "pruning": {k: v for k, v in (manifest.pruning or {}).items() if k != "fidelity"},
            "fine_tuning": manifest.fine_tuning,
            "targets": [
                {"backend": t.backend, "precision": t.precision, "options": dict(t.options)} for t in manifest.targets
            ],
        }
        doc = stage / "README.md"
        doc.write_text(_documentation(manifest, original, bench, notes, recipe), encoding="utf-8")

        def build(test_output: Path | None) -> Any:
            new_in = inp.model_copy(
                update={
                    "axes": _axes(inp.axes, spatial, None if dynamic else tile),
                    "test_tensor": v0_5.FileDescr(source=test_in),
                    "sample_tensor": None,
                }
            )
            new_out = outp.model_copy(
                update={
                    "axes": _axes(outp.axes, spatial, None),
                    "test_tensor": None if test_output is None else v0_5.FileDescr(source=test_output),
                    "sample_tensor": None,
                }
            )
            config = original.config.model_copy(deep=True)
            extra = dict(config.model_extra or {})
            extra["ebai"] = {
                "artifact": manifest.name,
                "versions": dict(manifest.versions),
                "original": {"name": original.name, "id": str(original.id) if original.id else None},
            }
            fields: dict[str, Any] = {
                "name": f"{original.name} ebai compressed"[:128],
                "description": f"{original.description} Compressed by ebai (pruned, fine-tuned, int8); see the documentation.",
                "authors": original.authors,
                "maintainers": original.maintainers,
                "cite": original.cite,
                "license": original.license,
                "tags": [*original.tags, "ebai", "compressed"],
                "covers": covers,
                "documentation": v0_5.FileDescr(source=doc),
                "inputs": [new_in],
                "outputs": [new_out],
                "weights": v0_5.WeightsDescr(onnx=v0_5.OnnxWeightsDescr(source=weights, opset_version=opset)),
                "attachments": attachments,
                "parent": v0_5.LinkedModel(id=original.id) if original.id else None,
                "git_repo": original.git_repo,
                "config": {"bioimageio": config.bioimageio.model_dump(mode="json", exclude_unset=True), **extra},
            }
            try:
                return v0_5.ModelDescr(**fields)
            except Exception as exc:
                errors = getattr(exc, "errors", lambda: [])()
                where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "model"
                reason = errors[0]["msg"] if errors else str(exc)
                msg = f"the exported description is invalid at {where}: {' '.join(str(reason).split())}"
                raise InputError(msg) from exc

        draft = build(None)
        predicted = predict(model=draft, inputs=x_raw[np.newaxis], skip_preprocessing=False)
        out_id = next(iter(predicted.members))
        ids = [str(a.id) for a in draft.outputs[0].axes]
        test_out = stage / "test_output.npy"
        np.save(test_out, np.asarray(predicted.members[out_id].data.transpose(*ids).values))
        final = build(test_out)
        part = out.parent / f".{out.name}.part"
        out.parent.mkdir(parents=True, exist_ok=True)
        spec.save_bioimageio_package(final, output_path=part)
        check_output(out, overwrite)
        os.replace(part, out)
    return out
