"""Reference networks, synthetic data and artifact building for the ebai-openvino tests.

torch is only used here to build reference networks; ``ebai.openvino`` itself never imports it.
Imported by ``conftest.py`` (which puts this folder on ``sys.path``) and by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

TILE_3D = (16, 32, 32)


def _block(cin: int, cout: int, dims: int) -> Any:
    conv, norm = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
        conv(cout, cout, 3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
    )


class PlainUNet(nn.Module):
    """U-Net with BatchNorm, ReLU, max pooling, transposed convolutions and skip concatenations."""

    def __init__(
        self, channels: Sequence[int] = (8, 16, 32), in_channels: int = 1, out_channels: int = 1, dims: int = 3
    ):
        super().__init__()
        up = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        c = list(channels)
        self.enc = nn.ModuleList([_block(in_channels if i == 0 else c[i - 1], c[i], dims) for i in range(len(c))])
        self.up = nn.ModuleList([up(c[i + 1], c[i], 2, stride=2) for i in range(len(c) - 1)])
        self.dec = nn.ModuleList([_block(2 * c[i], c[i], dims) for i in range(len(c) - 1)])
        self.pool = nn.MaxPool3d(2) if dims == 3 else nn.MaxPool2d(2)
        self.head = conv(c[0], out_channels, 1)

    def forward(self, x: Any) -> Any:
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([self.up[i](x), skips.pop()], 1))
        return self.head(x)


def smooth_noise(shape: Sequence[int], seed: int) -> np.ndarray:
    """Image-like float32 data: white noise averaged over 3-voxel neighbourhoods, unit-ish scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    pool = nn.functional.avg_pool3d if len(shape) == 5 else nn.functional.avg_pool2d
    return (pool(x, 3, 1, 1) * 3.0).numpy().astype(np.float32)


def settle(net: Any, shape: Sequence[int], passes: int = 4) -> Any:
    """Give BatchNorm realistic running statistics: forward passes in train mode, then eval."""
    net.train()
    with torch.no_grad():
        for i in range(passes):
            net(torch.from_numpy(smooth_noise(shape, 10_000 + i)))
    return net.eval()


def run_torch(net: Any, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def export(net: Any, path: Path, example: np.ndarray) -> Path:
    """ONNX with a dynamic batch axis: ebai.compress.export_onnx when installed, else torch's exporter."""
    try:
        from ebai.compress import export_onnx
    except ImportError:
        torch.onnx.export(
            net,
            (torch.from_numpy(example),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            dynamo=True,
        )
        return path
    return export_onnx(net, path, example).path


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def build_artifact(
    path: Path,
    onnx_path: Path,
    spec: Any,
    targets: Sequence[tuple[str, dict[str, Any]]],
    calibration: Sequence[np.ndarray],
    *,
    out_channels: int = 1,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write an artifact the way ebai.compress does: reference.onnx + one folder per target."""
    import shutil

    from ebai.core import OutputSpec
    from ebai.core.artifact import ArtifactWriter
    from ebai.core.manifest import Manifest, TargetRecord
    from ebai.openvino import OpenVINOBackend

    backend = OpenVINOBackend()
    records = []
    with ArtifactWriter(path) as w:
        shutil.copyfile(onnx_path, w.root / "reference.onnx")
        for precision, options in targets:
            folder = f"openvino-{precision}"
            lowering = backend.lower(
                w.root / "reference.onnx",
                w.root / folder,
                precision=precision,
                input_spec=spec,
                calibration=calibration,
                options=options,
            )
            records.append(
                TargetRecord.from_lowering(lowering, folder, calibration={"samples": sum(len(c) for c in calibration)})
            )
        w.commit(
            Manifest(
                name=path.stem,
                input=spec,
                output=OutputSpec(spec.axes, out_channels),
                targets=tuple(records),
                reference="reference.onnx",
                source=source or {},
            )
        )
    return path
