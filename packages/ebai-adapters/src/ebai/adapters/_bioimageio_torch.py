"""The network of a bioimage.io package as a torch module taking and giving ebai's axis order.

Imported only when a package's network is loaded (it imports torch). ``pytorch_state_dict`` and
``torchscript`` weights are loaded with bioimageio.core's own loaders; ``onnx`` weights are run by
ONNX Runtime inside a module (:class:`OnnxNetwork`) that also keeps the ONNX file, which
``ebai.compress`` writes out as the reference model instead of exporting (an ONNX graph cannot be
pruned or retrained, only quantized).
"""

from typing import Any

import numpy as np
import torch
from torch import nn

from ebai.core.errors import InputError

__all__ = ["OnnxNetwork", "load_network"]


class _Reordered(nn.Module):
    """Run ``net``, whose tensors have the package's axis order, on tensors in ebai's (b, c, space).

    Only integer lists are kept, so the wrapper can be scripted around a TorchScript network.
    """

    # no ``from __future__ import annotations`` in this module: TorchScript reads these annotations
    squeeze: list[int]
    in_perm: list[int]
    out_perm: list[int]

    def __init__(self, net: nn.Module, ebai: str, inp: str, out: str) -> None:
        super().__init__()
        self.net = net
        self.loop = "b" not in inp  # a network without a batch axis takes one item at a time
        axes = ebai[1:] if self.loop else ebai
        self.squeeze = [i for i in reversed(range(len(axes))) if axes[i] not in inp]
        present = "".join(a for a in axes if a in inp)
        self.in_perm = [present.index(a) for a in inp]
        letters = out
        for a in axes:
            if a not in letters:
                letters = a + letters
        self.unsqueeze = len(letters) - len(out)
        self.out_perm = [letters.index(a) for a in axes]

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        for i in self.squeeze:
            x = x.squeeze(i)
        y = self.net(x.permute(self.in_perm))
        for _ in range(self.unsqueeze):
            y = y.unsqueeze(0)
        return y.permute(self.out_perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.loop:
            return self._one(x)
        items = [self._one(x[i]) for i in range(x.shape[0])]
        return torch.stack(items, dim=0)


class OnnxNetwork(nn.Module):
    """An ONNX graph run by ONNX Runtime, usable wherever ebai runs a torch network (no gradients).

    Attributes
    ----------
    onnx_bytes
        The serialised graph, its batch axis made dynamic; written as the artifact's reference model.
    """

    def __init__(self, onnx_bytes: bytes) -> None:
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self._session: Any = None

    def _run(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self._run()
        name = session.get_inputs()[0].name
        out = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def __deepcopy__(self, memo: dict[int, Any]) -> "OnnxNetwork":
        return OnnxNetwork(self.onnx_bytes)


def _dynamic_batch(data: bytes) -> bytes:
    """Return the ONNX graph with the first axis of its inputs and outputs named ``batch`` (any size)."""
    import onnx

    model = onnx.load_from_string(data)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    return model.SerializeToString()


def _load(adapter: Any) -> nn.Module:
    weights = adapter.descr.weights
    fmt = adapter.weight_format
    where = f"weights.{fmt}"
    try:
        if fmt == "pytorch_state_dict":
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            return load_torch_model(weights.pytorch_state_dict, load_state=True, devices=["cpu"])
        if fmt == "torchscript":
            return torch.jit.load(weights.torchscript.get_reader(), map_location="cpu")
        return OnnxNetwork(_dynamic_batch(weights.onnx.get_reader().read()))
    except InputError:
        raise
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        msg = f"{where} cannot be loaded ({reason}): check the weights file and architecture of the package"
        raise InputError(msg) from exc


def load_network(adapter: Any) -> nn.Module:
    """Return a fresh eval-mode copy of the package's network, in ebai's axis order, on the CPU."""
    net = _load(adapter).eval()
    ebai = "bc" + adapter.input_spec.spatial_axes
    if adapter.in_axes == ebai and adapter.out_axes == ebai:
        return net
    wrapped = _Reordered(net, ebai, adapter.in_axes, adapter.out_axes).eval()
    # a TorchScript network stays TorchScript as a whole, so it is exported as one
    return torch.jit.script(wrapped) if isinstance(net, torch.jit.ScriptModule) else wrapped
