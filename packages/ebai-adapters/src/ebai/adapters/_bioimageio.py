"""The ``bioimageio`` adapter: a bioimage.io model package (``rdf.yaml``, a folder or a ``.zip``) as an ebai model.

Everything ebai needs is read from the package's description through bioimageio.spec (formats 0.4
and 0.5; 0.4 is converted to 0.5 on load): the input and output axes, the tile (the smallest valid
size ``min + n*step`` at or above a sensible default), the halo (which becomes the tile overlap),
the weights, and the test tensors. Pre- and post-processing are bioimageio.core's own operators,
set up and applied as its prediction pipeline does, so a compressed model sees exactly the inputs
the original package would.

Weights are taken in this order: ``pytorch_state_dict`` (architecture and kwargs; can be pruned
and quantized), ``torchscript`` and ``onnx`` (quantized only: their channels cannot be traced, so
pruning is refused with the reason).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.adapters._adapter import Adapter
from ebai.adapters._torch import _tile
from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.core.specs import InputSpec, OutputSpec

__all__ = ["BioImageIOAdapter", "load_bioimageio", "read_model_description"]

INSTALL = install_line("bioimageio")
#: Weight formats ebai reads, in the order it prefers them.
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
#: Tile size aimed at per spatial axis when the package leaves it open (``min + n*step``).
DEFAULT_TILE = {"z": 32, "y": 128, "x": 128}
_SPATIAL_ORDER = "zyx"


def _import_spec() -> Any:
    try:
        import bioimageio.spec as spec
    except ImportError as exc:
        msg = f"reading bioimage.io packages needs bioimageio.spec and bioimageio.core: {INSTALL}"
        raise MissingDependencyError(msg) from exc
    return spec


def _loc(loc: Sequence[Any]) -> str:
    """Write a field path as in the YAML (``weights.onnx.source``), without pydantic's union branch names."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[a-z_][a-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
    return out or "rdf"


def _first_error(errors: Sequence[Any]) -> Any:
    """Pick the error that says most: a union's branches each report one; a value error names the real problem."""
    return next((e for e in errors if e.type == "value_error"), errors[0])


def read_model_description(source: str | Path) -> Any:
    """Read and validate a bioimage.io model description, as format 0.5.

    Parameters
    ----------
    source
        An ``rdf.yaml`` (or ``bioimageio.yaml``), the folder holding it, or a package ``.zip``.

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
        The description; a 0.4 package is converted by bioimageio.spec.

    Raises
    ------
    InputError
        When the package is absent or invalid (missing file, sha256 mismatch, a malformed field):
        one line naming the first failing field.
    """
    spec = _import_spec()
    from bioimageio.spec.model import v0_5

    path = Path(source).expanduser()
    if not path.exists():
        msg = f"bioimage.io package {str(source)!r} does not exist: give an rdf.yaml, its folder or a package .zip"
        raise InputError(msg)
    if path.is_dir():
        found = [p for p in (path / "rdf.yaml", path / "bioimageio.yaml") if p.is_file()]
        if not found:
            msg = f"folder {str(path)!r} holds no rdf.yaml or bioimageio.yaml: give the package's description file"
            raise InputError(msg)
        path = found[0]
    try:
        descr = spec.load_description(path.resolve(), format_version="latest", perform_io_checks=True)
    except Exception as exc:  # unreadable YAML or zip
        msg = f"bioimage.io package {str(source)!r} cannot be read ({type(exc).__name__}: {exc})"
        raise InputError(" ".join(msg.split())) from exc
    summary = descr.validation_summary
    errors = [e for d in summary.details for e in d.errors]
    if errors:
        first = _first_error(errors)
        text = " ".join(str(first.msg).split()).removeprefix("Value error, ")
        msg = f"bioimage.io package {str(source)!r} is invalid at {_loc(first.loc)}: {text}"
        raise InputError(msg)
    if not isinstance(descr, v0_5.ModelDescr):
        kind = getattr(descr, "type", type(descr).__name__)
        msg = f"bioimage.io package {str(source)!r} describes a {kind}, not a model: give a model package"
        raise InputError(msg)
    return descr


def _tile_size(axis: Any, where: str, wanted: int | None) -> tuple[int, int, int]:
    """Return (tile, min, step) of one spatial input axis."""
    from bioimageio.spec.model import v0_5

    size = axis.size
    if isinstance(size, int):
        if wanted is not None and wanted != size:
            msg = f"{where}.size is fixed at {size}, so tile {wanted} cannot be used: give {size} or leave the tile out"
            raise InputError(msg)
        return size, size, 0
    if isinstance(size, v0_5.ParameterizedSize):
        lo, step = int(size.min), int(size.step)
        aim = DEFAULT_TILE.get(str(axis.id), 64) if wanted is None else wanted
        if step == 0:
            n = 0
        else:
            n = max(0, math.ceil((aim - lo) / step))
        tile = lo + n * step
        if wanted is not None and tile != wanted:
            msg = f"{where}.size allows {lo} + n*{step}, not {wanted}: give e.g. {tile}"
            raise InputError(msg)
        return tile, lo, step
    msg = f"{where}.size refers to another tensor ({type(size).__name__}): ebai tiles inputs whose size is fixed or min + n*step"
    raise InputError(msg)


