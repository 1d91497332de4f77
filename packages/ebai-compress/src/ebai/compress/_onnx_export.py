"""ONNX export of the (pruned) network: one self-contained file with a dynamic batch axis, verified.

torch 2.13 offers two exporters. The torch.export-based one (``dynamo=True``, the default since
torch 2.9) is the one maintained; it exported every 2D/3D U-Net we tried (MONAI UNet and BasicUNet,
residual and concatenating U-Nets, pruned or not) with a dynamic batch, matching torch to ~1e-6.
The TorchScript exporter is deprecated but is the only one that takes a TorchScript model, so it
is used for those. Each file is checked with ``onnx.checker`` and, when onnxruntime is installed,
run against torch on a batch of two (which also proves the batch axis is really dynamic).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebai.compress._recipe import EXPORTERS
from ebai.core.errors import FidelityError, InputError
from ebai.core.files import check_output

__all__ = ["ExportResult", "export_onnx"]

logger = logging.getLogger("ebai")

INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Largest relative difference accepted between ONNX Runtime and torch.
DEFAULT_RTOL = 1e-4
#: Above this many bytes of weights the file cannot hold them (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000
_CALL_SITE = re.compile(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')


@dataclass(frozen=True)
class ExportResult:
    """An exported ONNX file and how it was made and checked.

    Attributes
    ----------
    path
        The ``.onnx`` file (weights inside unless above 2 GiB).
    exporter
        ``"dynamo"`` (torch.export-based) or ``"torchscript"``.
    opset
        ONNX opset of the default domain.
    max_rel_error
        Largest ``|onnx - torch|`` over the largest ``|torch|`` on the check batch; ``None`` when
        onnxruntime is not installed and the numeric check was skipped.
    """

    path: Path
    exporter: str
    opset: int
    input_name: str
    output_name: str
    max_rel_error: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {
            "file": self.path.name,
            "exporter": self.exporter,
            "opset": self.opset,
            "input": self.input_name,
            "output": self.output_name,
            "max_rel_error_vs_torch": self.max_rel_error,
            "numeric_check": "onnxruntime" if self.max_rel_error is not None else "skipped (onnxruntime not installed)",
        }


class _ModuleTrail:
    """Remembers which submodule was running when an export failed (forward hooks push and pop)."""

    def __init__(self, model: Any) -> None:
        self.stack: list[tuple[str, str]] = []
        self.handles: list[Any] = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._push(name, type(module).__name__)))
            self.handles.append(module.register_forward_hook(self._pop(name)))

    def _push(self, name: str, kind: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            if not name:
                self.stack.clear()
            self.stack.append((name, kind))

        return hook

    def _pop(self, name: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            if self.stack and self.stack[-1][0] == name:
                self.stack.pop()

        return hook

    def innermost(self) -> tuple[str, str] | None:
        named = [entry for entry in self.stack if entry[0]]
        return named[-1] if named else None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Keep the exporters' console chatter (progress lines, optional-op warnings) out of the user's terminal."""
    buffer = io.StringIO()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for lg, level in zip(noisy, levels, strict=False):
            lg.setLevel(level)
        if buffer.getvalue().strip():
            logger.debug("ONNX exporter output:\n%s", buffer.getvalue())


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), "")
    return f"{type(cause).__name__}: {first[:200]}"


def _export_error(exc: BaseException, model: Any, trail: _ModuleTrail | None) -> InputError:
    where = ""
    inner = trail.innermost() if trail is not None else None
    if inner is not None:
        where = f" in module {inner[0]!r} ({inner[1]})"
    site = _CALL_SITE.search(str(exc))
    if site:
        where += f" at {Path(site.group(1)).name}:{site.group(2)} `{site.group(4).strip()}`"
    msg = (
        f"{type(model).__name__} cannot be exported to ONNX{where} ({_reason(exc)}); data-dependent control flow "
        "(an if or loop on tensor values) is the usual cause: make it depend on shapes only, or save the model "
        "with torch.jit.script and give that file"
    )
    return InputError(msg)


def _check_batch(example: Any) -> Any:
    """Make a batch of two different inputs from the example, to test the dynamic batch axis."""
    import torch

    if example.shape[0] >= 2:
        return example[:2].contiguous()
    return torch.cat([example, torch.flip(example, dims=tuple(range(2, example.dim())))], dim=0)


def _run_exporter(model: Any, example: Any, path: Path, exporter: str, opset: int, external: bool) -> None:
    import torch

    # the batch axis stays dynamic; each exporter spells that its own way
    if exporter == "dynamo":
        batch_axis: dict[str, Any] = {
            "dynamo": True,
            "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},),
            "verbose": False,
        }
    else:
        batch_axis = {"dynamo": False, "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        external_data=external,
        **batch_axis,
    )


def _numeric_check(path: Path, model: Any, batch: Any, rtol: float) -> tuple[float | None, bool]:
    """Max relative difference of ONNX Runtime's output to torch's, and whether it is acceptable.

    Above ``rtol`` it is still acceptable when the network itself is ill-conditioned (e.g. a pruned
    network with near-cancelling channels): float32 is then far from the exact result in torch as in
    ONNX Runtime, and what the export must not add is error beyond that. So the ONNX output is held
    to the network's float64 result, with torch's own float32 error (four times over: two float32
    runtimes round differently) as the allowance.
    """
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning(
            "onnxruntime is not installed, so the exported ONNX was not compared with torch: pip install onnxruntime"
        )
        return None, True
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    with torch.no_grad():
        want = model(batch).detach().float().numpy()
    if got.shape != want.shape:
        msg = f"the exported ONNX gives shape {got.shape} where torch gives {want.shape} for a batch of 2: report this model"
        raise FidelityError(msg)
    scale = max(float(np.max(np.abs(want))), 1e-12)
    rel = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) / scale
    if rel <= rtol:
        return rel, True
    exact = _float64_output(model, batch)
    if exact is None:
        return rel, False
    torch_error = float(np.max(np.abs(want.astype(np.float64) - exact))) / scale
    onnx_error = float(np.max(np.abs(got.astype(np.float64) - exact))) / scale
    ok = onnx_error <= 4 * torch_error
    if ok:
        logger.info(
            "exported ONNX differs from torch by %.2e relative, within this network's float32 rounding "
            "(from its float64 result: torch %.2e, ONNX %.2e)",
            rel,
            torch_error,
            onnx_error,
        )
    return rel, ok


