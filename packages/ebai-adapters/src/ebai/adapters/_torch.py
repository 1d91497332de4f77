"""The ``torch`` adapter: any ``nn.Module`` with an input layout the user states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ebai.adapters._adapter import Adapter, normalization_from
from ebai.adapters._loading import import_torch, is_factory_ref, module_from_reference
from ebai.core.errors import InputError
from ebai.core.specs import InputSpec, Normalization, OutputSpec, parse_sizes

__all__ = ["TorchAdapter", "full_axes"]


def full_axes(axes: str) -> str:
    """Axis letters with batch and channel first: ``"zyx"`` and ``"czyx"`` become ``"bczyx"``."""
    axes = axes.strip().lower()
    if axes.startswith("bc"):
        return axes
    if axes.startswith("c"):
        return "b" + axes
    if "b" in axes or "c" in axes:
        msg = f"axes {axes!r} must start with the batch and channel axes, as in 'bczyx' or 'bcyx'"
        raise InputError(msg)
    return "bc" + axes


def _tile(tile: Sequence[int] | int | str, ndim: int) -> tuple[int, ...]:
    if isinstance(tile, int) and not isinstance(tile, bool):
        return (tile,) * ndim
    return parse_sizes(tile, "tile")


def _absolute_reference(model: Any) -> Any:
    """Make a file path in a model reference absolute, so a description works from any folder."""
    if not isinstance(model, (str, Path)):
        return model
    ref = str(model)
    if is_factory_ref(ref):
        left, _, attr = ref.rpartition(":")
        if left.endswith(".py"):
            return f"{Path(left).expanduser().resolve()}:{attr}"
        return ref
    return str(Path(ref).expanduser().resolve())


class TorchAdapter(Adapter):
    """Any PyTorch network; the user states its input layout, tile and normalisation.

    Parameters
    ----------
    model
        An ``nn.Module`` (copied on every :meth:`load_module`), ``"path/to/file.py:factory"``,
        ``"package.module:factory"``, or a TorchScript file (``.pt``, ``.pth``, ``.ts``). ``None``
        gives an adapter that only pre/postprocesses (what :meth:`from_config` rebuilds for a
        model that was given as an in-memory module).
    weights
        State dict file for the factory's network, loaded with ``weights_only=True``.
    trust_pickle
        Allow a ``.pt``/``.pth`` that is a whole pickled model; loading it runs its code.
    axes
        Input axes, batch and channel first (``"bczyx"``, ``"bcyx"``); ``"zyx"`` is read as
        ``"bczyx"``.
    channels
        Input channels.
    tile
        Spatial tile the network is exported, calibrated and tiled at (one size per spatial axis;
        an int is used for every axis).
    out_channels
        Output channels; by default found by running the network once on a zero tile.
    normalization
        ``"none"``, ``"percentile"``, ``"zscore"``, ``"minmax"``, a mapping with kind/low/high, or a
        :class:`~ebai.core.Normalization`.
    divisor
        Every spatial size the network is fed must be a multiple of this.
    overlap
        Fraction of a tile shared with its neighbours when tiling large images.
    model_kwargs
        Keyword arguments of the factory.
    """

    name = "torch"
    path_keys = ("model", "weights")

    def __init__(
        self,
        model: Any = None,
        *,
        weights: str | Path | None = None,
        trust_pickle: bool = False,
        axes: str,
        channels: int,
        tile: Sequence[int] | int | str,
        out_channels: int | None = None,
        normalization: str | Normalization | Mapping[str, Any] = "none",
        divisor: int = 1,
        overlap: float = 0.25,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        axes = full_axes(axes)
        self.model = _absolute_reference(model)
        self.weights = str(Path(weights).expanduser().resolve()) if weights is not None else None
        self.trust_pickle = bool(trust_pickle)
        self.model_kwargs = dict(model_kwargs or {})
        self.input_spec = InputSpec(
            axes=axes,
            channels=int(channels),
            tile=_tile(tile, len(axes) - 2),
            normalization=normalization_from(normalization),
            overlap=float(overlap),
            divisor=int(divisor),
        )
        self._out_channels = int(out_channels) if out_channels is not None else None

    def load_module(self) -> Any:
        """Return a fresh eval-mode copy of the network on the CPU, weights loaded."""
        if self.model is None:
            msg = (
                "this torch adapter was rebuilt from a description of an in-memory module, so it holds no network: "
                "pass the module as TorchAdapter(model, ...)"
            )
            raise InputError(msg)
        return module_from_reference(
            self.model, weights=self.weights, trust_pickle=self.trust_pickle, model_kwargs=self.model_kwargs
        )

    @property
    def output_spec(self) -> OutputSpec:
        """Output layout; channels from ``out_channels`` or one forward pass on a zero tile."""
        if self._out_channels is None:
            torch = import_torch()
            module = self.load_module()
            with torch.inference_mode():
                out = module(torch.zeros(self.input_spec.batch_shape(1)))
            if not isinstance(out, torch.Tensor):
                msg = (
                    f"the network returns a {type(out).__name__}, not one tensor: wrap it in a module whose forward "
                    "returns the image tensor"
                )
                raise InputError(msg)
            if tuple(out.shape[2:]) != self.input_spec.tile:
                msg = (
                    f"the network maps a tile {self.input_spec.tile} to spatial shape {tuple(out.shape[2:])}: ebai "
                    "tiles image-to-image networks whose output has the input's spatial shape"
                )
                raise InputError(msg)
            self._out_channels = int(out.shape[1])
        return OutputSpec(axes=self.input_spec.axes, channels=self._out_channels)

    def config(self) -> dict[str, Any]:
        """Return settings that rebuild this adapter; an in-memory module is recorded by its class name."""
        spec = self.input_spec
        in_memory = self.model is not None and not isinstance(self.model, (str, Path))
        cfg: dict[str, Any] = {
            "model": None if in_memory else (str(self.model) if self.model is not None else None),
            "weights": self.weights,
            "trust_pickle": self.trust_pickle,
            "axes": spec.axes,
            "channels": spec.channels,
            "tile": list(spec.tile),
            "out_channels": self.output_spec.channels if self.model is not None else self._out_channels,
            "normalization": spec.normalization.to_dict(),
            "divisor": spec.divisor,
            "overlap": spec.overlap,
            "model_kwargs": self.model_kwargs,
        }
        if in_memory:
            cls = type(self.model)
            cfg["model_class"] = f"{cls.__module__}.{cls.__qualname__}"
        return cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TorchAdapter:
        """Rebuild from :meth:`config` output or a YAML file's settings."""
        config = dict(config)
        config.pop("model_class", None)  # informative only: an in-memory module cannot be rebuilt
        return super().from_config(config)  # type: ignore[return-value]
