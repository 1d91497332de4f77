"""The torch target's engine: numpy batches for ``ebai run``, tensors for PyTorch tools.

The engine owns the unlifted program (``ExportedProgram.module()``) and, once its configuration is
chosen, one runner built from it (see :mod:`ebai.torch._config`). :class:`ebai.torch.TorchModule`
wraps an engine as a ``torch.nn.Module`` for code that calls a network on tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ebai.core.errors import BackendUnavailableError, InputError
from ebai.core.interfaces import Engine
from ebai.torch._choice import CHOICE_FORMAT, ChoiceStore, DeviceIdentity, choice_key, device_identity, search
from ebai.torch._config import RunConfig, build_runner

__all__ = ["TorchEngine", "resolve_device"]

logger = logging.getLogger("ebai")


def resolve_device(device: Any) -> Any:
    """Turn ``"auto"`` (a CUDA GPU if torch sees one, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` into a ``torch.device``."""
    import torch

    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        msg = f"unknown device {device!r}: use auto, cpu, cuda or cuda:N"
        raise InputError(msg) from exc
    if dev.type not in ("cpu", "cuda"):
        msg = f"the torch target runs on cpu or cuda, not {dev.type!r}: use auto, cpu, cuda or cuda:N"
        raise InputError(msg)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"this torch ({torch.__version__}) has no CUDA" if not torch.version.cuda else "no GPU is visible"
            msg = f"device {device!r} was asked for but {build}: use device=cpu, or install a CUDA build of torch on a GPU machine"
            raise BackendUnavailableError(msg)
        count = torch.cuda.device_count()
        index = dev.index or 0
        if index >= count:
            msg = f"device {device!r} was asked for but torch sees {count} GPU(s): pick cuda:0 to cuda:{count - 1}"
            raise BackendUnavailableError(msg)
        dev = torch.device("cuda", index)
    return dev


class TorchEngine(Engine):
    """A torch.export program run on a CUDA GPU or the CPU (see :class:`ebai.core.Engine`).

    Built by :meth:`ebai.torch.TorchBackend.load`. The configuration (layout, ``torch.compile``,
    CUDA graphs) is measured at load unless given or cached; ``execution_precision`` names it.

    Attributes
    ----------
    config
        The :class:`~ebai.torch.RunConfig` in use.
    choice_info
        Where the configuration came from (``"measured"``, ``"cache"``, ``"given"``), the cache
        file, the device identity and the measurements.
    """

    backend = "torch"

    def __init__(
        self,
        program: Any,
        *,
        base: RunConfig,
        device: Any,
        sample_shape: tuple[int, ...],
        fixed: Mapping[str, bool],
        tune: bool,
        batch: int,
        program_sha256: str,
        store: ChoiceStore | None,
        stem: str,
    ) -> None:
        import torch

        self.precision = base.precision
        self.device = device
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self._program = program
        self._closed = False
        self.identity: DeviceIdentity = device_identity(device)
        if tune:
            self.config, self.choice_info = self._choose(base, fixed, batch, program_sha256, store, stem)
        else:
            from dataclasses import replace

            self.config = replace(base, **dict(fixed))
            self.choice_info = {"source": "given", "device": self.identity.as_dict()}
        self._run = build_runner(program.module(), self.config, device, len(self.sample_shape))
        self._torch = torch

    # -- choosing -------------------------------------------------------------------------------

    def _choose(
        self,
        base: RunConfig,
        fixed: Mapping[str, bool],
        batch: int,
        program_sha256: str,
        store: ChoiceStore | None,
        stem: str,
    ) -> tuple[RunConfig, dict[str, Any]]:
        settings = {
            "precision": base.precision,
            "mode": base.mode,
            "batch": int(batch),
            "fixed": dict(sorted(fixed.items())),
        }
        expected = {
            "format": CHOICE_FORMAT,
            "device": self.identity.as_dict(),
            "program_sha256": program_sha256,
            **settings,
        }
        name = ""
        if store is not None:
            key = choice_key(self.identity, program_sha256, settings)
            name = store.file_name(stem, self.identity, key)
            found = store.find(name, expected)
            if found is not None:
                config, record, path = found
                return config, {
                    "source": "cache",
                    "cache_file": str(path),
                    "device": self.identity.as_dict(),
                    "trials": record.get("trials", []),
                }
        config, trials = search(
            base,
            fixed,
            device_type=self.device.type,
            batch=int(batch),
            can_compile=_triton_usable(self.device),
            time_config=lambda c: self._time(c, batch),
        )
        path = store.write(name, {**expected, "choice": config.as_dict(), "trials": trials}) if store else None
        logger.info("torch target: chose %s after %d measurement(s)", config.describe(str(self.device)), len(trials))
        info = {
            "source": "measured",
            "cache_file": str(path) if path else None,
            "device": self.identity.as_dict(),
            "trials": trials,
        }
        return config, info

    def _time(self, config: RunConfig, batch: int) -> float | None:
        import torch
        from ebai.core.latency import measure_latency

        x = torch.zeros((int(batch), *self.sample_shape), dtype=torch.float32, device=self.device)
        try:
            with torch.no_grad():  # as run_tensor runs it: no autograd records, none in a captured graph
                run = build_runner(self._program.module(), config, self.device, len(self.sample_shape))
                run(x)  # first call: compilation, graph capture, cuDNN algorithm search

                def call() -> None:
                    run(x)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)

                return measure_latency(call, warmup=1, repeats=5).median_s
        except BackendUnavailableError:
            raise
        except Exception as exc:  # a configuration this machine cannot run is skipped, not fatal
            logger.info("torch target: %s failed here (%s); skipped", config.describe(str(self.device)), exc)
            return None

    # -- running --------------------------------------------------------------------------------

    @property
    def execution_precision(self) -> str:
        """What the hardware computes in and how, e.g. ``fp16 autocast, channels-last, CUDA graph (cuda:0)``."""
        return self.config.describe(str(self.device))

    def _check(self, shape: tuple[int, ...]) -> None:
        if self._closed:
            msg = "this torch engine was closed: load the artifact again"
            raise InputError(msg)
        if len(shape) != len(self.sample_shape) + 1 or tuple(shape[1:]) != self.sample_shape:
            msg = (
                f"batch has shape {tuple(shape)} but the torch target takes (N, {', '.join(map(str, self.sample_shape))}): "
                "tile the image to the model's tile shape"
            )
            raise InputError(msg)

    def run_tensor(self, x: Any) -> Any:
        """Run a tensor batch ``(N, C, *tile)`` (any float dtype, any device); float32 result on the engine's device."""
        self._check(tuple(x.shape))
        # no_grad, not inference_mode: tools update the result in place (MONAI's sliding window does),
        # which inference tensors refuse outside inference mode
        with self._torch.no_grad():
            return self._run(x.to(self.device, dtype=self._torch.float32))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run ``(N, C, *tile)`` float32 and return ``(N, C_out, *tile)`` float32."""
        arr = np.ascontiguousarray(batch, dtype=np.float32)
        self._check(arr.shape)
        out = self.run_tensor(self._torch.from_numpy(arr))
        return out.cpu().numpy()

    def close(self) -> None:
        """Drop the module, runner and captured graphs; GPU memory is returned to torch's allocator."""
        self._closed = True
        self._run = _closed_runner
        self._program = None


def _closed_runner(x: Any) -> Any:
    msg = "this torch engine was closed: load the artifact again"
    raise InputError(msg)


def _triton_usable(device: Any) -> bool:
    """``torch.compile`` pays on GPUs with Triton (compute >= 7.0); never tried on CPUs."""
    if device.type != "cuda":
        return False
    import importlib.util

    import torch

    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.get_device_capability(device) >= (7, 0)
