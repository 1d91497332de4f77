"""The ``torch`` backend: the (pruned) network as a ``torch.export`` program, run by PyTorch itself.

``lower_module`` exports the module :func:`ebai.compress.compress` hands over (fp32 weights, a
dynamic batch axis) to ``model.pt2``; the precision (fp32, TF32, fp16, bf16) and the cast mode the
accuracy guard kept are recorded beside it. ``load`` checks and loads the program, picks the
device, and measures (or reads from the cache) the fastest layout / ``torch.compile`` / CUDA-graph
configuration for this machine.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core.artifact import sha256_file
from ebai.core.errors import ArtifactError, InputError
from ebai.core.interfaces import Backend, Lowering
from ebai.core.specs import InputSpec
from ebai.torch._config import PRECISIONS, RunConfig, check_mode, check_precision

__all__ = ["ENTRY_FILE", "LOAD_OPTIONS", "TorchBackend"]

logger = logging.getLogger("ebai")

#: The file the program is stored in.
ENTRY_FILE = "model.pt2"
#: Options :meth:`TorchBackend.load` accepts.
LOAD_OPTIONS = ("device", "tune", "batch", "channels_last", "compile", "cuda_graph", "cache_dir")
_FIXABLE = ("channels_last", "compile", "cuda_graph")


def _check_options(options: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        msg = f"unknown torch target {where} option(s) {', '.join(unknown)}: use {', '.join(sorted(allowed))}"
        raise InputError(msg)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    msg = f"torch target option {name}={value!r} is not true or false: write {name}=true or {name}=false"
    raise InputError(msg)


class TorchBackend(Backend):
    """PyTorch on any NVIDIA GPU (or the CPU), without TensorRT: fp32, TF32, fp16, bf16.

    Lowering option (``options`` of :meth:`lower_module`): ``mode`` for fp16/bf16, ``autocast``
    (weights stay fp32, PyTorch picks per operator) or ``cast`` (weights and activations cast);
    :meth:`variants` offers both and the accuracy guard keeps the better one.

    Load options (``ebai run -O KEY=VALUE``): ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``),
    ``tune`` (measure the configuration at first load, default true), ``batch`` (batch size the
    configuration is measured at, default 4), ``channels_last`` / ``compile`` / ``cuda_graph``
    (fix that setting instead of measuring it), ``cache_dir`` (where the measured choice is kept
    instead of the artifact's ``cache/torch`` and the user cache).
    """

    name = "torch"
    precisions = PRECISIONS
    lowers_module = True

    def available(self) -> str | None:
        """``None`` when torch can be imported here (a GPU is optional: the CPU runs the target too)."""
        from ebai.torch._plugin import backend as spec

        avail = spec.is_available()
        return None if avail else avail.reason

    def variants(self, precision: str) -> list[dict[str, Any]]:
        """fp16/bf16: autocast and cast weights (the guard keeps the better); one default otherwise."""
        check_precision(precision)
        if precision in ("fp16", "bf16"):
            return [{"mode": "autocast"}, {"mode": "cast"}]
        return [{}]

    def lower(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        precision: str,
        input_spec: InputSpec,
        calibration: Sequence[np.ndarray],
        options: Mapping[str, Any] | None = None,
    ) -> Lowering:
        """Refuse: the torch target is made from the torch module (:meth:`lower_module`), not from ONNX."""
        msg = (
            f"the torch target is exported from the PyTorch network, not from {Path(onnx_path).name}: "
            "make it with ebai compress --target torch (ebai.compress.compress passes the module)"
        )
        raise InputError(msg)

    def lower_module(
        self,
        module: Any,
        out_dir: Path,
        *,
        precision: str,
        input_spec: InputSpec,
        calibration: Sequence[np.ndarray],
        options: Mapping[str, Any] | None = None,
    ) -> Lowering:
        """Export ``module`` (fp32, eval mode, CPU) to ``model.pt2`` in ``out_dir``; record precision and mode.

        ``calibration`` is not needed (no int8 here). Raises :class:`InputError` for an unknown
        precision, mode or option, or a network torch.export cannot capture.
        """
        import torch
        from ebai.torch._archive import MAX_BATCH, check_archive, export_program, save_program

        opts = dict(options or {})
        check_precision(precision)
        _check_options(opts, ("mode",), f"{precision} lowering")
        mode = check_mode(precision, opts.get("mode"))
        sample_shape = (input_spec.channels, *input_spec.tile)
        program = export_program(module, sample_shape)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ebai-lower-") as tmp:
            work = Path(tmp) / ENTRY_FILE
            save_program(program, work)
            summary = check_archive(work)  # what load will check, verified now rather than on the user's machine
            os.replace(work, out_dir / ENTRY_FILE)
        record = {
            "program_sha256": sha256_file(out_dir / ENTRY_FILE),
            "torch": torch.__version__,
            "operators": summary["operators"],
            "batch_axis": f"dynamic, 1 to {MAX_BATCH}",
            "stored": "fp32 weights as raw tensors; the precision is applied at load",
            "loading": "checked before torch.export.load: no pickled payloads, no guard code, ATen operators only",
            "configuration": "layout, torch.compile and CUDA graphs measured at first load on the target machine",
        }
        return Lowering(
            backend=self.name,
            precision=precision,
            files=(ENTRY_FILE,),
            entry=ENTRY_FILE,
            options={"mode": mode, "input_shape": list(sample_shape)},
            record=record,
        )

    def load(self, directory: Path, lowering: Lowering, **options: Any) -> Any:
        """Load the program of ``lowering`` under ``directory`` and return a :class:`~ebai.torch.TorchEngine`.

        ``directory`` is the target's folder inside the artifact; its parent is the artifact root,
        whose ``cache/torch`` folder keeps the measured choice. See the class docstring for options.
        """
        from ebai.torch._archive import load_program
        from ebai.torch._choice import ChoiceStore, default_choice_dirs
        from ebai.torch._engine import TorchEngine, resolve_device

        _check_options(options, LOAD_OPTIONS, "load")
        precision = check_precision(lowering.precision)
        mode = check_mode(precision, lowering.options.get("mode"))
        shape = lowering.options.get("input_shape")
        if not shape:
            msg = f"the {precision} torch target records no input_shape: recreate the artifact with this ebai-torch"
            raise ArtifactError(msg)
        directory = Path(directory)
        entry = directory / lowering.entry
        want = lowering.record.get("program_sha256")
        if want and entry.is_file() and sha256_file(entry) != want:
            msg = f"torch.export program {str(entry)!r} differs from the one the artifact recorded (sha256): the file is damaged, recreate the artifact"
            raise ArtifactError(msg)
        program = load_program(entry)
        device = resolve_device(options.get("device", "auto"))
        fixed = {k: _flag(k, options[k]) for k in _FIXABLE if k in options and options[k] is not None}
        try:
            batch = int(options.get("batch", 4))
        except (TypeError, ValueError):
            batch = 0
        if batch < 1:
            msg = f"torch target option batch={options.get('batch')!r} is not a positive whole number: e.g. -O batch=4"
            raise InputError(msg)
        tune = _flag("tune", options.get("tune", True))
        store = ChoiceStore(default_choice_dirs(directory, options.get("cache_dir")))
        return TorchEngine(
            program,
            base=RunConfig(precision=precision, mode=mode),
            device=device,
            sample_shape=tuple(int(d) for d in shape),
            fixed=fixed,
            tune=tune,
            batch=batch,
            program_sha256=want or sha256_file(entry),
            store=store,
            stem=f"{lowering.backend}-{precision}",
        )
