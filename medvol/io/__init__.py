"""Reading and writing volumes: ``load(path) -> Volume`` and ``save(volume, path)``.

Formats are chosen by what the path is: a folder is scanned for DICOM series;
``.nii``/``.nii.gz`` go through nibabel; ``.nrrd``/``.nhdr``/``.mha``/``.mhd``
through SimpleITK; video files (``.mp4``, ``.avi``, ``.mov``, ``.mkv``...,
``medvol.io.discovery.VIDEO_SUFFIXES``) through PyAV as clips ``(3, X, Y, T)``;
any other file is read as DICOM when it has the DICOM preamble.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvol.errors import InvalidDataError, MedvolError, SeriesError, UnreadableFileError
from medvol.io.atomic import atomic_path, full_suffix, missing_reason
from medvol.io.dicom import scan_folder, select_series
from medvol.io.dicom_headers import is_dicom_file
from medvol.io.dicom_load import VolumeChoice, load_dicom, load_dicom_volumes, load_series_volumes
from medvol.io.discovery import ITK_READ_SUFFIXES, NIFTI_SUFFIXES, VIDEO_SUFFIXES
from medvol.io.itk import load_itk, save_itk
from medvol.io.nifti import load_nifti, save_nifti
from medvol.io.sidecar import read_sidecar, sidecar_path, write_sidecar
from medvol.volume import Volume

ITK_WRITE_SUFFIXES = (".nrrd", ".mha")
SAVE_SUFFIXES = NIFTI_SUFFIXES + ITK_WRITE_SUFFIXES

__all__ = [
    "SAVE_SUFFIXES",
    "SeriesFailure",
    "SomeSeriesFailedError",
    "check_finite",
    "load",
    "load_all",
    "load_volumes",
    "save",
]


@dataclass(frozen=True)
class SeriesFailure:
    """A series (or file) of a folder that ``load_all`` could not load.

    Attributes:
        series: which one, in words (number, description, size, UID; or the file).
        error: why, naming the file or folder and the problem.
    """

    series: str
    error: MedvolError


class SomeSeriesFailedError(SeriesError):
    """``load_all`` tried every series of a folder and some could not be loaded.

    The message lists every failure. ``volumes`` holds the series that did
    load, so a caller can go on with them; ``failures`` the others, in order.
    """

    def __init__(self, folder: Path, volumes: list[Volume], failures: list[SeriesFailure]) -> None:
        lines = "\n".join(f"  {failure.series}: {failure.error}" for failure in failures)
        total = len(volumes) + len(failures)
        super().__init__(folder, f"{len(failures)} of {total} series or files could not be loaded:\n{lines}")
        self.volumes = volumes
        self.failures = failures


def load(
    path: str | Path,
    *,
    series: str | int | None = None,
    volume: VolumeChoice = None,
    allow_nan: bool = False,
) -> Volume:
    """Load a scan from disk with its geometry.

    Args:
        path: a DICOM folder (searched recursively) or file, a NIfTI, NRRD
            or MetaImage file, or a video file (a clip, ``medvol.io.video``).
        series: for a folder holding several DICOM series, which one: its
            1-based number in the listing the error shows, or its UID.
        volume: for a DICOM series holding several volumes at the same
            positions (echoes, time points, b-values...), which one: its
            1-based number in the listing the error shows, or ``"all"`` to
            stack them as channels ``(C, X, Y, Z)``. Without it such a series
            is an error that lists its volumes.
        allow_nan: accept NaN/infinite voxels instead of raising.

    Returns:
        A ``Volume`` with array ``(C, X, Y, Z)`` and a voxel→RAS mm affine;
        for a clip (a video, a DICOM cine loop) ``(C, X, Y, T)``, frames along
        the third axis, with ``meta["axes"] == "XYT"``.

    Raises:
        medvol.errors.MedvolError: a subclass naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(path, missing_reason(path))
    suffix = full_suffix(path)
    if path.is_dir():
        loaded = load_dicom(path, series=series, volume=volume)
    elif path.stat().st_size == 0:
        raise UnreadableFileError(path, "empty file (0 bytes)")
    elif suffix in NIFTI_SUFFIXES or suffix in ITK_READ_SUFFIXES:
        if volume is not None:
            raise UnreadableFileError(
                path, "volume= chooses among the volumes of a DICOM series; this is not one"
            )
        loaded = load_nifti(path) if suffix in NIFTI_SUFFIXES else load_itk(path)
        loaded.meta.update(read_sidecar(path))  # scan.json: modality, patient position, image type
    elif suffix in VIDEO_SUFFIXES:
        if volume is not None or series is not None:
            raise UnreadableFileError(path, "series= and volume= choose within DICOM data; this is a video")
        from medvol.io.video import load_video

        loaded = load_video(path)
    elif is_dicom_file(path):
        loaded = load_dicom(path, volume=volume)
    else:
        raise UnreadableFileError(
            path,
            "unknown format: not a DICOM file, nor .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd, "
            f"nor a video ({'/'.join(VIDEO_SUFFIXES)})",
        )
    if not allow_nan:
        check_finite(loaded)
    return loaded


