"""Reading and writing volumes: ``load(path) -> Volume`` and ``save(volume, path)``.

Formats are chosen by what the path is: a folder is scanned for DICOM series;
``.nii``/``.nii.gz`` go through nibabel; ``.nrrd``/``.nhdr``/``.mha``/``.mhd``
through SimpleITK; any other file is read as DICOM when it has the DICOM
preamble.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvol.errors import InvalidDataError, UnreadableFileError
from medvol.io.atomic import full_suffix, missing_reason
from medvol.io.dicom import is_dicom_file, load_dicom, load_series, scan_folder, select_series
from medvol.io.discovery import ITK_READ_SUFFIXES, NIFTI_SUFFIXES
from medvol.io.itk import load_itk, save_itk
from medvol.io.nifti import load_nifti, save_nifti
from medvol.volume import Volume

ITK_WRITE_SUFFIXES = (".nrrd", ".mha")
SAVE_SUFFIXES = NIFTI_SUFFIXES + ITK_WRITE_SUFFIXES

__all__ = ["SAVE_SUFFIXES", "check_finite", "load", "load_all", "save"]


def load(path: str | Path, *, series: str | int | None = None, allow_nan: bool = False) -> Volume:
    """Load a scan from disk with its geometry.

    Args:
        path: a DICOM folder (searched recursively) or file, or a NIfTI, NRRD
            or MetaImage file.
        series: for a folder holding several DICOM series, which one: its
            1-based number in the listing the error shows, or its UID.
        allow_nan: accept NaN/infinite voxels instead of raising.

    Returns:
        A ``Volume`` with array ``(C, X, Y, Z)`` and a voxel→RAS mm affine.

    Raises:
        medvol.errors.MedvolError: a subclass naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(path, missing_reason(path))
    suffix = full_suffix(path)
    if path.is_dir():
        volume = load_dicom(path, series=series)
    elif path.stat().st_size == 0:
        raise UnreadableFileError(path, "empty file (0 bytes)")
    elif suffix in NIFTI_SUFFIXES:
        volume = load_nifti(path)
    elif suffix in ITK_READ_SUFFIXES:
        volume = load_itk(path)
    elif is_dicom_file(path):
        volume = load_dicom(path)
    else:
        raise UnreadableFileError(
            path, "unknown format: not a DICOM file, nor .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd"
        )
    if not allow_nan:
        check_finite(volume)
    return volume


def load_all(path: str | Path, *, allow_nan: bool = False) -> list[Volume]:
    """Every volume at ``path``: each DICOM series of a folder, or the one file."""
    path = Path(path)
    if not path.is_dir():
        return [load(path, allow_nan=allow_nan)]
    found, skipped = scan_folder(path)
    if not found:
        select_series(path, found, skipped, None)  # raises: no series, with reasons
    volumes = []
    for series in found:
        volume = load_series(series)
        volume.meta["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in skipped]
        if not allow_nan:
            check_finite(volume)
        volumes.append(volume)
    return volumes


def save(volume: Volume, path: str | Path) -> Path:
    """Write a volume atomically (temporary file, then rename); returns the path.

    The format follows the suffix: ``.nii``/``.nii.gz`` (NIfTI-1, exact affine
    to float32 precision), ``.nrrd`` or ``.mha`` (compressed).
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        save_nifti(volume, path)
    elif suffix in ITK_WRITE_SUFFIXES:
        save_itk(volume, path)
    else:
        raise UnreadableFileError(
            path,
            f"cannot write {suffix or 'files without a suffix'}; use one of {', '.join(SAVE_SUFFIXES)}",
        )
    return path


def check_finite(volume: Volume) -> None:
    """Raise ``InvalidDataError`` when a float volume holds NaN or infinite voxels."""
    array = volume.array
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidDataError(
            volume.meta.get("source_path"),
            f"{bad} voxel(s) are NaN or infinite; pass allow_nan=True (--allow-nan) to load anyway",
        )
