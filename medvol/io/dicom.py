"""DICOM: series discovery from headers, geometry from positions, pixels via SimpleITK.

The path a DICOM folder takes:

1. ``scan_folder`` reads only headers (``medvol.io.dicom_headers``), in
   parallel processes for large folders, and skips what is not an image
   (non-DICOM files, DICOMDIR, SR, SEG, RTSTRUCT, presentation states, ...).
2. ``group_series`` groups the images of each folder by SeriesInstanceUID and
   splits a series further when orientation or matrix size differ (and keeps
   Siemens mosaics apart from single slices); one UID
   in several folders (copies of a series, or a series split across folders)
   is several series, and ``series_in_several_folders`` says so.
3. ``stack_geometry`` sorts slices along the slice normal, derives the slice
   step from ImagePositionPatient (never SliceThickness), refuses duplicates,
   missing slices and uneven spacing with a clear error and keeps gantry tilt
   as an exact sheared affine (recorded in ``meta``); ``read_stack_pixels``
   reads the pixels with SimpleITK/GDCM (rescale slope/intercept applied,
   every transfer syntax GDCM decodes).

``medvol.io.dicom_volumes`` splits a series that holds several volumes
(echoes, time points, ...) and ``medvol.io.dicom_load`` reads them, enhanced
multi-frame files and Siemens mosaics included.

Patient identifiers are never read into medvol's records.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medvol.errors import SeriesError, UnreadableFileError
from medvol.io.dicom_headers import SkippedFile, SliceHeader, pair_name, read_header
from medvol.io.discovery import list_files, unnamed_series_key
from medvol.io.geometry import affine_from_columns
from medvol.logs import get_logger

logger = get_logger(__name__)

PARALLEL_SCAN_MIN_FILES = 256
POSITION_TOLERANCE_MM = 1e-3
RELATIVE_SPACING_TOLERANCE = 0.01
ORTHOGONALITY_TOLERANCE = 1e-4
"""The largest sine of the angle between the slice step and the slice normal that is
rounding, not gantry tilt: ITK's own limit (its NIfTI reader accepts direction cosines
within 1e-4 of orthogonal, about 0.0057 degrees). dcm2niix is laxer (tilt below
cos = 0.9999, about 0.81 degrees, is ignored without a note)."""
TILT_TOLERANCE_DEG = float(np.degrees(np.arcsin(ORTHOGONALITY_TOLERANCE)))


@dataclass(frozen=True)
class DicomSeries:
    """The image files of one series (one orientation, one matrix size)."""

    key: str
    headers: tuple[SliceHeader, ...]

    @property
    def first(self) -> SliceHeader:
        return self.headers[0]

    @property
    def folder(self) -> Path:
        """The folder holding the series' files (all of them: series are grouped per folder)."""
        return Path(self.first.path).parent

    def describe(self) -> str:
        """One line for listings: number, description, modality, size."""
        h = self.first
        number = "?" if h.series_number is None else str(h.series_number)
        count = sum(header.frames for header in self.headers)
        what = f"{count} image(s)"
        if h.is_clip:
            what = f"clip of {count} frames" if count > 1 else "2D picture"
            what += ", no patient geometry" if h.orientation is None or h.position is None else ""
        return (
            f"series {number} '{h.series_description}' {h.modality} "
            f"{h.columns}x{h.rows}, {what}, uid {self.key or '(empty)'}"
        )


def _read_headers(paths: Sequence[Path], collect_errors: bool = False) -> list[SliceHeader | SkippedFile]:
    results: list[SliceHeader | SkippedFile] = []
    for path in paths:
        try:
            results.append(read_header(path))
        except UnreadableFileError as error:
            if not collect_errors:
                raise
            results.append(SkippedFile(str(path), error.problem, corrupt=True))
    return results