def _axes_letters(axes: Sequence[Any], where: str) -> str:
    """Axis letters of a tensor in the package's order (``b``, ``c``, ``z``, ``y``, ``x``)."""
    letters = ""
    for i, axis in enumerate(axes):
        kind = axis.type
        if kind == "batch":
            letters += "b"
        elif kind == "channel":
            letters += "c"
        elif kind == "space" and str(axis.id) in _SPATIAL_ORDER:
            letters += str(axis.id)
        else:
            msg = (
                f"{where}.axes[{i}] is a {kind} axis {str(axis.id)!r}: ebai compresses networks over space axes "
                "z, y, x (with batch and channel), not time or index axes"
            )
            raise InputError(msg)
    spatial = [a for a in letters if a in _SPATIAL_ORDER]
    if len(spatial) not in (2, 3) or len(set(letters)) != len(letters):
        msg = f"{where}.axes are {list(letters)!r}: ebai needs 2 or 3 distinct space axes (y, x and maybe z)"
        raise InputError(msg)
    return letters


def _channels(axes: Sequence[Any]) -> int | None:
    for axis in axes:
        if axis.type == "channel":
            size = getattr(axis, "size", None)
            if isinstance(size, int):
                return size
            names = getattr(axis, "channel_names", None)
            return len(names) if names is not None else None
    return 1


def _tolerance(descr: Any) -> dict[str, Any]:
    """Return the package's reproducibility tolerance (bioimage.io defaults where it states none)."""
    from bioimageio.spec.model import v0_5

    stated = list(descr.config.bioimageio.reproducibility_tolerance)
    tol = stated[0] if stated else v0_5.ReproducibilityTolerance()
    return {
        "relative_tolerance": float(tol.relative_tolerance),
        "absolute_tolerance": float(tol.absolute_tolerance),
        "mismatched_elements_per_million": int(tol.mismatched_elements_per_million),
        "stated": bool(stated),
    }


