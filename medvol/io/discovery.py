"""Finding scans on disk: the one walk, the one suffix table, the one DICOM case id.

``medvol index`` (``medvol.data.cases``), ``medvol predict``
(``medvol.prediction``) and DICOM series discovery (``medvol.io.dicom``) all
walk folders with :func:`list_files`, recognise scan files by
:data:`SCAN_FILE_SUFFIXES` and name a DICOM series with :func:`dicom_case_id`,
so a scan has the same id whichever verb found it (images without a
SeriesInstanceUID: :func:`unnamed_series_key`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvol.io.dicom_headers import SliceHeader

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_READ_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
"""Video files, read as clips ``(3, X, Y, T)`` through PyAV (``medvol.io.video``)."""
SCAN_FILE_SUFFIXES = NIFTI_SUFFIXES + ITK_READ_SUFFIXES + VIDEO_SUFFIXES
"""Files read as one scan (or clip) each, by their full suffix (``medvol.io.atomic.full_suffix``)."""
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
"""Names that promise a DICOM file: an error, not an ignored file, when the file is not one."""


def list_files(folder: Path, exclude: Path | None = None, unreadable: list[Path] | None = None) -> list[Path]:
    """Every regular file below ``folder``, recursively, sorted; hidden names and ``exclude`` skipped.

    Symbolic links that lead nowhere (broken, or a loop) are not files; they
    are added to ``unreadable`` when it is given, for the caller to report.
    """
    excluded = None if exclude is None else os.path.realpath(exclude)
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) != excluded
        )
        files.extend(Path(root) / name for name in sorted(names) if not name.startswith("."))
    if unreadable is not None:
        unreadable.extend(path for path in files if path.is_symlink() and not path.exists())
    return [path for path in files if path.is_file()]


def dicom_case_id(series_key: str) -> str:
    """``dicom-<hash>``: a DICOM series' case id.

    The hash covers the series key only (its SeriesInstanceUID or :func:`unnamed_series_key`, with ``#2``...
    when one folder holds several volumes of one UID), never the path the user
    gave: the series has the same id under ``medvol index PARENT`` and
    ``medvol predict FOLDER``, in every run, and the id carries no patient data.
    Copies of one series in several folders share the id (they are one series).
    """
    return "dicom-" + hashlib.sha256(series_key.encode()).hexdigest()[:12]


def unnamed_series_key(headers: Sequence[SliceHeader]) -> str:
    """The key of images without a SeriesInstanceUID: ``no-uid-`` and a hash of their content.

    The hash covers the bytes of the group's first image (by InstanceNumber, then position,
    then file name), never its path: copies of the series in several folders share the key,
    as copies of a series with a UID do, and two different series do not. Should that file
    have become unreadable, the hash covers the images' numbers, positions and sizes instead.
    """
    first = min(headers, key=lambda h: (h.instance_number or 0, h.position or (), os.path.basename(h.path)))
    try:
        content = Path(first.path).read_bytes()
    except OSError:
        described = sorted((h.instance_number or 0, h.position or (), h.rows, h.columns) for h in headers)
        content = repr(described).encode()
    return "no-uid-" + hashlib.sha256(content).hexdigest()[:16]
