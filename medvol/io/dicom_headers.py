"""DICOM headers: what medvol reads from one file (no pixel data, no patient data).

``read_header`` reads one file's header with pydicom (``stop_before_pixels``)
into a ``SliceHeader``, or a ``SkippedFile`` for a file that holds no image
(non-DICOM files, DICOMDIR, SR, SEG, RTSTRUCT, presentation states, ...),
and refuses a truncated or corrupt file with an error naming it.
Patient identifiers are never read into medvol's records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medvol.errors import MedvolError, UnreadableFileError
from medvol.io.dicom_elements import HeaderValues, read_elements
from medvol.io.dicom_labels import CLASSIC_TAGS, Labels, frame_labels, image_labels

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
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "FrameIncrementPointer",
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

# SOP classes whose images are 2D pictures with no place in the patient (ultrasound,
# secondary capture, visible-light photographs, X-ray angiography/fluoroscopy): a single
# frame without ImageOrientationPatient/ImagePositionPatient loads as a one-frame clip.
PICTURE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound (retired)
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound multi-frame (retired)
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound multi-frame
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame single bit secondary capture
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame grayscale byte secondary capture
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame grayscale word secondary capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame true colour secondary capture
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-ray angiographic
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-ray radiofluoroscopic
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL endoscopic
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video endoscopic
        "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL microscopic
        "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # Video microscopic
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL photographic
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video photographic
        "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic photography 8 bit
        "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic photography 16 bit
    }
)

# What the frames of a classic multi-frame file may follow for it to be a clip (FrameIncrementPointer).
CLIP_FRAME_INCREMENTS = frozenset({"FrameTime", "FrameTimeVector"})

# As Tag objects once: pydicom resolves keywords on every call otherwise (~100 µs a file).
HEADER_TAG_NUMBERS = [Tag(keyword) for keyword in HEADER_TAGS]


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
    photometric: str = "MONOCHROME2"
    planar_configuration: int | None = None
    frame_increment: tuple[str, ...] = ()

    @property
    def is_colour(self) -> bool:
        """Three samples per pixel (RGB or YCbCr), or a palette that maps each value to a colour."""
        return self.samples_per_pixel == 3 or self.photometric == "PALETTE COLOR"

    @property
    def is_clip(self) -> bool:
        """The file's frames follow in time (or it is one 2D picture), not slices in space.

        True for a classic multi-frame file (no per-frame functional groups)
        whose FrameIncrementPointer, if any, names only FrameTime or
        FrameTimeVector, and for a single frame without ImageOrientationPatient
        or ImagePositionPatient that is colour or of a picture SOP class
        (ultrasound, secondary capture, photograph, X-ray angiography).
        """
        if self.frames > 1:
            return self.frame_labels is None and set(self.frame_increment) <= CLIP_FRAME_INCREMENTS
        no_place = self.orientation is None or self.position is None
        return no_place and (self.is_colour or self.sop_class_uid in PICTURE_SOP_CLASSES)

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
    sop_class_uid: str = ""


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: str | Path) -> SliceHeader | SkippedFile:
    """Read one file's header (no pixel data), opening the file once.

    The common file is read by ``medvol.io.dicom_elements``; any other (big
    endian, enhanced multi-frame, non-ASCII text, cut short...) by pydicom.

    Returns:
        A ``SliceHeader`` for an image, or ``SkippedFile`` for a file that is
        not DICOM or holds no image.

    Raises:
        UnreadableFileError: an empty file, or a DICOM file whose header is
            truncated or corrupt, or an image whose pixel data is missing or
            (uncompressed) cut short.
    """
    path = Path(path)
    raw = read_elements(path, HEADER_TAG_NUMBERS)
    if raw is None:
        return _read_header_with_pydicom(path)
    if raw.size == 0:
        raise UnreadableFileError(path, "empty file (0 bytes)")
    if raw.values is None:
        return SkippedFile(str(path), "not a DICOM file (no DICM preamble)")
    return _header(path, raw.values, raw.size, raw.stop, raw.pixel_element)


def _read_header_with_pydicom(path: Path) -> SliceHeader | SkippedFile:
    """``read_header`` by pydicom's ``dcmread``: for the files ``read_elements`` leaves to it."""
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
    except Exception as error:  # pydicom raises many types for corrupt files
        raise UnreadableFileError(path, f"corrupt or truncated DICOM header ({error})") from error
    return _header(path, dataset, size, stop, pixel_element)


def _header(
    path: Path, ds: Dataset | HeaderValues, size: int, stop: int, pixel_element: bytes
) -> SliceHeader | SkippedFile:
    """The header of a read file, checked for completeness (``_check_complete``)."""
    try:
        result = _header_from_dataset(path, ds)
    except MedvolError:
        raise
    except Exception as error:  # a value of an unexpected type or number
        raise UnreadableFileError(path, f"corrupt or truncated DICOM header ({error})") from error
    _check_complete(path, ds, result, size, stop, pixel_element)
    return result