def load_volumes(
    path: str | Path, *, series: str | int | None = None, allow_nan: bool = False
) -> list[Volume]:
    """Every volume of one scan: each volume of a DICOM series (echoes, time points...), or the one.

    Args:
        path, series, allow_nan: as for ``load``.

    Returns:
        For a DICOM series, one ``Volume`` per volume in the documented order,
        each with ``meta["volume"]`` saying which it is when there are several;
        for any other scan, ``[load(path)]``.
    """
    path = Path(path)
    scan_suffix = full_suffix(path) in NIFTI_SUFFIXES + ITK_READ_SUFFIXES
    if path.is_dir() or (not scan_suffix and is_dicom_file(path)):
        volumes = load_dicom_volumes(path, series=series)
    else:
        volumes = [load(path, series=series, allow_nan=allow_nan)]
    if not allow_nan:
        for loaded in volumes:
            check_finite(loaded)
    return volumes


def load_all(path: str | Path, *, allow_nan: bool = False) -> list[Volume]:
    """Every volume at ``path``: each volume of each DICOM series of a folder, or the one file.

    A series holding several volumes (echoes, time points...) gives one
    ``Volume`` per volume, in the documented order (``meta["volume"]``).

    Every series of a folder is tried, so one that cannot be read does not
    hide the others. A DICOM file that cannot be read fails, and so does every
    series in its folder (the file may be one of its slices).

    Returns:
        The volumes, in the order of the folder's series listing, when all load.

    Raises:
        SomeSeriesFailedError: after trying every series, when at least one
            failed; ``volumes`` holds those that loaded, ``failures`` the
            others with their reasons.
        medvol.errors.MedvolError: the path is missing, a folder holds no
            DICOM image series, or the one file cannot be read.
    """
    path = Path(path)
    if not path.is_dir():
        return [load(path, allow_nan=allow_nan)]
    found, skipped = scan_folder(path, collect_errors=True)
    corrupt = [item for item in skipped if item.corrupt]
    skipped = [item for item in skipped if not item.corrupt]
    if not found and not corrupt:
        select_series(path, found, skipped, None)  # raises: no series, with reasons
    failures = [
        SeriesFailure("unreadable DICOM file", UnreadableFileError(item.path, item.reason))
        for item in corrupt
    ]
    unreadable_in = {Path(item.path).parent: Path(item.path).name for item in corrupt}
    volumes = []
    for series in found:
        try:
            if series.folder in unreadable_in:
                raise SeriesError(
                    series.folder,
                    f"the unreadable DICOM file {unreadable_in[series.folder]} in this folder may be "
                    "one of this series' slices; repair or remove it",
                )
            loaded = load_series_volumes(series)
            for volume in loaded:
                volume.meta["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in skipped]
                if not allow_nan:
                    check_finite(volume)
        except MedvolError as error:
            failures.append(SeriesFailure(series.describe(), error))
            continue
        volumes.extend(loaded)
    if failures:
        raise SomeSeriesFailedError(path, volumes, failures)
    return volumes


def save(volume: Volume, path: str | Path) -> Path:
    """Write a volume atomically (temporary file, then rename); returns the path.

    The format follows the suffix: ``.nii``/``.nii.gz`` (NIfTI-1, exact affine
    to float32 precision), ``.nrrd`` or ``.mha`` (compressed). When
    ``volume.meta`` knows the modality, patient position or image type (a
    DICOM series does), they go into a JSON sidecar beside the file
    (``scan.nii.gz`` → ``scan.json``, see ``medvol.io.sidecar``), written
    first, so a file that exists always has its sidecar.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in SAVE_SUFFIXES:
        raise UnreadableFileError(
            path,
            f"cannot write {suffix or 'files without a suffix'}; use one of {', '.join(SAVE_SUFFIXES)}",
        )
    sidecar = sidecar_path(path)
    previous = _read_bytes(sidecar)
    written = write_sidecar(volume.meta, path)
    try:
        if suffix in NIFTI_SUFFIXES:
            save_nifti(volume, path)
        else:
            save_itk(volume, path)
    except BaseException:
        # The file was not written: its sidecar goes back to what it was (another
        # format's file of the same name may share it).
        if written is not None and previous is None:
            sidecar.unlink(missing_ok=True)
        elif previous is not None and _read_bytes(sidecar) != previous:
            with atomic_path(sidecar) as temporary:
                temporary.write_bytes(previous)
        raise
    return path


def _read_bytes(path: Path) -> bytes | None:
    """The bytes of a file, or ``None`` when it cannot be read (absent, a folder, a link loop...)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def check_finite(volume: Volume) -> None:
    """Raise ``InvalidDataError`` when a float volume holds NaN or infinite voxels."""
    array = volume.array
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidDataError(
            volume.meta.get("source_path"),
            f"{bad} voxel(s) are NaN or infinite; pass allow_nan=True (--allow-nan) to load anyway",
        )
