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
from ebai.core.interfaces import PRECISIONS, Backend, DataSource, Engine, Lowering, ModelSource
from ebai.core.manifest import FidelityRecord, Manifest, TargetRecord
from ebai.core.plugins import Availability, PluginSpec, get_adapter, get_backend
from ebai.core.progress import progress
from ebai.core.specs import InputSpec, Normalization, OutputSpec

__all__ = [
    "PRECISIONS",
    "Artifact",
    "ArtifactError",
    "ArtifactWriter",
    "Availability",
    "Backend",
    "BackendUnavailableError",
    "DataSource",
    "EbaiError",
    "Engine",
    "FidelityError",
    "FidelityRecord",
    "InputError",
    "InputSpec",
    "Lowering",
    "Manifest",
    "MissingDependencyError",
    "ModelSource",
    "Normalization",
    "OutputExistsError",
    "OutputSpec",
    "PluginNotFoundError",
    "PluginSpec",
    "TargetRecord",
    "__version__",
    "atomic_dir",
    "atomic_file",
    "check_output",
    "get_adapter",
    "get_backend",
    "package_versions",
    "progress",
    "sha256_file",
    "write_artifact",
]
