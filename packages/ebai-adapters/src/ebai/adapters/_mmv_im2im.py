"""The ``mmv_im2im`` adapter: a model from an mmv_im2im config file and its Lightning checkpoint.

mmv_im2im describes a model in a YAML file (read by its ``pyrallis`` dataclasses); the parts this
adapter reads are, as in mmv_im2im's ``ProjectTester``::

    data:
      inference_input: {reader_params: {dimension_order_out: ZYX}}  # spatial axes
      preprocess:                        # mmv_im2im/MONAI ops applied to the (C, *spatial) tensor
        - {module_name: mmv_im2im.preprocessing.transforms, func_name: norm_around_center, params: {min_z: 32}}
      postprocess:                       # optional, applied to the (1, C, *spatial) prediction
        - {module_name: mmv_im2im.postprocessing.basic_collection, func_name: extract_segmentation,
           params: {channel: 1, cutoff: 0.5}}
    model:
      framework: FCN                     # the image-to-image framework; the network is model.net
      net: {module_name: mmv_im2im.models.nets.fnet_nn_3d, func_name: Net,
            params: {depth: 4, mult_chan: 32, in_channels: 1, out_channels: 1}}
      checkpoint: best.ckpt              # Lightning checkpoint; keys "net.*" are the network
      model_extra:
        sliding_window_params: {roi_size: [32, 128, 128], overlap: 0.2, mode: gaussian}

The network is built by mmv_im2im's own rule (``module_name.func_name(**params)``), preprocessing
and postprocessing run mmv_im2im's and MONAI's own functions (a training config's dictionary
transforms only where their ``keys`` include the input image ``IM``, as mmv_im2im applies them),
and the tile and overlap come from ``sliding_window_params``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ebai.adapters._adapter import Adapter, normalization_from
from ebai.adapters._loading import import_torch, seeded_init
from ebai.adapters._torch import _tile
from ebai.core.configfile import load_yaml
from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.core.specs import InputSpec, Normalization, OutputSpec

__all__ = ["MmvIm2ImAdapter", "read_mmv_config"]

logger = logging.getLogger("ebai")

_INSTALL = install_line("mmv_im2im")
#: Ops that load, add a channel, convert or augment: ebai reads and crops images itself.
_SKIPPED_OPS = (
    "LoadImage",
    "LoadImaged",
    "AddChannel",
    "AddChanneld",
    "EnsureChannelFirst",
    "EnsureChannelFirstd",
    "EnsureType",
    "EnsureTyped",
    "ToTensor",
    "ToTensord",
)
_MONAI_OPS = (
    "NormalizeIntensity",
    "ScaleIntensity",
    "ScaleIntensityRange",
    "ScaleIntensityRangePercentiles",
    "ClipIntensityPercentiles",
    "ThresholdIntensity",
    "ShiftIntensity",
    "CastToType",
    "DivisiblePad",
    "SpatialPad",
    "BorderPad",
    "Activations",
    "AsDiscrete",
    "KeepLargestConnectedComponent",
    "FillHoles",
    "LabelFilter",
)
#: The only pre/postprocessing ops a config may name (``module_name`` -> ``func_name``s): intensity,
#: padding and segmentation transforms of mmv_im2im and MONAI. A config travels inside an artifact's
#: manifest, which anyone can edit; any other name would make ebai import and call code it names.
ALLOWED_OPS: dict[str, frozenset[str]] = {
    "mmv_im2im.preprocessing.transforms": frozenset(
        {"norm_around_center", "pad_to_multiple", "pad_z", "normalize_staining"}
    ),
    "mmv_im2im.postprocessing.basic_collection": frozenset(
        {"extract_segmentation", "generate_classmap", "prune_labels_by_size", "remove_isolated_pixels"}
    ),
    "monai.transforms": frozenset(_MONAI_OPS + tuple(f"{op}d" for op in _MONAI_OPS)),
}
#: mmv_im2im frameworks whose ``model.net`` maps an image to an image in one tensor.
_FRAMEWORKS = ("FCN",)
#: The data key mmv_im2im's data modules give the input image (the target is ``GT``).
_INPUT_KEY = "IM"


def _check_config(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        msg = f"{where} has no 'model' section: give an mmv_im2im config file"
        raise InputError(msg)
    return copy.deepcopy(dict(data))


def read_mmv_config(path: str | Path) -> dict[str, Any]:
    """Read an mmv_im2im YAML config as plain data (no mmv_im2im import needed)."""
    path = Path(path)
    data = load_yaml(path, "mmv_im2im config", "give the YAML file the model was trained or run with")
    return _check_config(data, repr(str(path)))


def _resolve(info: Mapping[str, Any], where: str) -> Callable[..., Any]:
    """Import ``module_name.func_name`` of an mmv_im2im config entry."""
    module_name, func_name = info.get("module_name"), info.get("func_name")
    if not module_name or not func_name:
        msg = f"{where} needs module_name and func_name, got {dict(info)!r}"
        raise InputError(msg)
    try:
        module = importlib.import_module(str(module_name))
    except ImportError as exc:
        if str(module_name).startswith("mmv_im2im"):
            raise MissingDependencyError(_INSTALL) from exc
        msg = f"{where} names module {module_name!r}, which cannot be imported ({exc}): install it"
        raise InputError(msg) from exc
    if not hasattr(module, str(func_name)):
        msg = f"{where}: module {module_name!r} has no {func_name!r}"
        raise InputError(msg)
    return getattr(module, str(func_name))


def _applies_to_input(info: Mapping[str, Any]) -> bool:
    """Whether an op reaches the input image: no ``keys`` (an array op), or keys that include ``IM``.

    A training config's dictionary transforms name the data they change (``keys: [GT]`` rescales
    only the target), and mmv_im2im applies each to those keys alone.
    """
    keys = dict(info.get("params") or {}).get("keys")
    if keys is None:
        return True
    return _INPUT_KEY in ([keys] if isinstance(keys, str) else list(keys))


def _build_op(info: Mapping[str, Any], where: str) -> Callable[[Any], Any] | None:
    """One preprocessing/postprocessing op as mmv_im2im builds it, or ``None`` for skipped ops."""
    name = str(info.get("func_name", ""))
    if name in _SKIPPED_OPS or name.startswith("Rand") or not _applies_to_input(info):
        return None
    module_name = str(info.get("module_name", ""))
    if name not in ALLOWED_OPS.get(module_name, ()):
        msg = (
            f"{where} names {module_name}.{name}, which is not a transform ebai applies (mmv_im2im and MONAI intensity, "
            "padding and segmentation ops only): use one of those, or run the model with mmv_im2im itself"
        )
        raise InputError(msg)
    params = dict(info.get("params") or {})
    keys = params.pop("keys", None)
    func = _resolve(info, where)
    if inspect.isclass(func):
        if keys is not None:  # a dictionary transform of a training config: run it on the input key only
            op = func(keys=[_INPUT_KEY], **params)
            return lambda x, op=op: op({_INPUT_KEY: x})[_INPUT_KEY]
        return func(**params)
    return partial(func, **params)


def _range(params: Mapping[str, Any], low: str, high: str) -> dict[str, float]:
    """Return the output range a MONAI op maps to (``b_min``/``b_max``, ``minv``/``maxv``); [0, 1] when unset."""
    lo, hi = params.get(low), params.get(high)
    if lo is None or hi is None:  # MONAI then leaves the values in [0, 1]
        return {}
    return {"out_low": float(lo), "out_high": float(hi)}


def _normalization_of(ops: Sequence[Mapping[str, Any]]) -> Normalization:
    """Return the built-in normalisation closest to the config's preprocessing (for engines run without it)."""
    for info in ops:
        if not _applies_to_input(info):
            continue
        name = str(info.get("func_name", ""))
        params = dict(info.get("params") or {})
        if name in ("norm_around_center", "NormalizeIntensity", "NormalizeIntensityd"):
            return Normalization(kind="zscore")
        if name in ("ScaleIntensityRangePercentiles", "ScaleIntensityRangePercentilesd"):
            return Normalization(
                kind="percentile",
                low=float(params.get("lower", 1.0)),
                high=float(params.get("upper", 99.8)),
                **_range(params, "b_min", "b_max"),
            )
        if name in ("ScaleIntensity", "ScaleIntensityd"):
            return Normalization(kind="minmax", **_range(params, "minv", "maxv"))
    return Normalization()


