"""The one exception hierarchy of ebai.

Every error a user can cause derives from :class:`EbaiError`; its message is one sentence that says
what went wrong, with the value seen, and what to do next. The CLI prints that message alone (no
traceback unless ``--debug``), so messages must stand on their own.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "EbaiError",
    "FidelityError",
    "InputError",
    "MissingDependencyError",
    "OutputExistsError",
    "PluginNotFoundError",
]


class EbaiError(Exception):
    """Base class of every error ebai raises on purpose."""


class InputError(EbaiError, ValueError):
    """A value given by the user (file, shape, option) cannot be used as it is."""


class OutputExistsError(EbaiError, FileExistsError):
    """The output path exists and the caller did not ask to overwrite it."""


class ArtifactError(EbaiError):
    """An artifact on disk is incomplete, tampered with, or of an unknown schema."""


class PluginNotFoundError(EbaiError, LookupError):
    """No installed package provides the backend, adapter or command asked for."""


class BackendUnavailableError(EbaiError):
    """A backend is installed but cannot run here (missing library, no GPU, old driver)."""


class FidelityError(EbaiError):
    """The compressed model's output differs from the original's by more than the threshold."""


class MissingDependencyError(EbaiError, ImportError):
    """An optional dependency is missing; the message is the exact ``pip install`` line."""
