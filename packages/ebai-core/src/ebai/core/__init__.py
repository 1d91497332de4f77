"""ebai.core: the contracts, artifact, plugins and measurement shared by every ebai package.

Importing this package imports numpy and the standard library only (never torch, OpenVINO or
TensorRT), so it is safe in a tool's import path.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebai-core")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from ebai.core.artifact import Artifact, ArtifactWriter, package_versions, sha256_file, write_artifact
from ebai.core.data import ArraySource, ImageFiles
from ebai.core.energy import EnergyResult, measure_energy
from ebai.core.errors import (
    ArtifactError,
    BackendUnavailableError,
    EbaiError,
    FidelityError,
    InputError,
    MissingDependencyError,
    OutputExistsError,
    PluginNotFoundError,
)
from ebai.core.files import atomic_dir, atomic_file, check_output
from ebai.core.imageio import list_images, read_image, to_sample, write_tiff
from ebai.core.interfaces import PRECISIONS, Backend, DataSource, Engine, Lowering, ModelSource
from ebai.core.latency import LatencyStats, measure_latency
from ebai.core.manifest import FidelityRecord, Manifest, TargetRecord
from ebai.core.metrics import average_precision, dice, iou, max_abs_error, pearson, ssim
from ebai.core.plugins import Availability, PluginSpec, get_adapter, get_backend
from ebai.core.progress import progress
from ebai.core.specs import InputSpec, Normalization, OutputSpec
from ebai.core.tiling import predict_tiled

__all__ = [
    "ArraySource",
    "Artifact",
    "ArtifactError",
    "ArtifactWriter",
    "Availability",
    "Backend",
    "BackendUnavailableError",
    "DataSource",
    "EbaiError",
    "EnergyResult",
    "Engine",
    "FidelityError",
    "FidelityRecord",
    "ImageFiles",
    "InputError",
    "InputSpec",
    "LatencyStats",
    "Lowering",
    "Manifest",
    "MissingDependencyError",
    "ModelSource",
    "Normalization",
    "OutputExistsError",
    "OutputSpec",
    "PRECISIONS",
    "PluginNotFoundError",
    "PluginSpec",
    "TargetRecord",
    "__version__",
    "atomic_dir",
    "atomic_file",
    "average_precision",
    "check_output",
    "dice",
    "get_adapter",
    "get_backend",
    "iou",
    "list_images",
    "max_abs_error",
    "measure_energy",
    "measure_latency",
    "package_versions",
    "pearson",
    "predict_tiled",
    "progress",
    "read_image",
    "sha256_file",
    "ssim",
    "to_sample",
    "write_artifact",
    "write_tiff",
]