def _declared_ndim(data: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[int, str] | None:
    """Spatial dimensions the config gives the images, and where it says so; ``None`` if it does not.

    The inference reader's ``dimension_order_out`` first, then a training config's ``LoadImaged``
    of the input ``IM``, then the network's ``spatial_dims``/``dimensions`` (MONAI networks).
    """
    order = ((data.get("inference_input") or {}).get("reader_params") or {}).get("dimension_order_out")
    if order:
        return sum(a in "ZYX" for a in str(order).upper()), f"data.inference_input dimension_order_out {order!r}"
    for info in data.get("preprocess") or []:
        op = dict(info.get("params") or {})
        if info.get("func_name") == "LoadImaged" and _applies_to_input(info) and op.get("dimension_order_out"):
            order = op["dimension_order_out"]
            return sum(a in "ZYX" for a in str(order).upper()), f"the LoadImaged of IM (dimension_order_out {order!r})"
    for key in ("spatial_dims", "dimensions"):
        if params.get(key) is not None:
            return int(params[key]), f"model.net's {key}={params[key]}"
    return None


def _divisor(net: Mapping[str, Any]) -> int:
    params = dict(net.get("params") or {})
    module = str(net.get("module_name", ""))
    if module.startswith("mmv_im2im.models.nets.fnet_nn"):
        return 2 ** int(params.get("depth", 4))
    strides = params.get("strides")
    if strides:
        out = 1
        for s in strides:
            out *= max(int(v) for v in s) if isinstance(s, (list, tuple)) else int(s)
        return out
    return 1


class MmvIm2ImAdapter(Adapter):
    """A model made with mmv_im2im, rebuilt from its config file and checkpoint.

    Parameters
    ----------
    config
        The mmv_im2im YAML file (training or inference config), or its parsed content; see the
        module docstring for the keys read. The description records the parsed content, so an
        artifact rebuilds the adapter's pre/postprocessing without the file.
    checkpoint
        The Lightning checkpoint (``.ckpt``) or a state dict; default ``model.checkpoint`` of the
        config (relative to the config's folder). ``None`` and no checkpoint in the config keeps
        the network randomly initialised (mmv_im2im's own initialisation is not applied).
    trust_pickle
        Read a checkpoint that ``weights_only=True`` refuses (it may run code on load).
    tile
        Tile; default ``model.model_extra.sliding_window_params.roi_size``.
    overlap
        Tile overlap; default ``sliding_window_params.overlap`` (else 0.25).
    divisor
        Spatial size multiple; default ``2**depth`` for fnet, the strides' product for MONAI nets.
    normalization
        What engines run without the adapter apply; default inferred from the config's
        preprocessing for the input key ``IM`` (``norm_around_center`` and ``NormalizeIntensity``
        read as zscore, ``ScaleIntensityRangePercentiles`` as percentile with its
        ``b_min``/``b_max``, ``ScaleIntensity`` as minmax with its ``minv``/``maxv``).
    """

    name = "mmv_im2im"
    path_keys = ("config", "checkpoint")

    def __init__(
        self,
        config: str | Path | Mapping[str, Any],
        *,
        checkpoint: str | Path | None = None,
        trust_pickle: bool = False,
        tile: Sequence[int] | int | str | None = None,
        overlap: float | None = None,
        divisor: int | None = None,
        normalization: str | Normalization | Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(config, Mapping):
            self.config_path: Path | None = None
            cfg = _check_config(config, "the mmv_im2im config")
            folder = Path.cwd()
        else:
            self.config_path = Path(config).expanduser().resolve()
            cfg = read_mmv_config(self.config_path)
            folder = self.config_path.parent
        self.mmv_config = cfg
        model = dict(cfg["model"])
        data = dict(cfg.get("data") or {})
        framework = model.get("framework", "FCN")
        if framework not in _FRAMEWORKS:
            msg = (
                f"mmv_im2im framework {framework!r} is not supported: the adapter takes {', '.join(_FRAMEWORKS)} models, "
                "whose network maps an image to an image"
            )
            raise InputError(msg)
        net = dict(model.get("net") or {})
        params = dict(net.get("params") or {})
        task = params.pop("task", None)
        if task == "regression":
            msg = "this mmv_im2im model regresses one value per image (task: regression), not an image: ebai tiles image-to-image models"
            raise InputError(msg)
        net["params"] = params
        self.net_info = net
        if checkpoint is None and model.get("checkpoint"):
            ckpt = Path(str(model["checkpoint"])).expanduser()
            checkpoint = ckpt if ckpt.is_absolute() else folder / ckpt
        self.checkpoint = str(Path(checkpoint).expanduser().resolve()) if checkpoint is not None else None
        self.trust_pickle = bool(trust_pickle)
        self.preprocess_ops = list(data.get("preprocess") or [])
        self.postprocess_ops = list(data.get("postprocess") or [])

        sliding = dict((model.get("model_extra") or {}).get("sliding_window_params") or {})
        declared = _declared_ndim(data, params)
        if tile is None:
            tile = sliding.get("roi_size")
            if tile is None:
                msg = "the config has no model_extra.sliding_window_params.roi_size: give the tile, e.g. tile=[32, 128, 128]"
                raise InputError(msg)
        self._tile = _tile(tile, declared[0] if declared else 0)
        ndim = len(self._tile)
        if declared and ndim != declared[0]:
            msg = f"the tile {list(self._tile)} is {ndim}D but {declared[1]} makes the images {declared[0]}D: give a tile of {declared[0]} sizes"
            raise InputError(msg)
        if ndim not in (2, 3):
            msg = "the spatial axes are not known: set data.inference_input.reader_params.dimension_order_out or give a tile per axis"
            raise InputError(msg)
        self.sliding_mode = str(sliding.get("mode", "gaussian"))
        in_channels = int(params.get("in_channels", params.get("n_in_channels", 1)))
        self._out_channels = params.get("out_channels")
        self.input_spec = InputSpec(
            axes="bc" + ("zyx" if ndim == 3 else "yx"),
            channels=in_channels,
            tile=self._tile,
            normalization=normalization_from(normalization)
            if normalization is not None
            else _normalization_of(self.preprocess_ops),
            overlap=float(overlap if overlap is not None else sliding.get("overlap", 0.25)),
            divisor=int(divisor) if divisor is not None else _divisor(net),
        )

    @property
    def output_spec(self) -> OutputSpec:
        """Output layout; channels from the net's ``out_channels`` or one forward pass."""
        if self._out_channels is None:
            torch = import_torch("mmv_im2im")
            with torch.inference_mode():
                out = self.load_module()(torch.zeros(self.input_spec.batch_shape(1)))
            self._out_channels = int(out.shape[1])
        return OutputSpec(axes=self.input_spec.axes, channels=int(self._out_channels))

    def load_module(self) -> Any:
        """Build ``model.net`` as mmv_im2im does and load the checkpoint's ``net.*`` weights."""
        torch = import_torch("mmv_im2im")
        factory = _resolve(self.net_info, "model.net")
        with seeded_init():
            module = factory(**dict(self.net_info.get("params") or {}))
        if not isinstance(module, torch.nn.Module):
            msg = f"model.net {self.net_info.get('func_name')!r} built a {type(module).__name__}, not a torch network"
            raise InputError(msg)
        self._check_dimensions(module)
        if self.checkpoint is not None:
            module.load_state_dict(self._network_state(module), strict=True)
        return module.eval().to(torch.device("cpu"))

    def _check_dimensions(self, module: Any) -> None:
        """Refuse a tile whose number of axes is not the network's (a 2D tile for a 3D network)."""
        nn = import_torch("mmv_im2im").nn
        convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        first = next((m for m in module.modules() if isinstance(m, convs)), None)
        ndim = self.input_spec.ndim
        if first is not None and len(first.kernel_size) != ndim:
            msg = (
                f"model.net is {len(first.kernel_size)}D (its first layer is {type(first).__name__}) but the tile "
                f"{list(self.input_spec.tile)} is {ndim}D: give a tile of {len(first.kernel_size)} sizes, or set "
                "data.inference_input.reader_params.dimension_order_out"
            )
            raise InputError(msg)

    def _network_state(self, module: Any) -> dict[str, Any]:
        torch = import_torch("mmv_im2im")
        path = Path(self.checkpoint or "")
        if not path.is_file():
            msg = f"mmv_im2im checkpoint {str(path)!r} does not exist: give the .ckpt the model was saved as"
            raise InputError(msg)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=not self.trust_pickle)
        except Exception as exc:
            msg = (
                f"checkpoint {str(path)!r} cannot be read safely ({type(exc).__name__}): pass trust_pickle=True only if "
                "you trust its author (it may run code on load)"
            )
            raise InputError(msg) from exc
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
        if not isinstance(state, Mapping):
            msg = f"checkpoint {str(path)!r} holds no state dict: give the Lightning .ckpt mmv_im2im saved"
            raise InputError(msg)
        own = set(module.state_dict())
        if any(k.startswith("net.") for k in state):  # a Lightning module holds the network as .net
            state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            msg = f"checkpoint {str(path)!r} does not fit model.net: missing {missing[:5]}, unexpected {unexpected[:5]}; check the config"
            raise InputError(msg)
        return dict(state)

    def _run_ops(self, ops: Sequence[Mapping[str, Any]], x: Any, where: str) -> Any:
        for i, info in enumerate(ops):
            op = _build_op(info, f"{where}[{i}]")
            if op is not None:
                x = op(x)
        return x

    def preprocess(self, sample: np.ndarray) -> np.ndarray:
        """Run the config's ``data.preprocess`` ops (mmv_im2im's and MONAI's own) on ``(C, *spatial)``."""
        torch = import_torch("mmv_im2im")
        sample = np.asarray(sample)
        self.input_spec.check_sample(sample)
        if not self.preprocess_ops:
            return self.input_spec.normalization.apply(sample)
        x = self._run_ops(self.preprocess_ops, torch.from_numpy(sample.astype(np.float32)), "data.preprocess")
        x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
        return np.asarray(x, dtype=np.float32)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Run the config's ``data.postprocess`` ops on the ``(1, C, *spatial)`` prediction, as mmv_im2im does."""
        output = np.asarray(output, dtype=np.float32)
        if not self.postprocess_ops:
            return output
        torch = import_torch("mmv_im2im")
        y = self._run_ops(self.postprocess_ops, torch.from_numpy(output[None]), "data.postprocess")
        y = y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
        if y.ndim == output.ndim + 1 and y.shape[0] == 1:
            y = y[0]
        return y

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Mean Dice over the classes of label images; mean SSIM over the channels of images.

        Integer or boolean results are label images, scored per class as MONAI's ``DiceMetric``
        scores them (:func:`ebai.core.metrics.class_dice`). Float results are scored by SSIM on
        each channel over the spatial axes alone (results without a channel axis as one
        channel); spatial sides under 7 pixels (the SSIM window) give no score.
        """
        from ebai.core import metrics

        pred, ref = np.asarray(prediction), np.asarray(target)
        if pred.dtype.kind in "biu" and ref.dtype.kind in "biu":
            return {"dice": float(np.mean(metrics.class_dice(pred, ref)))}
        ndim = self.input_spec.ndim
        if ref.ndim == ndim:
            pred, ref = pred[None], ref[None]
        sides = [n for n in ref.shape[1:] if n > 1]  # SSIM drops axes of one pixel
        if ref.ndim != ndim + 1 or not sides or min(sides) < 7:
            return {}
        scores = [metrics.ssim(p, r) for p, r in zip(pred.astype(np.float32), ref.astype(np.float32), strict=True)]
        return {"ssim": float(np.mean(scores))}

    def config(self) -> dict[str, Any]:
        """Return settings that rebuild this adapter."""
        spec = self.input_spec
        return {
            "config": self.mmv_config,
            "checkpoint": self.checkpoint,
            "trust_pickle": self.trust_pickle,
            "tile": list(spec.tile),
            "overlap": spec.overlap,
            "divisor": spec.divisor,
            "normalization": spec.normalization.to_dict(),
        }
