"""ebai.core: the contracts, artifact, plugins and measurement shared by every ebai package.

The names here are what a user (open an artifact, find a backend or adapter) and a plugin author
(implement :class:`ModelSource` or :class:`Backend`, register a :class:`PluginSpec`, raise the
errors) need; helpers live in their modules (``ebai.core.metrics``, ``ebai.core.tiling``,
``ebai.core.latency``, ``ebai.core.energy``, ``ebai.core.manifest``, ``ebai.core.testing``...).

Importing this package imports numpy and the standard library only (never torch, OpenVINO or
TensorRT), so it is safe in a tool's import path.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebai-core")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from ebai.core.artifact import Artifact
from ebai.core.data import ArraySource, ImageFiles
from ebai.core.errors import (
    ArtifactError,
    BackendUnavailableError,
    EbaiError,
    InputError,
    MissingDependencyError,
)
from ebai.core.interfaces import Backend, ComparisonVariant, DataSource, Engine, Lowering, ModelSource
from ebai.core.plugins import PluginSpec, get_adapter, get_backend
from ebai.core.specs import InputSpec, Normalization, OutputSpec

#: What users and plugin authors need. Everything else (metrics, tiling, latency, energy, the
#: manifest records, file helpers) is imported from its module: ``from ebai.core.metrics import pearson``.
__all__ = [
    "ArraySource",
    "Artifact",
    "ArtifactError",
    "Backend",
    "BackendUnavailableError",
    "ComparisonVariant",
    "DataSource",
    "EbaiError",
    "Engine",
    "ImageFiles",
    "InputError",
    "InputSpec",
    "Lowering",
    "MissingDependencyError",
    "ModelSource",
    "Normalization",
    "OutputSpec",
    "PluginSpec",
    "__version__",
    "get_adapter",
    "get_backend",
]