def scan_headers(
    paths: Sequence[Path], workers: int | None = None, collect_errors: bool = False
) -> list[SliceHeader | SkippedFile]:
    """Read the headers of many files, in parallel processes for large lists.

    With ``collect_errors`` an unreadable file becomes a ``SkippedFile`` marked
    ``corrupt`` instead of raising, so one bad file does not stop a whole scan.
    """
    workers = workers or os.cpu_count() or 1
    if len(paths) < PARALLEL_SCAN_MIN_FILES or workers == 1:
        return _read_headers(paths, collect_errors)
    chunk = max(32, len(paths) // (workers * 4))
    chunks = [paths[start : start + chunk] for start in range(0, len(paths), chunk)]
    results: list[SliceHeader | SkippedFile] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_read_headers, chunks, [collect_errors] * len(chunks)):
            results.extend(part)
    return results


def scan_folder(
    folder: str | Path, collect_errors: bool = False
) -> tuple[list[DicomSeries], list[SkippedFile]]:
    """Find the DICOM image series below a folder from headers alone.

    Raises:
        SeriesError: the folder does not exist or holds no files.
        UnreadableFileError: a DICOM file below it is empty or corrupt (unless
            ``collect_errors``: then it is returned as a corrupt ``SkippedFile``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(folder, "not a folder")
    files = list_files(folder)
    if not files:
        raise SeriesError(folder, "empty folder: no files to read")
    results = scan_headers(files, collect_errors=collect_errors)
    headers = [r for r in results if isinstance(r, SliceHeader)]
    skipped = [r for r in results if isinstance(r, SkippedFile)]
    series = group_series(headers)
    for message in series_in_several_folders(series):
        logger.warning("%s", message)
    return series, skipped


def group_series(headers: Iterable[SliceHeader]) -> list[DicomSeries]:
    """Group by folder and SeriesInstanceUID, split by orientation and matrix size.

    A series is the images of one UID in one folder: two copies of a series in
    sibling folders are two series (``series_in_several_folders`` lists them),
    never one series whose slices all appear twice. A multi-frame file, and a
    2D picture without a place in the patient (``SliceHeader.is_clip``: a
    photograph, a secondary capture, an ultrasound frame), forms a group on
    its own; the mosaics of one series form one group (each mosaic one of its
    volumes; copies of one mosaic, which share an InstanceNumber, a group
    each), apart from any single slices. Groups are
    ordered by series number, then key, then folder; the key is the UID (for images
    without one, :func:`unnamed_series_key`), with ``#2``, ``#3``... for further parts
    of one UID split within one folder.
    """
    groups: dict[tuple[Any, ...], list[SliceHeader]] = {}
    for header in headers:
        orientation = None if header.orientation is None else tuple(np.round(header.orientation, 4))
        # A multi-frame file or a clip (a 2D picture without a place in the patient) is a series on
        # its own: pictures are never stacked. The mosaics of a series are its volumes.
        alone = header.frames > 1 or header.is_clip
        own_volume = header.path if alone else ("mosaic" if header.is_mosaic else None)
        folder = os.path.dirname(header.path)
        key = (header.series_uid, orientation, header.rows, header.columns, own_volume, folder)
        groups.setdefault(key, []).append(header)
    groups = _copies_of_one_mosaic_apart(groups)
    parts: dict[tuple[str, str], int] = {}
    series = []
    for group_key in sorted(groups, key=lambda k: (_series_number(groups[k]), str(k))):
        uid, folder = group_key[0] or unnamed_series_key(groups[group_key]), group_key[-1]
        parts[uid, folder] = parts.get((uid, folder), 0) + 1
        name = uid if parts[uid, folder] == 1 else f"{uid}#{parts[uid, folder]}"
        series.append(DicomSeries(key=name, headers=tuple(groups[group_key])))
    return series


def _copies_of_one_mosaic_apart(
    groups: dict[tuple[Any, ...], list[SliceHeader]],
) -> dict[tuple[Any, ...], list[SliceHeader]]:
    """Mosaics of one series that share an InstanceNumber are copies of one image (e.g. one
    mosaic in several transfer syntaxes), not its volumes: each becomes a series of its own."""
    result: dict[tuple[Any, ...], list[SliceHeader]] = {}
    for key, members in groups.items():
        instances = [header.instance_number for header in members]
        if members[0].is_mosaic and len(set(instances)) < len(instances):
            for header in members:
                own_key = (*key[:-2], header.path, key[-1])
                result[own_key] = [header]
        else:
            result[key] = members
    return result


def series_in_several_folders(series: Sequence[DicomSeries]) -> list[str]:
    """One message per SeriesInstanceUID found in more than one folder, naming the folders.

    Folders whose images lie at the same positions hold copies of one series
    (each loads on its own); folders with different positions may hold parts of
    one series split across folders, which medvol loads folder by folder.
    """
    folders: dict[str, dict[Path, set[tuple[float, ...]]]] = {}
    for item in series:
        if not item.first.series_uid:
            continue  # no SeriesInstanceUID: nothing says the folders share a series
        positions = {
            tuple(np.round(position, 3))
            for header in item.headers
            for position in (header.frame_positions or (header.position or (np.nan,) * 3,))
        }
        folders.setdefault(item.first.series_uid, {}).setdefault(item.folder, set()).update(positions)
    messages = []
    for uid, by_folder in folders.items():
        if len(by_folder) < 2:
            continue
        names = ", ".join(str(folder) for folder in sorted(by_folder))
        position_sets = list(by_folder.values())
        if all(positions == position_sets[0] for positions in position_sets[1:]):
            what = "copies of one series (the same slice positions): each folder is loaded on its own"
        else:
            what = (
                "different slices in each folder, perhaps one series split across folders: each folder "
                "is loaded on its own; put the files in one folder to load them as one volume"
            )
        messages.append(f"series {uid} is in {len(by_folder)} folders ({names}): {what}")
    return messages


def _series_number(headers: list[SliceHeader]) -> int:
    number = headers[0].series_number
    return -1 if number is None else number


def _listing(folder: Path, series: Sequence[DicomSeries]) -> str:
    """The numbered lines of a choice of series; each names its folder when it is not ``folder``."""
    lines = []
    for number, item in enumerate(series, 1):
        where = "" if item.folder == folder else f" in {item.folder}"
        lines.append(f"  {number}: {item.describe()}{where}")
    return "\n".join(lines)


def select_series(
    folder: Path, series: list[DicomSeries], skipped: list[SkippedFile], choice: str | int | None
) -> DicomSeries:
    """Pick one series: the only one, or the one named by 1-based index or key/UID.

    A UID found in several folders names no series alone: choose by number.
    """
    if not series:
        reasons = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in skipped[:5])
        raise SeriesError(folder, f"no DICOM image series found ({len(skipped)} file(s) skipped: {reasons})")
    if choice is None:
        if len(series) == 1:
            return series[0]
        pictures = sum(1 for item in series if item.first.is_clip and item.first.frames == 1)
        why = ""
        if pictures > 1:
            why = (
                f" ({pictures} of them are single 2D pictures without a place in the patient, e.g. "
                "secondary captures, photographs or ultrasound frames, which medvol never stacks into a "
                "volume: load each file on its own)"
            )
        raise SeriesError(
            folder,
            f"{len(series)} image series found{why}; choose one with series=N or --series N:\n"
            f"{_listing(folder, series)}",
        )
    if isinstance(choice, int) or str(choice).isdigit():
        index = int(choice)
        if 1 <= index <= len(series):
            return series[index - 1]
    matches = [candidate for candidate in series if candidate.key == str(choice)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise SeriesError(
            folder,
            f"series {choice} is in {len(matches)} folders; choose one by number:\n"
            f"{_listing(folder, series)}",
        )
    raise SeriesError(folder, f"no series {choice!r}; the series found are:\n{_listing(folder, series)}")


def _unit_axes(header: SliceHeader) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Row direction (increasing column index), column direction and slice normal, LPS.

    Directions written with few decimals are not exactly perpendicular; within
    ``ORTHOGONALITY_TOLERANCE`` (the cosine of the angle between them) both
    are turned by half the excess, so the axes are orthonormal.

    Returns:
        The three unit vectors and the excess angle removed (degrees; 0.0
        when the stored directions were perpendicular).
    """
    if header.orientation is None or len(header.orientation) != 6:
        raise SeriesError(header.path, "no ImageOrientationPatient: the image cannot be placed in space")
    orientation = np.array(header.orientation)
    row_direction, column_direction = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row_direction), np.linalg.norm(column_direction)
    if min(norms) < 1e-3 or abs(row_direction @ column_direction) / (norms[0] * norms[1]) > 1e-3:
        raise SeriesError(header.path, f"invalid ImageOrientationPatient {list(orientation)}")
    row_direction = row_direction / norms[0]
    column_direction = column_direction / norms[1]
    cosine = float(row_direction @ column_direction)
    excess = 0.0
    if 0.0 < abs(cosine) <= ORTHOGONALITY_TOLERANCE:
        excess = float(np.degrees(np.arcsin(abs(cosine))))
        row_direction, column_direction = (
            row_direction - cosine / 2 * column_direction,
            column_direction - cosine / 2 * row_direction,
        )
        row_direction /= np.linalg.norm(row_direction)
        column_direction -= (column_direction @ row_direction) * row_direction
        column_direction /= np.linalg.norm(column_direction)
    return row_direction, column_direction, np.cross(row_direction, column_direction), excess


