"""The contracts between ebai packages.

Adapters (``ebai-adapters``, or a tool's own package) provide a :class:`ModelSource` and a
:class:`DataSource`; backends (``ebai-openvino``, ``ebai-tensorrt``, ``ebai-torch``) provide a :class:`Backend`,
whose engines follow :class:`Engine`. ``ebai-compress`` joins them. Nothing here imports torch:
model modules are typed as ``Any`` and loaded by the source only when asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ebai.core.profiling import LayerProfile
from ebai.core.specs import InputSpec, OutputSpec

__all__ = [
    "Backend",
    "ComparisonVariant",
    "DataSource",
    "Engine",
    "Lowering",
    "ModelSource",
    "PRECISIONS",
]

#: Precisions a recipe may ask a backend for; each backend lists the ones it makes in ``precisions``
#: (``tf32`` and ``bf16`` are GPU/PyTorch compute modes only the ``torch`` target makes).
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")


@runtime_checkable
class ModelSource(Protocol):
    """A trained model together with what the bare network lacks.

    Attributes
    ----------
    name
        Short name recorded in the manifest (e.g. ``"monai-unet"``).
    input_spec, output_spec
        Layout of the model input and output (see :mod:`ebai.core.specs`).
    """

    name: str
    input_spec: InputSpec
    output_spec: OutputSpec

    def load_module(self) -> Any:
        """Return the ``torch.nn.Module`` in eval mode, on the CPU; a fresh copy on every call."""
        ...

    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Turn one raw sample ``(C, *spatial)`` into a float32 model input of the same layout."""
        ...

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Turn one model output ``(C, *spatial)`` into the user's result (image, masks, ...).

        An adapter whose post-processing maps each voxel's channel values on their own
        (threshold, argmax) may say so with a class attribute ``pointwise_postprocess = True``:
        ``ebai run`` then applies it block by block to images larger than memory, which it
        otherwise refuses (see :func:`ebai.core.commands._run_large.block_postprocess`).
        """
        ...

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> Mapping[str, float]:
        """Task metric(s) of a postprocessed prediction against a postprocessed target.

        Used by the accuracy guard with the original model's result as target. Return an empty
        mapping when the task has no metric beyond Pearson.
        """
        ...

    def describe(self) -> Mapping[str, Any]:
        """JSON-ready description recorded in the manifest (adapter name and its config)."""
        ...


@runtime_checkable
class DataSource(Protocol):
    """The user's own images, for calibration, distillation and the accuracy guard.

    Iteration yields raw samples, channels first (``C, *spatial``), in a stable order; samples may be
    larger than the model's tile (ebai crops or tiles them).
    """

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __len__(self) -> int: ...


class Engine(ABC):
    """A compiled model: numpy batches in, numpy batches out, any batch size.

    Engines own native resources; use them as context managers or call :meth:`close`.
    """

    #: Backend name and precision of the model being run, for reports.
    backend: str = ""
    precision: str = ""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch ``(N, C, *spatial)`` float32 and return ``(N, C_out, *spatial)`` float32."""

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run many batches, yielding results in input order.

        Backends override this to overlap requests (an async infer queue, CUDA streams).
        """
        for batch in batches:
            yield self.infer(batch)

    def close(self) -> None:  # noqa: B027 - optional hook, engines without resources need nothing
        """Release native resources; the engine cannot be used afterwards."""

    def profile(self, batch: np.ndarray, calls: int = 5) -> LayerProfile | None:
        """Time per layer over ``calls`` runs of ``batch``, grouped by layer type and executed precision.

        ``ebai benchmark --profile`` prints it. The default is ``None``: this backend counts no
        per-layer time. Backends that can (OpenVINO's ``PERF_COUNT``) override it; profiling may
        compile a second copy of the model, so it is not meant for timing the engine itself.
        """
        return None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run :meth:`infer`, so an engine can be passed wherever a plain callable is expected."""
        return self.infer(batch)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Lowering:
    """What a backend wrote when lowering an ONNX model, as recorded in the manifest.

    Attributes
    ----------
    backend, precision
        Who lowered it and to what.
    files
        Paths of the written files, relative to the folder given to :meth:`Backend.lower`.
    entry
        The file :meth:`Backend.load` opens first (e.g. the ``.xml`` of an OpenVINO IR).
    options
        The options the files were made with (preset, fallback, ...), enough to explain them.
    record
        Backend facts worth keeping (tool versions, layers left in higher precision, timings).
    """

    backend: str
    precision: str
    files: tuple[str, ...]
    entry: str
    options: Mapping[str, Any] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)


