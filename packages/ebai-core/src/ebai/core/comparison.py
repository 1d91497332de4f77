"""The uncompressed model on each backend, opened as the baselines compressed models are compared with.

Every benchmark in ebai (``ebai benchmark``, ``ebai demo``, ``ebai report``, ``ebai sweep``) shows
the original fp32 model next to the compressed ones, run the ways each backend offers
(:meth:`~ebai.core.interfaces.Backend.comparison_variants`: for OpenVINO, forced to f32 and at its
default precision). They are opened here, in one place, so no benchmark names a backend and a new
backend brings its own baselines.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebai.core.errors import EbaiError
from ebai.core.interfaces import ComparisonVariant, Engine
from ebai.core.specs import InputSpec

__all__ = ["BaselineEngine", "baseline_engines"]


@dataclass(frozen=True)
class BaselineEngine:
    """An engine running the uncompressed fp32 model one way on one backend.

    Attributes
    ----------
    backend
        Backend name (``"openvino"``).
    variant
        How it runs (options, label, precision).
    engine
        The open engine; closed when :func:`baseline_engines` exits.
    """

    backend: str
    variant: ComparisonVariant
    engine: Engine

    @property
    def key(self) -> str:
        """Stable row name: backend and variant (``"openvino-f32"``, ``"openvino-default"``)."""
        return f"{self.backend}-{self.variant.key}"

    @property
    def runs(self) -> str:
        """What the hardware computes in: fixed by the variant, else as the engine reports it."""
        return self.variant.precision or str(getattr(self.engine, "execution_precision", "")) or "fp32"


@contextlib.contextmanager
def baseline_engines(
    reference_onnx: Path,
    input_spec: InputSpec,
    backends: Sequence[str],
    *,
    options: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> Iterator[list[BaselineEngine]]:
    """Lower ``reference_onnx`` at fp32 on each backend and open each of its comparison variants.

    Parameters
    ----------
    reference_onnx
        The uncompressed fp32 model (an artifact's ``reference.onnx``).
    input_spec
        Its input layout, as the artifact records it.
    backends
        Backend names, in the order the rows should appear; a name that appears twice is used once.
    options
        Engine options for every engine (the user's ``-O``); a variant's own options win.
    notes
        When given, a backend that cannot lower or load is skipped and the reason appended here;
        when ``None`` its error is raised.

    Yields
    ------
    list of BaselineEngine
        Open engines, backend by backend, variants in the backend's order. They and their
        temporary files are released when the ``with`` block ends.
    """
    from ebai.core.plugins import get_backend

    out: list[BaselineEngine] = []
    with contextlib.ExitStack() as stack:
        for name in dict.fromkeys(backends):
            try:
                backend = get_backend(name)
                variants = backend.comparison_variants()
                if not variants:
                    continue
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"ebai-{name}-fp32-")))
                lowering = backend.lower(
                    Path(reference_onnx), folder, precision="fp32", input_spec=input_spec, calibration=[]
                )
                for variant in variants:
                    engine = stack.enter_context(
                        backend.load(folder, lowering, **{**(options or {}), **variant.options})
                    )
                    out.append(BaselineEngine(name, variant, engine))
            except EbaiError as exc:
                if notes is None:
                    raise
                notes.append(f"{name} rows of the uncompressed model skipped: {exc}")
        yield out
