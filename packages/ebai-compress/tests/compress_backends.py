"""A test backend on ONNX Runtime: lowers by copying the fp32 ONNX, optionally adds output noise."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.core import Backend, Engine, InputSpec, Lowering


class OrtEngine(Engine):
    backend = "ort"

    def __init__(self, path: Path, precision: str, noise: float, seed: int, repeat: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.precision = precision
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.repeat = repeat

    def infer(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)}
        for _ in range(self.repeat):  # a deliberately slower engine: the same work done again
            out = self.session.run(None, feed)[0]
        if self.noise:
            out = out + self.rng.normal(0.0, self.noise * float(out.std() or 1.0), out.shape).astype(np.float32)
        return out


class OrtBackend(Backend):
    """``variants`` and the accuracy-control fallback are configurable noise levels.

    ``noise`` is the relative standard deviation of the noise the engine adds to its output, so a
    lowering can be made deliberately broken; ``repeat`` maps a precision to how many times its
    engines do each call's work, so a lowering can be made deliberately slow.
    """

    name = "ort"
    precisions = ("fp32", "int8")

    def __init__(
        self,
        noises: Sequence[float] = (0.0,),
        fallback_noise: float | None = None,
        interrupt: bool = False,
        name: str = "ort",
        repeat: Mapping[str, int] | None = None,
        prequantized: bool = False,
    ) -> None:
        self.name = name
        self.prequantized = prequantized
        self.prequantized_calls: list[str] = []
        self.repeat = dict(repeat or {})
        self.noises = list(noises)
        self.fallback_noise = fallback_noise
        self.interrupt = interrupt
        self.lowered: list[dict[str, Any]] = []
        self.fallback_calls: list[dict[str, Any]] = []

    def variants(self, precision: str) -> list[dict[str, Any]]:
        return [{"noise": n} for n in self.noises]

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
        if self.interrupt:
            raise KeyboardInterrupt
        shutil.copyfile(onnx_path, Path(out_dir) / "model.onnx")
        self.lowered.append({"options": dict(options or {}), "calibration": len(calibration), "dir": Path(out_dir)})
        return Lowering(
            backend=self.name,
            precision=precision,
            files=("model.onnx",),
            entry="model.onnx",
            options=dict(options or {}),
            record={"calibration_batches": len(calibration)},
        )

    def lower_with_accuracy_control(
        self,
        onnx_path: Path,
        out_dir: Path,
        *,
        precision: str,
        input_spec: InputSpec,
        calibration: Sequence[np.ndarray],
        validation: Sequence[tuple[np.ndarray, np.ndarray]],
        metric: Any,
        max_drop: float,
        options: Mapping[str, Any] | None = None,
    ) -> Lowering | None:
        self.fallback_calls.append(
            {
                "max_drop": max_drop,
                "validation": len(validation),
                "score": float(np.mean([metric(ref, ref) for _, ref in validation])),
            }
        )
        if self.fallback_noise is None:
            return None
        shutil.copyfile(onnx_path, Path(out_dir) / "model.onnx")
        return Lowering(
            backend=self.name,
            precision=precision,
            files=("model.onnx",),
            entry="model.onnx",
            options={"noise": self.fallback_noise, "accuracy_control": True},
        )

    def lower_prequantized(
        self, onnx_path: Path, out_dir: Path, *, input_spec: InputSpec, options: Mapping[str, Any] | None = None
    ) -> Lowering | None:
        """ONNX Runtime runs QuantizeLinear/DequantizeLinear pairs itself: the file is copied as it is."""
        if not self.prequantized:
            return None
        shutil.copyfile(onnx_path, Path(out_dir) / "model.onnx")
        self.prequantized_calls.append(Path(onnx_path).name)
        return Lowering(
            backend=self.name,
            precision="int8",
            files=("model.onnx",),
            entry="model.onnx",
            options={"prequantized": True},
        )

    def load(self, directory: Path, lowering: Lowering, **options: Any) -> Engine:
        return OrtEngine(
            Path(directory) / lowering.entry,
            lowering.precision,
            float(lowering.options.get("noise", 0.0)),
            0,
            self.repeat.get(lowering.precision, 1),
        )