#: Scores a candidate output against a reference output; higher is better (e.g. Pearson).
Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class ComparisonVariant:
    """One way to run the uncompressed fp32 model on a backend, as a row to compare compressed models with.

    Benchmarks (``ebai benchmark``, ``ebai demo``) lower the artifact's reference ONNX at fp32 once
    per backend and load it once per variant, so every backend brings its own baselines: what a
    user gets without ebai (the backend's default precision) and the model run exactly as trained.

    Attributes
    ----------
    key
        Short stable name, joined to the backend's: ``"f32"`` gives the row ``openvino-f32``.
    label
        What the row is, for people (``"OpenVINO, default precision"``).
    options
        Engine options passed to :meth:`Backend.load` (they override the user's).
    precision
        What the hardware computes in when ``options`` fix it (``"f32"``); empty when the backend
        decides, and then the engine's ``execution_precision`` names it.
    how
        How the precision is obtained, for the precision column (``"INFERENCE_PRECISION_HINT=f32"``,
        ``"OpenVINO default for fp32"``).
    """

    key: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)
    precision: str = ""
    how: str = ""


class Backend(ABC):
    """Lowers an fp32 ONNX model to a backend format and loads engines from it.

    ``ebai-compress`` hands a backend an ONNX file with a dynamic batch axis plus preprocessed
    calibration batches. A backend that keeps the network in PyTorch sets :attr:`lowers_module`
    and is given the (pruned, fine-tuned) ``torch.nn.Module`` through :meth:`lower_module` instead;
    the rest of the flow (variants, guard, :meth:`load`) is the same for both kinds.
    """

    #: Entry-point name, e.g. ``"openvino"``.
    name: str = ""
    #: Precisions this backend can produce.
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    #: ``True`` when :meth:`lower_module` (the torch module) is to be called instead of :meth:`lower`.
    lowers_module: bool = False
    #: The stored precision a user gets from this backend without ebai, loaded with the engine's
    #: default options: every compression is timed against it. What the hardware then computes in
    #: may differ (OpenVINO runs an fp32 model in bf16 on CPUs that have it; TensorRT allows TF32);
    #: an engine says so in an ``execution_precision`` attribute where it knows.
    default_precision: str = "fp32"

    def available(self) -> str | None:
        """Return ``None`` when the backend can run here, else the reason and what to install."""
        return None

    def variants(self, precision: str) -> list[dict[str, Any]]:
        """Option sets worth trying for ``precision``; the accuracy guard keeps the best one.

        The default is a single variant with default options.
        """
        return [{}]

    def comparison_variants(self) -> list[ComparisonVariant]:
        """Ways to run the uncompressed fp32 model that compressed models are compared with.

        The default is none: a backend lists its forced-fp32 run and its default-precision run
        (where they differ) so that benchmarks show them without naming the backend.
        """
        return []

    @abstractmethod
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
        """Write the backend files for ``onnx_path`` at ``precision`` into the empty ``out_dir``.

        ``calibration`` holds preprocessed input batches ``(N, C, *tile)`` float32 taken from the
        user's data; backends that need no calibration ignore it.
        """

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
        """Write the backend files for a ``torch.nn.Module`` (eval mode, on the CPU) into ``out_dir``.

        Called instead of :meth:`lower` for backends whose :attr:`lowers_module` is ``True``; the
        module is the network the ONNX file would have been exported from. Other backends need not
        implement it.
        """
        msg = f"backend {self.name!r} lowers ONNX files, not torch modules: call lower() with the exported ONNX"
        raise NotImplementedError(msg)

    def lower_with_accuracy_control(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        precision: str,
        input_spec: InputSpec,
        calibration: Sequence[np.ndarray],
        validation: Sequence[tuple[np.ndarray, np.ndarray]],
        metric: Metric,
        max_drop: float,
        options: Mapping[str, Any] | None = None,
    ) -> Lowering | None:
        """Accuracy-aware fallback the guard calls when :meth:`lower` was not faithful enough.

        ``validation`` pairs a preprocessed input batch with the original model's output for it;
        ``metric(candidate, reference)`` scores outputs (higher is better) and the result may lose
        at most ``max_drop`` against a perfect score of the fp32 model. Return ``None`` when the
        backend has no such fallback.
        """
        return None

    def lower_prequantized(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        input_spec: InputSpec,
        options: Mapping[str, Any] | None = None,
    ) -> Lowering | None:
        """Lower an ONNX file that is already int8 (QuantizeLinear/DequantizeLinear pairs) as it is.

        Called for quantization-aware training, whose quantizers were placed and fine-tuned before
        export: the backend must convert them, not quantize again. Return ``None`` when the
        backend cannot take such a file (the default); the guard then never offers that route.
        """
        return None

    @abstractmethod
    def load(self, directory: Path, lowering: Lowering, **options: Any) -> Engine:
        """Compile the files of ``lowering`` found under ``directory`` and return an engine."""
