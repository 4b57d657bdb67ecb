"""DICOM: series discovery from headers, geometry from positions, pixels via SimpleITK.

The path a DICOM folder takes:

1. ``scan_folder`` reads only headers (pydicom, ``stop_before_pixels``), in
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

``medvol.io.dicom_volumes`` turns a series into volumes: it splits one that
holds several (echoes, time points, ...), and reads enhanced multi-frame files
and Siemens mosaics.

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
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medvol.errors import MedvolError, SeriesError, UnreadableFileError
from medvol.io.dicom_labels import CLASSIC_TAGS, Labels, frame_labels, image_labels
from medvol.io.discovery import list_files
from medvol.io.geometry import affine_from_columns
from medvol.logs import get_logger

logger = get_logger(__name__)

# SOP classes that hold no image volume: DICOMDIR, SR, SEG, RT objects,
# presentation states, key objects, encapsulated documents, raw data.
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured reports and key object selection
    "1.2.840.10008.5.1.4.1.1.11.",  # Presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # Raw data, registration, fiducials, segmentation
    "1.2.840.10008.5.1.4.1.1.481.",  # RT structure sets, plans, doses, ...
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated PDF/CDA
)

# Header tags medvol reads: geometry, grouping and display only, never identifiers.
HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "ImageType",
    "PatientPosition",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "InstanceNumber",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    *CLASSIC_TAGS,
]

# As Tag objects once: pydicom resolves keywords on every call otherwise (~100 µs a file).
HEADER_TAG_NUMBERS = [Tag(keyword) for keyword in HEADER_TAGS]

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
class SliceHeader:
    """What medvol needs from one DICOM image file (no patient data).

    For an enhanced multi-frame file, ``frame_positions`` and ``frame_labels``
    hold one entry per frame and ``position`` the first frame's position. One
    frame of such a file (``medvol.io.dicom_volumes.frame_images``) is a
    ``SliceHeader`` with ``frame`` set (1-based, as stored). ``labels`` say
    what tells the image from others at its position (``medvol.io.dicom_labels``).
    """

    path: str
    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    sop_class_uid: str
    transfer_syntax: str
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rescale_slope: float
    rescale_intercept: float
    instance_number: int | None
    is_mosaic: bool
    frame_positions: tuple[tuple[float, float, float], ...] | None = None
    patient_position: str = ""
    image_type: tuple[str, ...] = ()
    labels: Labels = ()
    frame_labels: tuple[Labels, ...] | None = None
    frame: int | None = None

    @property
    def name(self) -> str:
        """The file's name, with the frame number for a frame (``IM_0027.dcm frame 3``)."""
        name = Path(self.path).name
        return name if self.frame is None else f"{name} frame {self.frame}"

    @property
    def frame_prefix(self) -> str:
        """``"frame 3: "`` for a frame of a multi-frame file (errors name the file), else ``""``."""
        return "" if self.frame is None else f"frame {self.frame}: "


def image_name(image: SliceHeader, source: Path | None = None) -> str:
    """An image in words: ``IM.dcm``, ``IM.dcm frame 3``, or ``frame 3`` when ``source`` is that file."""
    if image.frame is not None and source == Path(image.path):
        return f"frame {image.frame}"
    return image.name


def pair_name(first: SliceHeader, second: SliceHeader, source: Path | None = None) -> str:
    """Two images in words: ``frames 3 and 5 of IM.dcm`` (``frames 3 and 5`` when ``source``
    is that file, which the error names already) or ``a.dcm and b.dcm``."""
    if first.path == second.path and first.frame is not None and second.frame is not None:
        frames = f"frames {first.frame} and {second.frame}"
        return frames if source == Path(first.path) else f"{frames} of {Path(first.path).name}"
    return f"{first.name} and {second.name}"