def _pixel_spacing(header: SliceHeader) -> tuple[float, float]:
    if header.pixel_spacing is None or min(header.pixel_spacing) <= 0:
        raise SeriesError(header.path, f"missing or invalid PixelSpacing {header.pixel_spacing}")
    return header.pixel_spacing


def stack_geometry(
    headers: Sequence[SliceHeader], source: Path | None = None
) -> tuple[list[SliceHeader], np.ndarray, dict[str, Any]]:
    """Sort single-frame slices along the normal and derive the voxel→RAS affine.

    A slice step within ``ORTHOGONALITY_TOLERANCE`` of the normal is rounding:
    the affine is orthogonal and ``slice_position_residual_mm`` records the
    largest distance between a slice's ImagePositionPatient and where the
    affine puts it. A larger angle is gantry tilt, kept as a sheared affine.

    Args:
        headers: the slices (or the frames of one multi-frame file).
        source: what errors name: the series' folder (default) or the one file.

    Returns:
        The slices in index-z order, the affine and notes for ``meta``.

    Raises:
        SeriesError: missing positions, mismatched pixel spacing, duplicate
            positions, missing slices, uneven spacing, or positions off a line.
    """
    first = headers[0]
    source = Path(first.path).parent if source is None else source
    row_direction, column_direction, normal, orientation_excess = _unit_axes(first)
    spacing = _pixel_spacing(first)
    for header in headers:
        if header.position is None:
            raise SeriesError(
                header.path, f"{header.frame_prefix}no ImagePositionPatient: the slice cannot be placed"
            )
        if not np.allclose(_pixel_spacing(header), spacing, atol=1e-4):
            raise SeriesError(
                header.path,
                f"{header.frame_prefix}PixelSpacing {header.pixel_spacing} differs from "
                f"{first.name}'s {spacing}",
            )
    positions = np.array([h.position for h in headers], dtype=np.float64)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    ordered = [headers[i] for i in order]
    positions, distance = positions[order], distance[order]
    notes: dict[str, Any] = {}
    if round(orientation_excess, 6) > 0:
        notes["orientation_residual_deg"] = round(orientation_excess, 6)
    if len(ordered) == 1:
        thickness = first.slice_thickness or 1.0
        step = normal * thickness
        notes["slice_step_from"] = "SliceThickness (single slice)"
    else:
        _check_slice_gaps(ordered, distance, source)
        step = (positions[-1] - positions[0]) / (len(ordered) - 1)
        expected = positions[0] + np.outer(np.arange(len(ordered)), step)
        off_line = np.linalg.norm(positions - expected, axis=1).max()
        if off_line > max(POSITION_TOLERANCE_MM, RELATIVE_SPACING_TOLERANCE * np.linalg.norm(step)):
            raise SeriesError(
                source,
                f"slice positions do not lie on a line (off by up to {off_line:.3f} mm)",
            )
        notes["slice_step_from"] = "ImagePositionPatient"
        along_normal = float(step @ normal)
        tilt = float(np.degrees(np.arctan2(np.linalg.norm(step - along_normal * normal), abs(along_normal))))
        if tilt > TILT_TOLERANCE_DEG:
            notes["gantry_tilt_deg"] = round(tilt, 4)
            notes["sheared_affine"] = True
            logger.warning("%s: gantry tilt of %.4f degrees kept as a sheared affine", source, tilt)
        else:
            # Rounding in the stored positions, not a tilt: step along the normal
            # (an orthogonal affine), and record how far that puts any slice from
            # its own ImagePositionPatient.
            step = normal * along_normal
            placed = positions[0] + np.outer(np.arange(len(ordered)), step)
            residual = float(np.linalg.norm(positions - placed, axis=1).max())
            if round(residual, 6) > 0:
                notes["slice_position_residual_mm"] = round(residual, 6)
                notes["slice_direction_residual_deg"] = round(tilt, 6)
    affine = affine_from_columns(
        positions[0], (row_direction * spacing[1], column_direction * spacing[0], step)
    )
    return ordered, affine, notes