class BioImageIOAdapter(Adapter):
    """A bioimage.io model package, read with bioimageio.spec and processed with bioimageio.core.

    Parameters
    ----------
    source
        The package: an ``rdf.yaml``, its folder, or a ``.zip`` (formats 0.4 and 0.5).
    tile
        Spatial tile in ebai's order (``z, y, x``); must be a valid size of the package
        (``min + n*step``). By default the smallest valid size at or above 32 (z) / 128 (y, x).
    weight_format
        ``pytorch_state_dict``, ``torchscript`` or ``onnx``; by default the first the package has,
        in that order.
    check_architecture
        Import the architecture of ``pytorch_state_dict`` weights now, so a broken reference is
        reported before any work; ``False`` runs no code of the package until the network is loaded
        (the exporter reads only the description).

    Notes
    -----
    One input and one output tensor with batch, channel and 2 or 3 space axes, in any order; the
    network is run in ebai's order (``b, c, z, y, x``) by a wrapper that transposes for it. The
    output's space axes must follow the input's (same size), as ebai tiles image-to-image networks.
    """

    name = "bioimageio"
    path_keys = ("source",)

    def __init__(
        self,
        source: str | Path,
        *,
        tile: Sequence[int] | str | None = None,
        weight_format: str | None = None,
        check_architecture: bool = True,
    ) -> None:
        self.source = str(Path(source).expanduser().resolve())
        self.descr = read_model_description(self.source)
        descr = self.descr
        if len(descr.inputs) != 1 or len(descr.outputs) != 1:
            msg = (
                f"inputs/outputs: the package has {len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); "
                "ebai compresses networks with one input and one output tensor"
            )
            raise InputError(msg)
        self.weight_format = self._choose_weights(weight_format)
        inp, out = descr.inputs[0], descr.outputs[0]
        self.in_axes = _axes_letters(inp.axes, "inputs[0]")
        self.out_axes = _axes_letters(out.axes, "outputs[0]")
        spatial = "".join(a for a in _SPATIAL_ORDER if a in self.in_axes)
        if "".join(a for a in _SPATIAL_ORDER if a in self.out_axes) != spatial:
            msg = f"outputs[0].axes {list(self.out_axes)!r} do not have the input's space axes {list(spatial)!r}: ebai tiles image-to-image networks"
            raise InputError(msg)
        if self.weight_format == "onnx" and self.in_axes.lstrip("b").lstrip("c") != spatial:
            msg = f"inputs[0].axes {list(self.in_axes)!r}: ebai reads ONNX weights whose axes are batch, channel, then {', '.join(spatial)}"
            raise InputError(msg)
        wanted = _parse_tile(tile, len(spatial))
        by_id = {str(a.id): a for a in inp.axes if a.type == "space"}
        sizes = [
            _tile_size(by_id[a], f"inputs[0].axes[{self.in_axes.index(a)}]", None if wanted is None else wanted[k])
            for k, a in enumerate(spatial)
        ]
        tile_shape = tuple(s[0] for s in sizes)
        steps = [s[2] for s in sizes if s[2]]
        divisor = math.gcd(*steps) if steps and all(s[1] % s[2] == 0 for s in sizes if s[2]) else 1
        divisor = math.gcd(divisor, *tile_shape)
        halo = max((int(getattr(a, "halo", 0) or 0) for a in out.axes), default=0)
        overlap = min(max(0.25, 2 * halo / min(tile_shape)), 0.75)
        channels = _channels(inp.axes)
        if channels is None:
            msg = "inputs[0].axes: the channel axis has no fixed size: ebai needs to know the input channels"
            raise InputError(msg)
        self.halo = halo
        self.tile = tile_shape
        self.input_spec = InputSpec(
            axes="bc" + spatial, channels=channels, tile=tile_shape, overlap=overlap, divisor=max(divisor, 1)
        )
        self._out_channels = _channels(out.axes)
        self.tolerance = _tolerance(descr)
        self._procs: Any = None
        if check_architecture and self.weight_format == "pytorch_state_dict":
            self._check_architecture()

    # ------------------------------------------------------------------------------ reading
    def _choose_weights(self, weight_format: str | None) -> str:
        present = [name for name, entry in self.descr.weights if entry is not None]
        usable = [f for f in WEIGHT_FORMATS if f in present]
        if weight_format is not None:
            if weight_format not in WEIGHT_FORMATS:
                msg = f"weight format {weight_format!r} is not one ebai reads: use one of {', '.join(WEIGHT_FORMATS)}"
                raise InputError(msg)
            if weight_format not in present:
                msg = f"weights.{weight_format}: the package has no such weights, it has {', '.join(present)}"
                raise InputError(msg)
            return weight_format
        if not usable:
            msg = f"weights: the package has only {', '.join(present)} weights; ebai reads {', '.join(WEIGHT_FORMATS)}"
            raise InputError(msg)
        return usable[0]

    def _check_architecture(self) -> None:
        from bioimageio.core.digest_spec import import_callable

        arch = self.descr.weights.pytorch_state_dict.architecture
        try:
            import_callable(arch)
        except Exception as exc:
            name = getattr(arch, "callable", "?")
            where = getattr(arch, "import_from", None) or getattr(arch, "source", None)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            msg = f"weights.pytorch_state_dict.architecture {name!r} from {str(where)!r} cannot be imported ({reason})"
            raise InputError(msg) from exc

    @property
    def pruning_refused(self) -> str | None:
        """Why this package's network cannot be pruned, or ``None`` when it can."""
        if self.weight_format == "pytorch_state_dict":
            return None
        return (
            f"the package's {self.weight_format} weights hold a fixed graph whose channels cannot be traced, so they "
            "can be quantized but not pruned: use --prune none, or give a package with pytorch_state_dict weights"
        )

    @property
    def output_spec(self) -> OutputSpec:
        """Output layout in ebai's order; channels from the description or one forward pass."""
        if self._out_channels is None:
            import torch

            with torch.inference_mode():
                out = self.load_module()(torch.zeros(self.input_spec.batch_shape(1)))
            self._out_channels = int(out.shape[1])
        return OutputSpec(axes=self.input_spec.axes, channels=self._out_channels)

    def load_module(self) -> Any:
        """Return the package's network in eval mode, taking and giving ebai's axis order."""
        from ebai.adapters._bioimageio_torch import load_network

        return load_network(self)

    # ----------------------------------------------------------------------- processing
    def _processing(self) -> Any:
        if self._procs is None:
            from bioimageio.core.proc_setup import setup_pre_and_postprocessing

            self._procs = setup_pre_and_postprocessing(self.descr, dataset_for_initial_statistics=())
        return self._procs

    def _to_package(self, array: np.ndarray, letters: str) -> np.ndarray:
        """``(C, *spatial)`` in ebai's order to the package's axis order (batch of one)."""
        ebai = "bc" + self.input_spec.spatial_axes
        x = np.asarray(array)[np.newaxis]
        for i, a in enumerate(ebai):
            if a not in letters and x.shape[i] != 1:
                msg = f"the package has no {a!r} axis but the data has {x.shape[i]} along it: give one {a!r}"
                raise InputError(msg)
        present = "".join(a for a in ebai if a in letters)
        x = x.reshape([n for n, a in zip(x.shape, ebai, strict=True) if a in letters])
        return np.transpose(x, [present.index(a) for a in letters])

    def _from_package(self, array: np.ndarray, letters: str) -> np.ndarray:
        """Package-ordered array (batch of one) back to ``(C, *spatial)`` in ebai's order."""
        ebai = "bc" + self.input_spec.spatial_axes
        x = np.asarray(array)
        for a in ebai:
            if a not in letters:
                x = x[np.newaxis]
                letters = a + letters
        x = np.transpose(x, [letters.index(a) for a in ebai])
        return x[0]

    def _apply(self, array: np.ndarray, which: str) -> np.ndarray:
        from bioimageio.core import Sample, Tensor

        descr = self.descr.inputs[0] if which == "pre" else self.descr.outputs[0]
        letters = self.in_axes if which == "pre" else self.out_axes
        ids = [str(a.id) for a in descr.axes]
        data = self._to_package(array, letters)
        sample = Sample(members={descr.id: Tensor.from_numpy(data, dims=ids)}, stat={}, id=None)
        procs = self._processing()
        for op in procs.pre if which == "pre" else procs.post:
            op(sample)
        out = sample.members[descr.id].data.transpose(*ids).values
        return np.asarray(self._from_package(out, letters), dtype=np.float32)

    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Apply the package's preprocessing with bioimageio.core's operators; ``(C, *spatial)`` float32."""
        sample = np.asarray(sample)
        self.input_spec.check_sample(sample)
        return self._apply(sample, "pre")

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Apply the package's postprocessing with bioimageio.core's operators."""
        return self._apply(np.asarray(output, dtype=np.float32), "post")

    # ----------------------------------------------------------------------- test tensors
    def test_tensors(self) -> tuple[np.ndarray, np.ndarray]:
        """The package's test input and output, ``(C, *spatial)`` in ebai's order, unprocessed."""
        from bioimageio.spec.utils import load_array

        inp, out = self.descr.inputs[0], self.descr.outputs[0]
        if inp.test_tensor is None or out.test_tensor is None:
            msg = "inputs[0].test_tensor: the package has no test tensors"
            raise InputError(msg)
        x = self._from_package(load_array(inp.test_tensor), self.in_axes)
        y = self._from_package(load_array(out.test_tensor), self.out_axes)
        return x, y

    def held_out_samples(self) -> list[np.ndarray]:
        """Return the package's test inputs, preprocessed: the accuracy guard measures on them too."""
        if self.descr.inputs[0].test_tensor is None:
            return []
        x, _ = self.test_tensors()
        return [self.preprocess(x)]

    def describe(self) -> dict[str, Any]:
        """Adapter description plus the package's name and reproducibility tolerance (for the guard's report)."""
        out = super().describe()
        out["bioimageio"] = {
            "name": self.descr.name,
            "id": str(self.descr.id) if self.descr.id else None,
            "weight_format": self.weight_format,
            "reproducibility_tolerance": self.tolerance,
        }
        return out

    def config(self) -> dict[str, Any]:
        """Return settings that rebuild this adapter (the package path, tile and weight format)."""
        return {"source": self.source, "tile": list(self.tile), "weight_format": self.weight_format}


def _parse_tile(tile: Sequence[int] | str | None, ndim: int) -> tuple[int, ...] | None:
    if tile is None:
        return None
    out = _tile(tile, ndim)
    if len(out) != ndim:
        msg = f"tile {out} has {len(out)} sizes but the package's input has {ndim} space axes: give one size per axis"
        raise InputError(msg)
    return out


def load_bioimageio(
    source: str | Path, *, tile: Sequence[int] | str | None = None, weight_format: str | None = None
) -> BioImageIOAdapter:
    """Read a bioimage.io model package as an ebai model source, ready for :func:`ebai.compress.compress`.

    Parameters
    ----------
    source
        ``rdf.yaml``, its folder, or a package ``.zip`` (formats 0.4 and 0.5).
    tile, weight_format
        See :class:`BioImageIOAdapter`.

    Examples
    --------
    >>> from ebai.adapters import load_bioimageio                   # doctest: +SKIP
    >>> from ebai.compress import compress
    >>> source = load_bioimageio("model.zip")
    >>> compress(source, images, {"prune": {"method": "l1", "ratio": 0.5}}, "model.ebai")
    """
    return BioImageIOAdapter(source, tile=tile, weight_format=weight_format)
