"""The adapter base class: a trained network plus everything the bare network lacks.

An adapter is what a tool author writes to make their models compressible by ebai. It knows how
to build the network (:meth:`Adapter.load_module`), what the network takes and gives
(:attr:`Adapter.input_spec`, :attr:`Adapter.output_spec`, with the tiling hints tile, overlap and
divisor), how a raw image becomes a model input (:meth:`Adapter.preprocess`), how a model output
becomes the user's result (:meth:`Adapter.postprocess`) and how good a result is
(:meth:`Adapter.evaluate`). It describes itself as JSON (:meth:`Adapter.describe`) so that the
artifact can rebuild it later with :meth:`Adapter.from_config`, e.g. for ``ebai run``'s
post-processing on a machine without the original training code.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ebai.core.configfile import load_yaml
from ebai.core.errors import InputError
from ebai.core.plugins import build_adapter
from ebai.core.specs import InputSpec, Normalization, OutputSpec

__all__ = ["Adapter", "build_adapter", "normalization_from"]


def normalization_from(value: str | Normalization | Mapping[str, Any] | None) -> Normalization:
    """Turn a user's normalisation setting into a :class:`~ebai.core.Normalization`.

    Parameters
    ----------
    value
        ``None`` or ``"none"``, a kind name (``"percentile"``, ``"zscore"``, ``"minmax"``), a mapping
        such as ``{"kind": "percentile", "low": 1, "high": 99}`` (as written in YAML configs; add
        ``out_low``/``out_high`` for a target range other than [0, 1]), or a ready
        :class:`~ebai.core.Normalization`.
    """
    if value is None:
        return Normalization()
    if isinstance(value, Normalization):
        return value
    if isinstance(value, str):
        return Normalization(kind=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"kind", "low", "high", "out_low", "out_high"}
        if unknown:
            msg = f"normalisation settings {sorted(unknown)} are not understood: use kind, low, high, out_low and out_high"
            raise InputError(msg)
        return Normalization(**dict(value))
    msg = f"normalisation {value!r} is not understood: give a kind such as 'percentile' or a mapping with kind/low/high"
    raise InputError(msg)


def _json_ready(value: Any, where: str) -> Any:
    try:
        json.dumps(value)
    except TypeError as exc:
        msg = f"adapter config {where} holds a value that cannot be saved as JSON ({exc}): use plain numbers, strings and lists"
        raise InputError(msg) from exc
    return value


class Adapter(ABC):
    """Base class of every ebai adapter; implements :class:`ebai.core.ModelSource`.

    A subclass sets the class attribute :attr:`name` (its entry-point name), builds
    :attr:`input_spec` in its ``__init__``, and implements :meth:`load_module`, :meth:`config` and
    :attr:`output_spec`. The defaults of :meth:`preprocess` (check the layout, apply the spec's
    normalisation), :meth:`postprocess` (identity) and :meth:`evaluate` (no task metric) suit image
    -to-image networks; segmentation adapters override them.

    The tiling hints a tool author gives live in :attr:`input_spec`: ``tile`` (the spatial shape
    the network is exported, calibrated and tiled at), ``overlap`` (fraction shared by neighbouring
    tiles) and ``divisor`` (every spatial size fed must be a multiple of it, e.g. 16 for a U-Net
    with four poolings).

    Attributes
    ----------
    name
        Name the adapter is registered under in the ``ebai.adapters`` entry-point group.
    input_spec
        Layout, tile and normalisation of the network input.
    path_keys
        Config keys holding file paths; :meth:`read_config` resolves them relative to the config file.
    """

    name: ClassVar[str] = ""
    path_keys: ClassVar[tuple[str, ...]] = ()
    input_spec: InputSpec

    # ----------------------------------------------------------------- what a subclass provides
    @abstractmethod
    def load_module(self) -> Any:
        """Return a fresh ``torch.nn.Module`` in eval mode on the CPU, weights loaded.

        Each call builds a new copy, so pruning or fine-tuning one never changes the adapter. The
        module's ``forward`` must take one ``(N, C, *tile)`` float32 tensor and return one tensor
        ``(N, C_out, *tile)``; wrap networks that return tuples or dictionaries.
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-ready keyword arguments that rebuild this adapter through :meth:`from_config`."""

    @property
    @abstractmethod
    def output_spec(self) -> OutputSpec:
        """Layout of the network output (batch first; spatial shape equals the input's)."""

    # ------------------------------------------------------------------------------ defaults
    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Check that ``sample`` is ``(C, *spatial)`` with the right channels and normalise it.

        Returns float32 of the same shape. Override to add tool-specific steps (and keep
        :attr:`input_spec.normalization <ebai.core.InputSpec.normalization>` describing the
        closest built-in equivalent, for engines run without the adapter).
        """
        sample = np.asarray(sample)
        self.input_spec.check_sample(sample)
        return self.input_spec.normalization.apply(sample)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Turn one network output ``(C_out, *spatial)`` into the result; the default keeps it."""
        return np.asarray(output, dtype=np.float32)

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Task metric(s) of a postprocessed prediction against a postprocessed target.

        The accuracy guard calls this with the original model's result as ``target``. The default
        has no task metric (Pearson is always measured by the guard); segmentation adapters return
        e.g. ``{"ap50": ...}``.
        """
        return {}

    # --------------------------------------------------------------------- description, rebuild
    def describe(self) -> dict[str, Any]:
        """``{"adapter": name, "config": {...}}``, recorded as the artifact's ``source``.

        :func:`build_adapter` (or ``cls.from_config(d["config"])``) rebuilds an equal adapter from it.
        """
        return {"adapter": self.name, "config": _json_ready(self.config(), f"of adapter {self.name!r}")}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Adapter:
        """Build the adapter from keyword arguments (a :meth:`config` result or a parsed YAML file).

        Unknown keys are refused with the list of accepted ones, so a typo in a config file is
        caught before any work is done.
        """
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
        unknown = sorted(set(config) - set(accepted))
        if unknown and not takes_any:
            msg = (
                f"adapter {cls.name!r} does not take {', '.join(unknown)}: accepted settings are {', '.join(accepted)}"
            )
            raise InputError(msg)
        try:
            return cls(**dict(config))
        except TypeError as exc:
            msg = f"adapter {cls.name!r} cannot be built from {dict(config)!r} ({exc}): check the config"
            raise InputError(msg) from exc

    @classmethod
    def from_file(cls, path: str | Path) -> Adapter:
        """Build the adapter from a YAML (or JSON) file of :meth:`from_config` settings."""
        return cls.from_config(cls.read_config(path))

    @classmethod
    def read_config(cls, path: str | Path) -> dict[str, Any]:
        """Read a YAML (or JSON) file of :meth:`from_config` settings, for callers that add their own.

        Relative paths under the keys in :attr:`path_keys` are taken relative to the file's folder,
        so a config and its weights can travel together.
        """
        path = Path(path)
        data = load_yaml(path, "adapter config", "give the path of a YAML file")
        if data is None:  # an empty file: no settings, as for recipes
            data = {}
        if not isinstance(data, Mapping):
            msg = f"adapter config {str(path)!r} holds a {type(data).__name__}, not a mapping of settings: write key: value lines"
            raise InputError(msg)
        data = dict(data)
        data.pop("adapter", None)
        for key in cls.path_keys:
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute() and ":" not in Path(value).name:
                candidate = path.parent / value
                if candidate.exists():
                    data[key] = str(candidate.resolve())
        return data

    # ------------------------------------------------------------------------------ running
    def torch_infer(self, module: Any | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """Return a numpy-in, numpy-out function running the torch network (for tiling and comparisons).

        Parameters
        ----------
        module
            The module to run; by default a fresh :meth:`load_module`.
        """
        from ebai.core.torch_runner import torch_infer

        return torch_infer(self.load_module() if module is None else module)

    def predict(
        self,
        sample: np.ndarray,
        infer: Callable[[np.ndarray], np.ndarray] | None = None,
        *,
        batch_size: int = 4,
    ) -> np.ndarray:
        """Run the whole chain on one raw sample: preprocess, tiled inference, postprocess.

        Parameters
        ----------
        sample
            Raw image, channels first ``(C, *spatial)``, of any spatial size.
        infer
            Maps a batch ``(N, C, *tile)`` to ``(N, C_out, *tile)``: an :class:`ebai.core.Engine`
            of a compressed artifact, or by default the torch network (:meth:`torch_infer`).
        batch_size
            Tiles per call of ``infer``.
        """
        x = self.preprocess(sample)
        fn = self.torch_infer() if infer is None else infer
        return self.postprocess(self.run_tiled(x, fn, batch_size=batch_size, fixed_tile=infer is not None))

    def run_tiled(
        self,
        image: np.ndarray,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int = 4,
        overlap: float | None = None,
        fixed_tile: bool = True,
        progress_desc: str | None = None,
    ) -> np.ndarray:
        """Run the network over one preprocessed image ``(C, *spatial)``; return ``(C_out, *spatial)``.

        The default is ebai's tiler (:func:`ebai.core.tiling.predict_tiled` with the spec's tile,
        overlap and divisor). An adapter whose tool pads and tiles its own way overrides this, so
        the network sees exactly the input the tool gives it (the cellpose adapter pads and tiles
        as cellpose does); :meth:`predict`, ``ebai run`` and the benchmarks all come through here.

        Parameters
        ----------
        image
            Preprocessed image, channels first.
        infer
            Maps a batch ``(N, C, *tile)`` to ``(N, C_out, *tile)``.
        batch_size
            Tiles per call of ``infer``.
        overlap
            Tile overlap fraction; default the spec's.
        fixed_tile
            ``True`` when ``infer`` takes only the spec's tile shape (a compiled engine);
            ``False`` when it takes any spatial shape (the torch network), which an override may
            use to feed the tool's own, smaller tiles to images smaller than the tile.
        progress_desc
            Label of a progress bar over batches; ``None`` shows none.
        """
        from ebai.core.tiling import predict_tiled

        spec = self.input_spec
        return predict_tiled(
            image,
            infer,
            spec.tile,
            overlap=spec.overlap if overlap is None else overlap,
            batch_size=batch_size,
            divisor=spec.divisor,
            progress_desc=progress_desc,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()!r})"