def _check_slice_gaps(ordered: Sequence[SliceHeader], distance: np.ndarray, folder: Path) -> None:
    gaps = np.diff(distance)
    duplicate = np.flatnonzero(gaps < POSITION_TOLERANCE_MM)
    if duplicate.size:
        i = int(duplicate[0])
        raise SeriesError(
            folder,
            f"{duplicate.size} image(s) share a position with another image (e.g. "
            f"{pair_name(ordered[i], ordered[i + 1], folder)} at {distance[i]:.3f} mm along the normal)",
        )
    typical = float(np.median(gaps))
    tolerance = POSITION_TOLERANCE_MM + RELATIVE_SPACING_TOLERANCE * typical
    irregular = np.flatnonzero(np.abs(gaps - typical) > tolerance)
    if not irregular.size:
        return
    i = int(irregular[0])
    between = f"between {pair_name(ordered[i], ordered[i + 1], folder)}"
    ratio = gaps[irregular] / typical
    if np.all(ratio > 1.5) and np.allclose(ratio, np.round(ratio), atol=0.05):
        missing = int(np.sum(np.round(ratio) - 1))
        raise SeriesError(
            folder,
            f"{missing} missing slice(s): a gap of {gaps[i]:.3f} mm {between} where the "
            f"series' spacing is {typical:.3f} mm",
        )
    raise SeriesError(
        folder,
        f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (first "
        f"irregular gap {gaps[i]:.3f} mm {between}); resample or split the series",
    )


def read_stack_pixels(ordered: Sequence[SliceHeader]) -> np.ndarray:
    """Decode sorted slices with SimpleITK/GDCM; returns ``(X, Y, Z)`` rescaled values.

    The array is a transposed view of SimpleITK's ``(Z, Y, X)`` buffer (Fortran
    order), which saves a full copy; numpy, nibabel and torch accept it as is.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([h.path for h in ordered])
    if _needs_float(ordered):
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError:
        _raise_for_bad_slice(ordered)
        raise
    array = sitk.GetArrayFromImage(image)
    expected = (len(ordered), ordered[0].rows, ordered[0].columns)
    if array.shape != expected:
        source = Path(ordered[0].path)
        raise SeriesError(
            source if len(ordered) == 1 else source.parent,
            f"decoded {array.shape} voxels, expected {expected}",
        )
    return array.transpose(2, 1, 0)


def _needs_float(headers: Sequence[SliceHeader]) -> bool:
    """Float output unless every slice has the same integer rescale (slope 1)."""
    slopes = {h.rescale_slope for h in headers}
    intercepts = {h.rescale_intercept for h in headers}
    return slopes != {1.0} or len(intercepts) != 1 or not float(next(iter(intercepts))).is_integer()


def _raise_for_bad_slice(ordered: Sequence[SliceHeader]) -> None:
    """Find the slice SimpleITK cannot decode and raise an error naming it."""
    for header in ordered:
        try:
            sitk.ReadImage(header.path)
        except RuntimeError as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else "decoding failed"
            raise UnreadableFileError(header.path, f"cannot decode pixel data ({reason})") from error
