"""What a model expects and gives: axes, channels, tile shape and normalisation.

These records travel inside the artifact's manifest, so an engine can be driven (tiled, normalised)
without the code that built the model, and without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ebai.core.errors import InputError

__all__ = ["NORMALIZATIONS", "InputSpec", "Normalization", "OutputSpec", "parse_sizes"]

_SPATIAL = "tzyx"
#: Kinds of intensity normalisation (:class:`Normalization`), the one list the CLI options offer too.
NORMALIZATIONS = ("none", "percentile", "zscore", "minmax")


def parse_sizes(value: str | Sequence[int], name: str, ndim: int | None = None) -> tuple[int, ...]:
    """Read spatial sizes written ``"16,48,48"``, ``"16x48x48"`` or ``[16, 48, 48]``.

    The one reader of every option that takes sizes (``--tile``, ``--block``, ``fine_tune.crop``),
    so they accept the same spellings and refuse bad ones with the same line. ``ndim``, when
    given, is the number of sizes required.

    Raises
    ------
    InputError
        For anything but positive whole sizes (``ndim`` of them when given), naming ``name``.
    """
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else value
    try:
        sizes = tuple(int(str(v).strip()) for v in parts)
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or any(v < 1 for v in sizes) or (ndim is not None and len(sizes) != ndim):
        count = f"{ndim} " if ndim is not None else ""
        example = ",".join(("16", "48", "48")[-ndim:] if ndim in (1, 2, 3) else ("16", "48", "48"))
        msg = f"{name} must be {count}positive sizes separated by commas, one per spatial axis (e.g. {example}), got {value!r}"
        raise InputError(msg)
    return sizes


@dataclass(frozen=True)
class Normalization:
    """Intensity normalisation applied to each raw sample before the model sees it.

    ``percentile`` maps the ``low``/``high`` percentiles of each channel to ``out_low`` and
    ``out_high`` (0 and 1 by default: cellpose, CARE style; -1 and 1 for MONAI's
    ``ScaleIntensityRangePercentiles(b_min=-1, b_max=1)``); ``zscore`` subtracts the mean and
    divides by the standard deviation of each channel; ``minmax`` maps each channel's range to
    ``[out_low, out_high]``; ``none`` only casts to float32.
    """

    kind: str = "none"
    low: float = 1.0
    high: float = 99.8
    out_low: float = 0.0
    out_high: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in NORMALIZATIONS:
            msg = f"unknown normalisation {self.kind!r}: use one of {', '.join(NORMALIZATIONS)}"
            raise InputError(msg)
        if self.kind == "percentile" and not 0 <= self.low < self.high <= 100:
            msg = f"percentile normalisation needs 0 <= low < high <= 100, got {self.low} and {self.high}"
            raise InputError(msg)
        if self.kind not in ("percentile", "minmax") and (self.out_low, self.out_high) != (0.0, 1.0):
            msg = f"{self.kind} normalisation has no output range, got out_low={self.out_low}, out_high={self.out_high}: drop them"
            raise InputError(msg)

    def apply(self, sample: np.ndarray) -> np.ndarray:
        """Normalise one sample with channels first (``C, *spatial``); returns float32."""
        x = np.asarray(sample, dtype=np.float32)
        if self.kind == "none":
            return x
        return self.rescale(x, *self.statistics(x))

    def statistics(self, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel values mapped to 0 and 1 (``lo``, ``hi``) for one ``(C, *spatial)`` sample.

        Images too large to hold compute these over the whole image elsewhere
        (:mod:`ebai.core.blocks`) and pass them to :meth:`rescale` block by block.
        """
        x = np.asarray(sample, dtype=np.float32)
        flat = x.reshape(x.shape[0], -1)
        if self.kind == "percentile":
            lo, hi = np.percentile(flat, [self.low, self.high], axis=1)
        elif self.kind == "minmax":
            lo, hi = flat.min(axis=1), flat.max(axis=1)
        elif self.kind == "zscore":
            lo = flat.mean(axis=1)
            hi = lo + flat.std(axis=1)
        else:
            lo, hi = np.zeros(x.shape[0], np.float32), np.ones(x.shape[0], np.float32)
        return lo, hi

    def rescale(self, sample: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Map per-channel ``lo``/``hi`` of a ``(C, *spatial)`` sample to 0 and 1; float32."""
        x = np.asarray(sample, dtype=np.float32)
        if self.kind == "none":
            return x
        shape = (-1,) + (1,) * (x.ndim - 1)
        scale = np.maximum(hi - lo, 1e-8).reshape(shape).astype(np.float32)
        out = np.subtract(x, np.asarray(lo).reshape(shape).astype(np.float32), dtype=np.float32)
        out /= scale  # in place: one image-sized array on top of the input, not three
        if (self.out_low, self.out_high) != (0.0, 1.0):  # as MONAI's ScaleIntensityRange
            out *= np.float32(self.out_high - self.out_low)
            out += np.float32(self.out_low)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form stored in manifests (the default 0..1 output range is left out)."""
        data = asdict(self)
        if (self.out_low, self.out_high) == (0.0, 1.0):
            del data["out_low"], data["out_high"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**data)


@dataclass(frozen=True)
class InputSpec:
    """The model input: axes with batch first, channels, the tile it runs on, tiling hints.

    Attributes
    ----------
    axes
        Axis letters of the model input, batch ``b`` then channel ``c`` then spatial axes, e.g.
        ``"bczyx"`` for a 3D net or ``"bcyx"`` for a 2D net.
    channels
        Number of input channels the model was trained with.
    tile
        Spatial shape (one entry per spatial axis) used for export, calibration and tiling.
    dtype
        Input dtype of the exported model; ebai feeds ``float32``.
    normalization
        How a raw sample is normalised before inference.
    overlap
        Fraction of the tile shared by neighbouring tiles when tiling a large image.
    divisor
        Every spatial size the model is fed must be a multiple of this (e.g. 16 for a U-Net with
        four poolings); the tiler pads to it.
    """

    axes: str
    channels: int
    tile: tuple[int, ...]
    dtype: str = "float32"
    normalization: Normalization = field(default_factory=Normalization)
    overlap: float = 0.25
    divisor: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", tuple(int(t) for t in self.tile))
        spatial = self.axes[2:]
        if self.axes[:2] != "bc" or not spatial or any(a not in _SPATIAL for a in spatial):
            msg = (
                f"input axes {self.axes!r} are not understood: write batch, channel, then spatial "
                "axes, e.g. 'bczyx' for 3D or 'bcyx' for 2D"
            )
            raise InputError(msg)
        if len(self.tile) != len(spatial):
            msg = (
                f"tile {self.tile} has {len(self.tile)} sizes but axes {self.axes!r} have "
                f"{len(spatial)} spatial axes: give one size per spatial axis"
            )
            raise InputError(msg)
        if self.channels < 1 or any(t < 1 for t in self.tile):
            msg = f"channels and tile sizes must be positive, got {self.channels} and {self.tile}"
            raise InputError(msg)
        if not 0 <= self.overlap < 1:
            msg = f"tile overlap must be in [0, 1), got {self.overlap}"
            raise InputError(msg)
        if self.divisor < 1 or any(t % self.divisor for t in self.tile):
            msg = f"tile {self.tile} must be a multiple of the model's divisor {self.divisor}"
            raise InputError(msg)

    @property
    def spatial_axes(self) -> str:
        """The spatial axis letters, e.g. ``"zyx"``."""
        return self.axes[2:]

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3 in practice)."""
        return len(self.tile)

    def batch_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of a model input batch of ``batch`` tiles."""
        return (batch, self.channels, *self.tile)

    def check_sample(self, sample: np.ndarray, what: str = "image") -> None:
        """Raise :class:`InputError` unless ``sample`` is ``(C, *spatial)`` with the right C."""
        if sample.ndim != self.ndim + 1:
            msg = (
                f"{what} has shape {tuple(sample.shape)} but the model takes {self.ndim}D images with "
                f"channels first ({self.axes[1:]!r}): give arrays of {self.ndim + 1} dimensions"
            )
            raise InputError(msg)
        if sample.shape[0] != self.channels:
            msg = (
                f"{what} has {sample.shape[0]} channels but the model takes {self.channels}: "
                "select or stack channels to match"
            )
            raise InputError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form stored in manifests."""
        d = asdict(self)
        d["tile"] = list(self.tile)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Rebuild from :meth:`to_dict` output."""
        data = dict(data)
        data["normalization"] = Normalization.from_dict(data.get("normalization") or {})
        data["tile"] = tuple(data["tile"])
        return cls(**data)


@dataclass(frozen=True)
class OutputSpec:
    """The model output: axes (batch first) and channels; spatial shape equals the input's."""

    axes: str
    channels: int

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form stored in manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputSpec:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**data)