def _check_complete(
    path: Path,
    ds: Dataset | HeaderValues,
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
    if implicit or pixel_element[4:8] == b"\xff\xff\xff\xff":
        # (an undefined length right after the tag: encapsulated data written without its VR, which
        # some writers do even in explicit VR files, and pydicom reads)
        header_length, length = 8, int(np.frombuffer(pixel_element[4:8], dtype=f"{order}u4")[0])
    elif pixel_element[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
        if len(pixel_element) < 12:
            raise UnreadableFileError(path, "truncated DICOM file: it ends inside the pixel data header")
        header_length, length = 12, int(np.frombuffer(pixel_element[8:12], dtype=f"{order}u4")[0])
    else:
        header_length, length = 8, int(np.frombuffer(pixel_element[6:8], dtype=f"{order}u2")[0])
    if length == 0xFFFFFFFF:
        if isinstance(result, SliceHeader):
            _check_fragments(path, result, stop + header_length, size)
        return
    missing = stop + header_length + length - size
    if missing > 0:
        problem = (
            f"truncated DICOM file: the pixel data ({length} bytes) is cut short, {missing} byte(s) missing"
        )
        if isinstance(result, SliceHeader) and result.frames > 1 and "BitsAllocated" in ds:
            whole = (size - stop - header_length) // max(_frame_bytes(result, int(ds.BitsAllocated)), 1)
            problem = (
                f"truncated multi-frame pixel data: NumberOfFrames is {result.frames} but the file ends "
                f"after {whole} whole frame(s) ({missing} byte(s) missing)"
            )
        raise UnreadableFileError(path, problem)
    if isinstance(result, SliceHeader) and element == 0x0010 and "BitsAllocated" in ds:
        frame_bytes = _frame_bytes(result, int(ds.BitsAllocated))
        if length < frame_bytes * result.frames:
            raise UnreadableFileError(path, _short_pixel_data(result, length, frame_bytes))


def _check_fragments(path: Path, header: SliceHeader, start: int, size: int) -> None:
    """Raise when encapsulated (compressed) pixel data ends early or holds fewer fragments than frames.

    Walks the item headers from ``start`` (the first item, the basic offset
    table) to the sequence delimiter without reading the compressed bytes;
    every frame takes at least one fragment.
    """
    items = 0
    with open(path, "rb") as handle:
        while True:
            handle.seek(start)
            item = handle.read(8)
            if len(item) < 8:
                break
            group, element = np.frombuffer(item[:4], dtype="<u2").tolist()
            if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter: the data is complete
                fragments = max(items - 1, 0)
                if fragments < header.frames:
                    raise UnreadableFileError(
                        path,
                        f"NumberOfFrames is {header.frames} but the compressed pixel data holds "
                        f"{fragments} fragment(s); every frame needs one",
                    )
                return
            if (group, element) != (0xFFFE, 0xE000):
                raise UnreadableFileError(
                    path,
                    f"corrupt compressed pixel data: no item tag at byte {start} (found {item[:4].hex()})",
                )
            start += 8 + int(np.frombuffer(item[4:8], dtype="<u4")[0])
            if start > size:
                break
            items += 1
    fragments = max(items - 1, 0)
    if header.frames == 1:
        problem = (
            f"truncated DICOM file: it ends inside compressed fragment {fragments + 1} of the pixel data"
        )
    else:
        problem = (
            f"truncated multi-frame pixel data: NumberOfFrames is {header.frames} but the file ends "
            f"inside compressed fragment {fragments + 1} ({fragments} complete)"
        )
    raise UnreadableFileError(path, problem)


def _frame_bytes(header: SliceHeader, bits: int) -> int:
    """Bytes of one native frame: Rows×Columns×samples×bits/8 (YBR_FULL_422: 2 chroma per 2 pixels)."""
    samples = 2 if header.photometric == "YBR_FULL_422" else header.samples_per_pixel
    return header.rows * header.columns * samples * bits // 8


def _short_pixel_data(header: SliceHeader, length: int, frame_bytes: int) -> str:
    """What a native pixel data element too short for its frames lacks, in frames and bytes."""
    expected = frame_bytes * header.frames
    if header.frames == 1:
        return f"incomplete pixel data: {length} bytes where Rows×Columns×samples×bits need {expected}"
    whole = length // frame_bytes if frame_bytes else 0
    return (
        f"truncated multi-frame pixel data: NumberOfFrames is {header.frames} but the data holds "
        f"{whole} whole frame(s) ({length} of {expected} bytes)"
    )


def _header_from_dataset(path: Path, ds: Dataset | HeaderValues) -> SliceHeader | SkippedFile:
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if path.name.upper() == "DICOMDIR" or sop_class.startswith(NON_IMAGE_SOP_PREFIXES):
        name = pydicom.uid.UID(sop_class).name if sop_class else "DICOMDIR"
        return SkippedFile(str(path), f"not an image ({name})", sop_class_uid=sop_class)
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
        photometric=str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper(),
        planar_configuration=_int_or_none(ds.get("PlanarConfiguration")),
        frame_increment=_frame_increment(ds),
    )


def _frame_increment(ds: Dataset | HeaderValues) -> tuple[str, ...]:
    """The keywords FrameIncrementPointer names (what changes from frame to frame), ``()`` without one."""
    value = ds.get("FrameIncrementPointer")
    if value in (None, ""):
        return ()
    tags = [value] if isinstance(value, int) else list(value)
    return tuple(pydicom.datadict.keyword_for_tag(tag) or str(Tag(tag)) for tag in tags)


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _frame_count(path: Path, ds: Dataset | HeaderValues) -> int:
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
    ds: Dataset | HeaderValues,
) -> tuple[
    tuple[float, ...] | None,
    tuple[float, float, float] | None,
    tuple[float, float] | None,
    float,
    float,
]:
    """Orientation, position, pixel spacing and rescale, from the top level or
    (enhanced multi-frame) the shared / first per-frame functional groups."""
    sources: list[Dataset | HeaderValues] = [ds]
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


def _frame_positions(ds: Dataset | HeaderValues) -> tuple[tuple[float, float, float], ...] | None:
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