@dataclass(frozen=True)
class SkippedFile:
    """A file in a DICOM folder that is not part of any image series, and why.

    ``corrupt`` marks a DICOM file that could not be read (only reported when a
    scan is asked to collect errors instead of raising).
    """

    path: str
    reason: str
    corrupt: bool = False


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
        return (
            f"series {number} '{h.series_description}' {h.modality} "
            f"{h.columns}x{h.rows}, {count} image(s), uid {self.key or '(empty)'}"
        )


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: str | Path) -> SliceHeader | SkippedFile:
    """Read one file's header (no pixel data).

    Returns:
        A ``SliceHeader`` for an image, or ``SkippedFile`` for a file that is
        not DICOM or holds no image.

    Raises:
        UnreadableFileError: an empty file, or a DICOM file whose header is
            truncated or corrupt, or an image whose pixel data is missing or
            (uncompressed) cut short.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFileError(path, "empty file (0 bytes)")
    if not is_dicom_file(path):
        return SkippedFile(str(path), "not a DICOM file (no DICM preamble)")
    try:
        with open(path, "rb") as handle:
            dataset = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=HEADER_TAG_NUMBERS)
            # pydicom stops (and rewinds) at the pixel data element, if it finds one.
            stop = handle.tell()
            pixel_element = handle.read(12)
        result = _header_from_dataset(path, dataset)
    except MedvolError:
        raise
    except Exception as error:  # pydicom raises many types for corrupt files
        raise UnreadableFileError(path, f"corrupt or truncated DICOM header ({error})") from error
    _check_complete(path, dataset, result, size, stop, pixel_element)
    return result


def _check_complete(
    path: Path,
    ds: Dataset,
    result: SliceHeader | SkippedFile,
    size: int,
    stop: int,
    pixel_element: bytes,
) -> None:
    """Raise when a DICOM file ends before its header or pixel data does.

    pydicom reads a truncated file without complaint (a cut header looks like
    an object without an image, which would be skipped silently), so the end
    of what was parsed is compared with the file size: a header element may
    not run past the end of the file, an image must have a pixel data element,
    and native (uncompressed) pixel data must be complete.

    Args:
        stop: the file offset where pydicom stopped reading (the start of the
            pixel data element when there is one).
        pixel_element: the (up to) 12 bytes of the file at ``stop``.
    """
    syntax = pydicom.uid.UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    known_syntax = syntax.is_transfer_syntax  # False when the file meta lacks it (or is cut)
    if known_syntax and syntax.is_deflated:
        return  # parsed from an inflated copy: file offsets do not apply
    if stop > size:
        raise UnreadableFileError(
            path, f"truncated DICOM file: the header runs past the end of the file ({size} bytes)"
        )
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    is_image = isinstance(result, SliceHeader) or (
        bool(sop_class) and "Image Storage" in pydicom.uid.UID(sop_class).name
    )
    if isinstance(result, SkippedFile) and not is_image:
        return
    little = syntax.is_little_endian if known_syntax else True
    implicit = syntax.is_implicit_VR if known_syntax else False
    if len(pixel_element) < 8:
        raise UnreadableFileError(
            path, f"truncated DICOM file: the image has no pixel data (the file ends at {size} bytes)"
        )
    order = "<" if little else ">"
    group, element = np.frombuffer(pixel_element[:4], dtype=f"{order}u2").tolist()
    if group != 0x7FE0 or element not in (0x0008, 0x0009, 0x0010):
        raise UnreadableFileError(path, "truncated or corrupt DICOM file: the image has no pixel data")
    if implicit:
        header_length, length = 8, int(np.frombuffer(pixel_element[4:8], dtype=f"{order}u4")[0])
    elif pixel_element[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
        if len(pixel_element) < 12:
            raise UnreadableFileError(path, "truncated DICOM file: it ends inside the pixel data header")
        header_length, length = 12, int(np.frombuffer(pixel_element[8:12], dtype=f"{order}u4")[0])
    else:
        header_length, length = 8, int(np.frombuffer(pixel_element[6:8], dtype=f"{order}u2")[0])
    if length == 0xFFFFFFFF:
        return  # encapsulated (compressed) frames: the decoder checks them
    missing = stop + header_length + length - size
    if missing > 0:
        raise UnreadableFileError(
            path,
            f"truncated DICOM file: the pixel data ({length} bytes) is cut short, {missing} byte(s) missing",
        )
    if isinstance(result, SliceHeader) and element == 0x0010 and "BitsAllocated" in ds:
        bits = int(ds.BitsAllocated)
        expected = result.rows * result.columns * result.frames * result.samples_per_pixel * bits // 8
        if length < expected:
            raise UnreadableFileError(
                path,
                f"incomplete pixel data: {length} bytes where Rows×Columns×frames×samples×bits "
                f"need {expected}",
            )


def _header_from_dataset(path: Path, ds: Dataset) -> SliceHeader | SkippedFile:
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if path.name.upper() == "DICOMDIR" or sop_class.startswith(NON_IMAGE_SOP_PREFIXES):
        name = pydicom.uid.UID(sop_class).name if sop_class else "DICOMDIR"
        return SkippedFile(str(path), f"not an image ({name})")
    if "Rows" not in ds or "Columns" not in ds:
        return SkippedFile(str(path), "DICOM object without an image (no Rows/Columns)")
    image_type = _multi_value(ds.get("ImageType"))
    frames = _frame_count(path, ds)
    orientation, position, spacing, slope, intercept = _plane_geometry(ds)
    frame_positions = _frame_positions(ds) if frames > 1 else None
    if frame_positions:
        position = frame_positions[0]
    series_number = ds.get("SeriesNumber")
    instance_number = ds.get("InstanceNumber")
    return SliceHeader(
        path=str(path),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_number=None if series_number in (None, "") else int(series_number),
        series_description=str(ds.get("SeriesDescription", "")),
        modality=str(ds.get("Modality", "")),
        sop_class_uid=sop_class,
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=frames,
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        orientation=orientation,
        position=position,
        pixel_spacing=spacing,
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        rescale_slope=slope,
        rescale_intercept=intercept,
        instance_number=None if instance_number in (None, "") else int(instance_number),
        is_mosaic="MOSAIC" in (value.upper() for value in image_type),
        frame_positions=frame_positions,
        patient_position=str(ds.get("PatientPosition", "") or "").strip(),
        image_type=image_type,
        labels=image_labels(ds),
        frame_labels=frame_labels(ds) if frames > 1 else None,
    )


def _frame_count(path: Path, ds: Dataset) -> int:
    """NumberOfFrames (1 when absent); a file that says it holds no frame is unreadable."""
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError) as error:
        raise UnreadableFileError(path, f"invalid NumberOfFrames {value!r}") from error
    if frames < 1:
        raise UnreadableFileError(path, f"NumberOfFrames is {frames}: the file holds no image")
    return frames


def _multi_value(value: Any) -> tuple[str, ...]:
    """A multi-valued string element (e.g. ImageType) as a tuple, whether it holds one value or many."""
    if value in (None, ""):
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in values)


def _plane_geometry(
    ds: Dataset,
) -> tuple[
    tuple[float, ...] | None,
    tuple[float, float, float] | None,
    tuple[float, float] | None,
    float,
    float,
]:
    """Orientation, position, pixel spacing and rescale, from the top level or
    (enhanced multi-frame) the shared / first per-frame functional groups."""
    sources: list[Dataset] = [ds]
    for sequence_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = ds.get(sequence_name)
        if sequence:
            sources.append(sequence[0])

    def find(macro: str | None, keyword: str) -> Any:
        for source in sources:
            holder = source
            if macro is not None and source is not ds:
                macro_sequence = source.get(macro)
                if not macro_sequence:
                    continue
                holder = macro_sequence[0]
            value = holder.get(keyword)
            if value not in (None, ""):
                return value
        return None

    orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
    position = find("PlanePositionSequence", "ImagePositionPatient")
    spacing = find("PixelMeasuresSequence", "PixelSpacing")
    slope = find("PixelValueTransformationSequence", "RescaleSlope")
    intercept = find("PixelValueTransformationSequence", "RescaleIntercept")
    return (
        None if orientation is None else tuple(float(v) for v in orientation),
        None if position is None else (float(position[0]), float(position[1]), float(position[2])),
        None if spacing is None else (float(spacing[0]), float(spacing[1])),
        1.0 if slope is None else float(slope),
        0.0 if intercept is None else float(intercept),
    )


def _frame_positions(ds: Dataset) -> tuple[tuple[float, float, float], ...] | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    positions = []
    for item in per_frame:
        plane = item.get("PlanePositionSequence")
        if not plane or "ImagePositionPatient" not in plane[0]:
            return None
        p = plane[0].ImagePositionPatient
        positions.append((float(p[0]), float(p[1]), float(p[2])))
    return tuple(positions)


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


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
    never one series whose slices all appear twice. An enhanced multi-frame file
    forms a group on its own; the mosaics of one series form one group (each
    mosaic one of its volumes), apart from any single slices. Groups are
    ordered by series number, then key, then folder; the key is the UID, with
    ``#2``, ``#3``... for further parts of one UID split within one folder.
    """
    groups: dict[tuple[Any, ...], list[SliceHeader]] = {}
    for header in headers:
        orientation = None if header.orientation is None else tuple(np.round(header.orientation, 4))
        # A multi-frame file is a series on its own; the mosaics of a series are its volumes.
        own_volume = header.path if header.frames > 1 else ("mosaic" if header.is_mosaic else None)
        folder = os.path.dirname(header.path)
        key = (header.series_uid, orientation, header.rows, header.columns, own_volume, folder)
        groups.setdefault(key, []).append(header)
    parts: dict[tuple[str, str], int] = {}
    series = []
    for group_key in sorted(groups, key=lambda k: (_series_number(groups[k]), str(k))):
        uid, folder = group_key[0], group_key[-1]
        parts[uid, folder] = parts.get((uid, folder), 0) + 1
        name = uid if parts[uid, folder] == 1 else f"{uid}#{parts[uid, folder]}"
        series.append(DicomSeries(key=name, headers=tuple(groups[group_key])))
    return series


def series_in_several_folders(series: Sequence[DicomSeries]) -> list[str]:
    """One message per SeriesInstanceUID found in more than one folder, naming the folders.

    Folders whose images lie at the same positions hold copies of one series
    (each loads on its own); folders with different positions may hold parts of
    one series split across folders, which medvol loads folder by folder.
    """
    folders: dict[str, dict[Path, set[tuple[float, ...]]]] = {}
    for item in series:
        if not item.key:
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
        raise SeriesError(
            folder,
            f"{len(series)} image series found; choose one with series=N or --series N:\n"
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
