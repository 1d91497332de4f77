"""The ``cellpose`` adapter: cellpose 3's CPnet, its normalisation, and flows-to-masks dynamics.

ebai compresses the network alone; everything around it is cellpose's own code, unmodified:
``cellpose.transforms.normalize_img`` before the network, cellpose's zero padding and tiling
around it (``transforms.get_pad_yx``, ``make_tiles``, ``average_tiles``, as ``core.run_net``
uses them) and ``cellpose.dynamics.resize_and_compute_masks`` (flow following, flow-error check,
small-mask removal) after it, so ``ebai run`` writes label masks as cellpose would: with the same
CPnet and settings, the masks equal ``CellposeModel.eval``'s. The task metric is AP at IoU 0.5
(:func:`ebai.core.metrics.average_precision`).

Only cellpose 3.x is supported: cellpose 4 (Cellpose-SAM) replaced CPnet by a ViT-L from
``segment_anything`` and imports torchvision in ``cellpose.transforms`` (see the package README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.adapters._adapter import Adapter
from ebai.adapters._loading import import_torch, load_state_dict, seeded_init
from ebai.adapters._torch import _tile
from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.core.specs import InputSpec, Normalization, OutputSpec

__all__ = ["CellposeAdapter"]

logger = logging.getLogger("ebai")

_INSTALL = install_line("cellpose")
#: cellpose 3's architecture of its built-in models (cyto3, nuclei, ...).
_DEFAULT_NBASE = (2, 32, 64, 128, 256)
#: Built-in model names whose file name carries cellpose's "torch_0" suffix.
_TORCH_SUFFIXED = ("cyto", "cyto2", "nuclei")


def _cellpose(module: str) -> Any:
    """Import ``cellpose.<module>``, refusing cellpose 4 and a missing cellpose with the install line."""
    import importlib

    try:
        from cellpose.version import version as cp_version
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL) from exc
    if int(str(cp_version).split(".")[0]) >= 4:
        msg = (
            f"cellpose {cp_version} (Cellpose-SAM) is installed but the cellpose adapter runs cellpose 3's CPnet: "
            "pip install 'cellpose>=3.0,<4'"
        )
        raise MissingDependencyError(msg)
    try:
        return importlib.import_module(f"cellpose.{module}")
    except ImportError as exc:
        msg = f"cellpose cannot be imported ({exc}): {_INSTALL}"
        raise MissingDependencyError(msg) from exc


def _resolve_weights(weights: str | Path) -> Path:
    """Resolve a weights path, or a built-in cellpose model name in cellpose's model folder.

    Nothing is downloaded: a built-in model must already be in ``~/.cellpose/models`` (or
    ``$CELLPOSE_LOCAL_MODELS_PATH``), where cellpose puts it on first use.
    """
    path = Path(weights).expanduser()
    if path.is_file():
        return path.resolve()
    name = str(weights)
    if path.parent == Path(".") and path.suffix == "":
        models = _cellpose("models")
        base = f"{name}torch_0" if name in _TORCH_SUFFIXED else name
        cached = Path(models.MODEL_DIR) / base
        if cached.is_file():
            return cached.resolve()
        msg = (
            f"cellpose model {name!r} is not in {models.MODEL_DIR}: run cellpose once with this model to download it, "
            "or give the path of the model file"
        )
        raise InputError(msg)
    msg = f"cellpose weights {name!r} do not exist: give a cellpose 3 model file or a built-in model name such as 'nuclei'"
    raise InputError(msg)


class CellposeAdapter(Adapter):
    """A cellpose 3 network (CPnet) with cellpose's normalisation and mask reconstruction.

    Parameters
    ----------
    weights
        A cellpose 3 model file (a CPnet state dict, e.g. one trained with ``cellpose.train``) or
        a built-in model name (``"nuclei"``, ``"cyto3"``, ...) already downloaded by cellpose.
        The architecture (``nbase``, ``nout``, ``sz``, ``diam_mean``) is read from the file.
        ``None`` builds a randomly initialised network from ``nbase``.
    nbase
        Channel widths, input channels first (cellpose's own models: ``[2, 32, 64, 128, 256]``);
        only used without weights.
    nout
        Output channels (3: Y flow, X flow, cell probability); only used without weights.
    sz
        Convolution kernel size; only used without weights.
    diam_mean
        Object diameter (pixels) the network was trained at. Images are not rescaled: give images
        whose objects are about this size.
    channels
        Channels of the images (1 for grayscale, 2 for cytoplasm + nucleus). Fewer than the
        network's input channels are filled with zero channels, as cellpose does for
        ``channels=[0, 0]``; the exported model takes ``channels`` channels.
    tile
        Square tile (cellpose's ``bsize``), the shape the network is exported at; cellpose uses 224.
    overlap
        Tile overlap fraction (cellpose's ``tile_overlap``); cellpose uses 0.1.
    percentile
        Low and high percentiles of cellpose's normalisation.
    flow_threshold, cellprob_threshold, niter, min_size, max_size_fraction
        cellpose's mask reconstruction settings, with cellpose's defaults.
    """

    name = "cellpose"
    path_keys = ("weights",)

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        nbase: Sequence[int] | None = None,
        nout: int = 3,
        sz: int = 3,
        diam_mean: float = 30.0,
        channels: int = 1,
        tile: Sequence[int] | int | str = 224,
        overlap: float = 0.1,
        percentile: Sequence[float] = (1.0, 99.0),
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        niter: int = 200,
        min_size: int = 15,
        max_size_fraction: float = 0.4,
    ) -> None:
        arch = {"nbase": list(nbase or _DEFAULT_NBASE), "nout": int(nout), "sz": int(sz), "diam_mean": float(diam_mean)}
        # Rebuilt from an artifact's description where the weights file is absent: the recorded
        # architecture serves pre/postprocessing; load_module reports the missing file.
        deferred = weights is not None and nbase is not None and not Path(weights).expanduser().is_file()
        if deferred:
            logger.info("cellpose weights %s not found: the adapter only pre/postprocesses", weights)
        self.weights = str(weights) if deferred else str(_resolve_weights(weights)) if weights is not None else None
        if self.weights is not None and not deferred:
            from ebai.adapters._cellpose_net import architecture_from_state

            try:
                found = architecture_from_state(load_state_dict(self.weights))
            except ValueError as exc:
                msg = f"cellpose weights {self.weights!r} cannot be used: {exc}"
                raise InputError(msg) from exc
            if nbase is not None and list(nbase) != found["nbase"]:
                msg = f"nbase {list(nbase)} does not match the weights' {found['nbase']}: drop nbase or fix it"
                raise InputError(msg)
            arch.update(found)
        self.nbase: list[int] = [int(n) for n in arch["nbase"]]
        self.nout = int(arch["nout"])
        self.sz = int(arch["sz"])
        self.diam_mean = float(arch["diam_mean"])
        if len(self.nbase) < 3:
            msg = f"nbase {self.nbase} is too short: give the input channels and at least two widths"
            raise InputError(msg)
        if self.nout < 3:
            msg = f"nout is {self.nout}: cellpose's dynamics need Y flow, X flow and cell probability (nout >= 3)"
            raise InputError(msg)
        if not 1 <= int(channels) <= self.nbase[0]:
            msg = f"channels is {channels} but the network takes {self.nbase[0]}: use 1 to {self.nbase[0]}"
            raise InputError(msg)
        square = _tile(tile, 2)
        square = square * 2 if len(square) == 1 else square  # "224" as one size
        if len(square) != 2 or square[0] != square[1]:
            msg = f"tile {list(square)} is not square: cellpose tiles at one size (its bsize), e.g. tile=224"
            raise InputError(msg)
        low, high = (float(p) for p in percentile)
        self.percentile = (low, high)
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)
        self.niter = int(niter)
        self.min_size = int(min_size)
        self.max_size_fraction = float(max_size_fraction)
        self.input_spec = InputSpec(
            axes="bcyx",
            channels=int(channels),
            tile=square,
            # cellpose's normalize99 per channel; what engines run without the adapter apply.
            normalization=Normalization(kind="percentile", low=low, high=high),
            overlap=float(overlap),
            divisor=2 ** (len(self.nbase) - 2),
        )

    @property
    def output_spec(self) -> OutputSpec:
        """Flows (Y, X) and cell probability logits, ``nout`` channels."""
        return OutputSpec(axes="bcyx", channels=self.nout)

    def load_module(self) -> Any:
        """Build cellpose's CPnet, load the weights, and wrap it to return only the flows tensor."""
        torch = import_torch("cellpose")
        _cellpose("resnet_torch")
        from ebai.adapters._cellpose_net import FlowsOnly, build_cpnet

        with seeded_init():
            net = build_cpnet(self.nbase, self.nout, self.sz, self.diam_mean)
        if self.weights is not None:
            state = load_state_dict(self.weights)
            own = net.state_dict()
            for key in ("diam_mean", "diam_labels"):  # older cellpose files may lack these
                state.setdefault(key, own[key])
            missing = sorted(set(own) - set(state))
            if missing:
                msg = f"cellpose weights {self.weights!r} lack {missing[:3]}: give a cellpose 3 CPnet model file"
                raise InputError(msg)
            net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        module = FlowsOnly(net, pad_channels=self.nbase[0] - self.input_spec.channels)
        return module.eval().to(torch.device("cpu"))

    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Normalise each channel with cellpose's own ``transforms.normalize_img`` (1st-99th percentile)."""
        sample = np.asarray(sample)
        self.input_spec.check_sample(sample)
        transforms = _cellpose("transforms")
        x = sample.astype(np.float32, copy=True)
        return np.asarray(
            transforms.normalize_img(x, normalize=True, percentile=self.percentile, axis=0), dtype=np.float32
        )

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
        """Run CPnet over one preprocessed image ``(C, Y, X)`` as cellpose 3's ``core.run_net`` does.

        cellpose's own functions zero-pad the image (``transforms.get_pad_yx``: 8 pixels, and up
        to a multiple of 16), cut it into tiles of the tile size (``transforms.make_tiles``,
        cellpose's ``bsize`` and ``tile_overlap``) and blend the tiles with cellpose's taper
        (``transforms.average_tiles``); only the network call is ``infer``. CPnet's style vector
        is a mean over the whole tile, so any other padding or tiling changes the flows everywhere.

        Where a padded side is shorter than the tile, cellpose runs one smaller tile. That is done
        here too unless ``fixed_tile`` (a compiled engine takes only the tile): then the padded
        image is zero-padded further, at its end, to the tile, and the flows differ from
        cellpose's through the style vector. Images at least ``tile - 16`` pixels a side are
        always run exactly as cellpose runs them.
        """
        from ebai.core.progress import progress

        transforms = _cellpose("transforms")
        x = np.asarray(image, dtype=np.float32)
        if x.ndim != 3:
            msg = (
                f"cellpose runs 2D images (C, Y, X), got shape {tuple(x.shape)}: give one 2D image with channels first"
            )
            raise InputError(msg)
        bsize = int(self.input_spec.tile[0])
        ly, lx = x.shape[1:]
        ypad1, ypad2, xpad1, xpad2 = transforms.get_pad_yx(ly, lx)
        padded = np.pad(x, [(0, 0), (ypad1, ypad2), (xpad1, xpad2)], mode="constant")
        short = [max(0, bsize - n) for n in padded.shape[1:]]
        if fixed_tile and any(short):
            logger.debug("padded image %s is smaller than the tile %d: zero-padded to it", padded.shape[1:], bsize)
            padded = np.pad(padded, [(0, 0), (0, short[0]), (0, short[1])], mode="constant")
        overlap = self.input_spec.overlap if overlap is None else float(overlap)
        tiles, ysub, xsub, tly, tlx = transforms.make_tiles(padded, bsize=bsize, augment=False, tile_overlap=overlap)
        tiles = tiles.reshape(-1, *tiles.shape[2:])
        batches = (tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size))
        infer_many = getattr(infer, "infer_many", None)
        outputs = infer_many(batches) if callable(infer_many) else (infer(b) for b in batches)
        if progress_desc is not None:
            outputs = progress(outputs, desc=progress_desc, total=-(-len(tiles) // batch_size), unit="batch")
        flows = np.concatenate([np.asarray(o, dtype=np.float32) for o in outputs])
        if flows.ndim != 4 or flows.shape[0] != len(tiles) or flows.shape[2:] != tiles.shape[2:]:
            msg = (
                f"the network returned shape {tuple(flows.shape)} for {len(tiles)} tiles of {tuple(tiles.shape[1:])}: "
                "it must return (N, 3, Y, X) flows and cell probability for each tile"
            )
            raise InputError(msg)
        blended = transforms.average_tiles(flows, ysub, xsub, tly, tlx)
        return np.asarray(blended[:, ypad1 : ypad1 + ly, xpad1 : xpad1 + lx], dtype=np.float32)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Turn flows and cell probability ``(nout, Y, X)`` into a label image with cellpose's dynamics."""
        torch = import_torch("cellpose")
        dynamics = _cellpose("dynamics")
        output = np.asarray(output, dtype=np.float32)
        if output.ndim != 3 or output.shape[0] < 3:
            msg = f"cellpose output has shape {output.shape}, not (3, Y, X) flows and cell probability: run a cellpose model"
            raise InputError(msg)
        masks = dynamics.resize_and_compute_masks(
            output[:2],
            output[2],
            niter=self.niter,
            cellprob_threshold=self.cellprob_threshold,
            flow_threshold=self.flow_threshold,
            interp=True,
            min_size=self.min_size,
            max_size_fraction=self.max_size_fraction,
            device=torch.device("cpu"),
        )
        return np.asarray(masks)

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """AP at IoU 0.5 of predicted masks against target masks (the original model's)."""
        from ebai.core.metrics import average_precision

        return {"ap50": float(average_precision(prediction, target, threshold=0.5))}

    def config(self) -> dict[str, Any]:
        """Return settings that rebuild this adapter."""
        spec = self.input_spec
        return {
            "weights": self.weights,
            "nbase": list(self.nbase),
            "nout": self.nout,
            "sz": self.sz,
            "diam_mean": self.diam_mean,
            "channels": spec.channels,
            "tile": list(spec.tile),
            "overlap": spec.overlap,
            "percentile": list(self.percentile),
            "flow_threshold": self.flow_threshold,
            "cellprob_threshold": self.cellprob_threshold,
            "niter": self.niter,
            "min_size": self.min_size,
            "max_size_fraction": self.max_size_fraction,
        }
