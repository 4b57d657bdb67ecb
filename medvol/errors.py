"""The exceptions medvol raises for bad input.

Every message names the file (or folder) and says what is wrong with it, so a
user can act on one line of output. The CLI prints ``str(error)`` only.
"""

from __future__ import annotations

from pathlib import Path


class MedvolError(Exception):
    """Base class: bad input or a request medvol refuses to guess about."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class UnreadableFileError(MedvolError):
    """A file is missing, empty, truncated, corrupt or of an unknown format."""


class SeriesError(MedvolError):
    """A DICOM folder or series cannot be turned into one volume unambiguously."""


class GeometryError(MedvolError):
    """An affine, a spacing or a grid is invalid or does not match another."""


class InvalidDataError(MedvolError):
    """Voxel values that medvol will not pass on silently (NaN, infinity)."""


class ConfigurationError(MedvolError, ValueError):
    """A config value, model or loss name, or option that medvol cannot build.

    A ``ValueError`` too, so callers that expect the standard exception for a
    bad argument still catch it; a ``MedvolError`` so that the CLI prints it as
    a one-line user error.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(None, problem)