def _float64_output(model: Any, batch: Any) -> np.ndarray | None:
    """Return the network's output computed in float64 on a copy, or ``None`` where it cannot run in float64."""
    import copy

    import torch

    try:
        exact = copy.deepcopy(model).double()
        with torch.no_grad():
            return exact(batch.double()).detach().numpy().astype(np.float64)
    except Exception as exc:  # ops without float64 kernels, scripted modules: keep the float32 comparison
        logger.debug("float64 reference not computed (%s)", exc)
        return None


def _write_onnx_source(model: Any, path: Path, overwrite: bool) -> ExportResult:
    """Write the graph of a network that already is ONNX (``onnx_bytes``, e.g. a bioimage.io package's).

    Nothing is exported, so there is nothing to compare with: the file is the network.
    """
    import onnx

    started = time.perf_counter()
    proto = onnx.load_from_string(model.onnx_bytes)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        msg = f"the ONNX network fails onnx.checker ({_reason(exc)}): check the model's ONNX file"
        raise InputError(msg) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".{path.name}.part"
    scratch.write_bytes(model.onnx_bytes)
    check_output(path, overwrite)
    os.replace(scratch, path)
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(
        path=path,
        exporter="onnx-source",
        opset=int(version),
        input_name=proto.graph.input[0].name,
        output_name=proto.graph.output[0].name,
        max_rel_error=0.0,
        seconds=time.perf_counter() - started,
    )


def export_onnx(
    model: Any,
    path: str | Path,
    example_input: Any,
    *,
    opset: int = 18,
    exporter: str = "auto",
    overwrite: bool = False,
    rtol: float = DEFAULT_RTOL,
) -> ExportResult:
    """Export a network to one ONNX file with a dynamic batch axis, and check it.

    Parameters
    ----------
    model
        ``torch.nn.Module`` or TorchScript module taking one ``(N, C, *tile)`` tensor; a module
        that carries its ONNX graph as ``onnx_bytes`` (ONNX weights run by ONNX Runtime) is
        written out as it is.
    path
        Where to write the ``.onnx`` file; written atomically (complete or absent).
    example_input
        An input batch (tensor or array) fixing every axis but the batch.
    opset
        ONNX opset (17 or newer).
    exporter
        ``"auto"``: torch.export-based for modules, TorchScript-based for TorchScript modules;
        or force ``"dynamo"`` / ``"torchscript"``.
    overwrite
        Replace an existing file.
    rtol
        Largest accepted ``max|onnx - torch| / max|torch|`` on a batch of two.

    Returns
    -------
    ExportResult
        The file, exporter, opset and the measured difference to torch.

    Raises
    ------
    InputError
        When the network cannot be exported (naming the module and the reason).
    FidelityError
        When ONNX Runtime's output differs from torch's by more than ``rtol``.
    """
    import onnx
    import torch

    path = Path(path)
    check_output(path, overwrite)
    exporter = str(exporter).lower()
    if exporter not in EXPORTERS:
        msg = f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}"
        raise InputError(msg)
    if int(opset) < 17:
        msg = f"ONNX opset {opset} is too old: use 17 or newer"
        raise InputError(msg)
    if isinstance(getattr(model, "onnx_bytes", None), bytes):
        return _write_onnx_source(model, path, overwrite)
    is_script = isinstance(model, torch.jit.ScriptModule)
    if exporter == "auto":
        exporter = "torchscript" if is_script else "dynamo"
    if is_script and exporter == "dynamo":
        msg = "a TorchScript model can only be exported with exporter 'torchscript': set export.exporter to auto"
        raise InputError(msg)
    if isinstance(example_input, torch.Tensor):
        example = example_input.detach().float().cpu()
    else:
        example = torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))
    model = model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > _EXTERNAL_DATA_BYTES

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part"))
    try:
        target = scratch / path.name
        trail = None if is_script else _ModuleTrail(model)
        try:
            with _quiet_exporter(), torch.no_grad():
                _run_exporter(model, example[:1], target, exporter, int(opset), external)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise _export_error(exc, model, trail) from exc
        finally:
            if trail is not None:
                trail.remove()
        try:
            onnx.checker.check_model(str(target), full_check=True)
        except Exception as exc:
            msg = f"the exported ONNX file fails onnx.checker ({_reason(exc)}): try export.exporter 'torchscript'"
            raise InputError(msg) from exc
        proto = onnx.load(str(target), load_external_data=False)
        version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), int(opset))
        rel, acceptable = _numeric_check(target, model, _check_batch(example), rtol)
        if not acceptable:
            msg = (
                f"the exported ONNX differs from torch by {rel:.2e} relative (more than {rtol:.0e}) on a batch of 2: "
                f"try export.exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'}"
            )
            raise FidelityError(msg)
        check_output(path, overwrite)
        for produced in sorted(scratch.iterdir()):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = ExportResult(
        path=path,
        exporter=exporter,
        opset=int(version),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        max_rel_error=rel,
        seconds=time.perf_counter() - started,
    )
    logger.info("exported %s with the %s exporter (opset %d), max relative error %s", path.name, exporter, version, rel)
    return result
