"""The ``monai`` adapter: MONAI's UNet, BasicUNet and DynUNet built from their constructor arguments.

A small YAML file names the network and its arguments, exactly as MONAI's constructor takes them,
plus the weights, tile and normalisation::

    adapter: monai
    network: UNet
    args: {spatial_dims: 3, in_channels: 1, out_channels: 1, channels: [8, 16, 32], strides: [2, 2]}
    weights: unet.pt
    tile: [16, 32, 32]
    normalization: percentile
    task: regression        # or segmentation (argmax / sigmoid to a label image, Dice as metric)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebai.adapters._adapter import Adapter, normalization_from
from ebai.adapters._loading import import_torch, load_weights, seeded_init
from ebai.adapters._torch import _tile
from ebai.core.errors import InputError, MissingDependencyError
from ebai.core.install_hints import install_line
from ebai.core.specs import InputSpec, Normalization, OutputSpec

__all__ = ["NETWORKS", "MonaiAdapter"]

#: Networks this adapter builds and checks; their divisor comes from their strides.
NETWORKS = ("UNet", "BasicUNet", "DynUNet")
_TASKS = ("regression", "segmentation")
#: Constructor arguments MONAI reads as ``(name, {options})`` tuples, which YAML writes as lists.
_TUPLE_ARGS = ("act", "norm", "norm_name", "act_name", "dropout")
_BASIC_UNET_DEFAULTS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}


def _stride_product(strides: Sequence[Any], ndim: int) -> int:
    """Largest per-axis product of the strides (each stride an int or one int per axis)."""
    per_axis = [1] * ndim
    for s in strides:
        values = [int(s)] * ndim if isinstance(s, (int, float)) else [int(v) for v in s]
        if len(values) != ndim:
            msg = f"stride {s!r} has {len(values)} entries but the network is {ndim}D: give one per spatial axis"
            raise InputError(msg)
        per_axis = [a * v for a, v in zip(per_axis, values, strict=True)]
    return max(per_axis)


def _divisor(network: str, args: Mapping[str, Any], ndim: int) -> int:
    if network == "UNet":
        return _stride_product(args.get("strides", ()), ndim)
    if network == "BasicUNet":
        return 16  # four 2x poolings
    if network == "DynUNet":
        return _stride_product(args.get("strides", ()), ndim)
    return 1


class MonaiAdapter(Adapter):
    """A MONAI network (UNet, BasicUNet, DynUNet) built from its constructor arguments.

    Parameters
    ----------
    network
        Name of the class in ``monai.networks.nets``: ``"UNet"``, ``"BasicUNet"`` or ``"DynUNet"``.
    args
        Its constructor arguments as MONAI documents them (``spatial_dims``, ``in_channels``,
        ``out_channels``, ``channels``/``features``/``filters``, ``strides``, ...). ``act``/``norm``
        written as ``[name, {options}]`` lists are passed as tuples.
    weights
        State dict of the network (``torch.save(net.state_dict(), path)``), loaded with
        ``weights_only=True``; ``None`` keeps the random initialisation (the same on every call).
    tile
        Spatial tile for export, calibration and tiling; every size a multiple of the divisor
        (the product of the strides; 16 for BasicUNet).
    normalization
        Intensity normalisation of raw images (see :func:`~ebai.adapters.normalization_from`).
    overlap
        Fraction of a tile shared with its neighbours when tiling.
    task
        ``"regression"`` (denoising, restoration: the output is kept as is, SSIM as metric) or
        ``"segmentation"`` (softmax/argmax, or sigmoid > 0.5 for one channel, to a label image;
        mean Dice over the foreground classes as metric).
    """

    name = "monai"
    path_keys = ("weights",)
    #: Its post-processing (threshold or argmax over each voxel's channels) is voxel-wise: the
    #: large-image path of ``ebai run`` may apply it block by block.
    pointwise_postprocess = True

    def __init__(
        self,
        network: str = "UNet",
        args: Mapping[str, Any] | None = None,
        *,
        weights: str | Path | None = None,
        tile: Sequence[int] | int | str = 64,
        normalization: str | Normalization | Mapping[str, Any] = "none",
        overlap: float = 0.25,
        task: str = "regression",
    ) -> None:
        if network not in NETWORKS:
            msg = f"MONAI network {network!r} is not supported by the monai adapter: use one of {', '.join(NETWORKS)}"
            raise InputError(msg)
        if task not in _TASKS:
            msg = f"task {task!r} is not understood: use one of {', '.join(_TASKS)}"
            raise InputError(msg)
        self.network = network
        self.args = dict(_BASIC_UNET_DEFAULTS if network == "BasicUNet" else {})
        self.args.update(args or {})
        for key in ("spatial_dims", "in_channels", "out_channels"):
            if key not in self.args:
                msg = f"{network} needs {key!r} in its args: add it to the config"
                raise InputError(msg)
        ndim = int(self.args["spatial_dims"])
        if ndim not in (2, 3):
            msg = f"spatial_dims is {ndim}: MONAI networks here are 2D or 3D"
            raise InputError(msg)
        self.weights = str(Path(weights).expanduser().resolve()) if weights is not None else None
        self.task = task
        self.input_spec = InputSpec(
            axes="bc" + ("zyx" if ndim == 3 else "yx"),
            channels=int(self.args["in_channels"]),
            tile=_tile(tile, ndim),
            normalization=normalization_from(normalization),
            overlap=float(overlap),
            divisor=_divisor(network, self.args, ndim),
        )

    @property
    def output_spec(self) -> OutputSpec:
        """Output layout: the input axes with ``out_channels`` channels."""
        return OutputSpec(axes=self.input_spec.axes, channels=int(self.args["out_channels"]))

    def _constructor_args(self) -> dict[str, Any]:
        out = {}
        for key, value in self.args.items():
            if key in _TUPLE_ARGS and isinstance(value, list):
                value = tuple(value)
            out[key] = value
        return out

    def load_module(self) -> Any:
        """Build the MONAI network, load the weights, and return it in eval mode on the CPU."""
        torch = import_torch("monai")
        try:
            from monai.networks import nets
        except ImportError as exc:
            msg = install_line("monai")
            raise MissingDependencyError(msg) from exc
        cls = getattr(nets, self.network)
        try:
            with seeded_init():
                module = cls(**self._constructor_args())
        except (TypeError, ValueError, AssertionError) as exc:
            msg = f"MONAI {self.network} cannot be built from args {self.args!r} ({exc}): check the args against MONAI's docs"
            raise InputError(msg) from exc
        if self.weights is not None:
            load_weights(module, self.weights)
        # In eval mode DynUNet returns only its full-resolution head, even with deep supervision.
        return module.eval().to(torch.device("cpu"))

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        """Regression: the output as float32; segmentation: a label image (0 = background)."""
        output = np.asarray(output, dtype=np.float32)
        if self.task == "regression":
            return output
        if output.shape[0] == 1:
            return (output[0] > 0).astype(np.uint8)  # sigmoid(x) > 0.5  <=>  x > 0
        return np.argmax(output, axis=0).astype(np.uint16)

    def evaluate(self, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Regression: SSIM; segmentation: mean Dice over every foreground class of the network.

        Per class as MONAI's ``DiceMetric(include_background=False, ignore_empty=False)``
        (:func:`ebai.core.metrics.class_dice`): a class the target lacks but the prediction holds
        scores 0, so an empty target is not passed by any prediction.
        """
        from ebai.core import metrics

        if self.task == "regression":
            pred = np.asarray(prediction, dtype=np.float32)
            ref = np.asarray(target, dtype=np.float32)
            scores = [metrics.ssim(p, r) for p, r in zip(pred, ref, strict=True)]
            return {"ssim": float(np.mean(scores))}
        classes = max(2, int(self.args["out_channels"]))  # one channel: sigmoid, background and class 1
        return {"dice": float(np.mean(metrics.class_dice(prediction, target, num_classes=classes)))}

    def config(self) -> dict[str, Any]:
        """Return settings that rebuild this adapter (the YAML file's keys)."""
        spec = self.input_spec
        return {
            "network": self.network,
            "args": dict(self.args),
            "weights": self.weights,
            "tile": list(spec.tile),
            "normalization": spec.normalization.to_dict(),
            "overlap": spec.overlap,
            "task": self.task,
        }
