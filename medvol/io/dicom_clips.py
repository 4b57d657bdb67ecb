"""Colour DICOM pixels, and clips: frames in time (ultrasound cine, X-ray runs, secondary captures).

``decode_frames`` reads a file's pixel data with pydicom into ``(frames, rows,
columns, samples)``: grey as stored, colour as R, G, B whatever the file
holds (RGB, YBR_FULL, YBR_FULL_422, YBR_RCT/YBR_ICT from JPEG 2000, a
palette), uncompressed or compressed (JPEG baseline, JPEG 2000, RLE...).
It refuses a photometric interpretation that does not fit SamplesPerPixel,
a PlanarConfiguration that the pixel data contradict, and fewer decoded
frames than NumberOfFrames.

``read_clip`` turns a clip (``SliceHeader.is_clip``: a classic multi-frame
file whose frames follow in time, or one 2D picture without a place in the
patient) into an array ``(C, X, Y, T)`` with frames along the third axis,
an affine whose first two columns are the pixel spacing in mm and whose
third is a unit step standing for one frame, and ``meta`` notes:
``axes`` ``"XYT"``, ``frames``, ``frame_interval_ms`` and where it came from,
``pixel_spacing_from`` and ``patient_geometry``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder

from medvol.errors import SeriesError, UnreadableFileError
from medvol.io.dicom_headers import SliceHeader
from medvol.io.geometry import affine_from_columns

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
MESSAGE_LENGTH = 400
"""Decoder messages are cut to this many characters, to keep errors to one line."""
ULTRASOUND_CM = 3
"""PhysicalUnitsX/YDirection code for centimetres in a SequenceOfUltrasoundRegions item."""

PLANAR_MIN_PIXELS = 1024
"""Fewer pixels than this tell nothing about the layout of colour samples."""
INTERLEAVED_PHASE_RATIO = 2.0
"""How much larger one of the three sample-to-sample steps must be than another (or all of them
than the step to the third next sample) for the samples to be read as interleaved R,G,B triples."""
LAYOUT_CHUNKS = 16
LAYOUT_MAJORITY = 0.8
LAYOUT_MIN_CHANGES = 0.05
PLANE_SMOOTHNESS_RATIO = 0.6
"""How much smaller the step to the next sample must be than the step to the third next for the
samples to be read as planes (neighbouring pixels of one colour)."""


def check_pixel_description(header: SliceHeader) -> None:
    """Refuse samples per pixel, photometric interpretation and planar configuration that disagree.

    Raises:
        UnreadableFileError: e.g. SamplesPerPixel 3 with MONOCHROME2, or a
            PlanarConfiguration other than 0 or 1, naming the file.
    """
    samples, photometric = header.samples_per_pixel, header.photometric
    if samples == 1 and photometric not in (*GREY, "PALETTE COLOR"):
        raise UnreadableFileError(
            header.path, f"SamplesPerPixel is 1 but PhotometricInterpretation is {photometric}"
        )
    if samples == 3 and photometric not in COLOUR:
        raise UnreadableFileError(
            header.path,
            f"SamplesPerPixel is 3 but PhotometricInterpretation is {photometric}, not a colour one "
            f"({', '.join(COLOUR)})",
        )
    if samples not in (1, 3):
        raise UnreadableFileError(
            header.path, f"SamplesPerPixel {samples} is neither 1 (grey) nor 3 (colour)"
        )
    if samples == 3 and header.planar_configuration not in (None, 0, 1):
        raise UnreadableFileError(
            header.path, f"PlanarConfiguration {header.planar_configuration} is neither 0 nor 1"
        )


def decode_frames(dataset: Dataset, header: SliceHeader) -> np.ndarray:
    """Every frame of a file, stored values, colour as RGB.

    Returns:
        ``(frames, rows, columns, samples)``; samples is 3 (R, G, B) for a
        colour file, 1 for grey (no rescale applied).

    Raises:
        UnreadableFileError: the pixel data cannot be decoded, holds fewer
            frames than NumberOfFrames, or contradicts PlanarConfiguration.
    """
    check_pixel_description(header)
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    native = syntax is not None and not syntax.is_compressed
    try:
        # Native data is decoded as stored, to check its layout before any colour conversion.
        # pydicom logs each plugin's failure with a traceback; the error below says it in one line.
        with _quiet(logging.getLogger("pydicom.pixels.decoders.base")):
            array, decoded = get_decoder(syntax).as_array(dataset, as_rgb=not native)  # type: ignore[arg-type]
    except Exception as error:  # pydicom and its plugins raise many types for bad data
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = " ".join(lines)[:MESSAGE_LENGTH] if lines else type(error).__name__
        raise UnreadableFileError(header.path, f"cannot decode pixel data ({reason})") from error
    samples = int(decoded.get("samples_per_pixel", header.samples_per_pixel))
    array = array.reshape(-1, header.rows, header.columns, samples)
    if array.shape[0] != header.frames:
        raise UnreadableFileError(
            header.path, f"decoded {array.shape[0]} frame(s), NumberOfFrames says {header.frames}"
        )
    photometric = str(decoded.get("photometric_interpretation", header.photometric))
    if native and samples == 3 and photometric != "YBR_FULL_422":
        check_planar_configuration(array, header)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        array = convert_color_space(array, photometric, "RGB", per_frame=True)
    elif photometric == "PALETTE COLOR":
        array = apply_color_lut(array[..., 0], dataset).reshape(header.frames, header.rows, header.columns, 3)
    elif photometric not in ("RGB", *GREY):
        raise UnreadableFileError(header.path, f"cannot convert {photometric} pixel data to RGB")
    return array


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Silence ``logger`` (its errors are reported otherwise) for the duration of the block."""
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def check_planar_configuration(array: np.ndarray, header: SliceHeader) -> None:
    """Refuse native colour data whose samples are laid out otherwise than PlanarConfiguration says.

    Both layouts have the same size, so only the values can tell them apart.
    Interleaved data (R,G,B,R,G,B…, configuration 0) read in file order
    changes colour at every sample and pixel at every third: the three steps
    between consecutive samples differ (for a grey picture, R=G=B, two of them
    are zero). Planar data (all R, then G, then B; configuration 1) steps from
    one pixel to its neighbour at every sample: no period of three, and
    smaller steps than to the third next sample. The first frame decides; a
    frame that shows neither (noise, a flat image, fewer than
    ``PLANAR_MIN_PIXELS`` pixels) is read as the header says.

    Args:
        array: ``(frames, rows, columns, 3)`` as pydicom decoded it, following the header.
    """
    stated = 1 if header.planar_configuration == 1 else 0
    frame = array[0]
    if frame.shape[0] * frame.shape[1] < PLANAR_MIN_PIXELS:
        return
    # The samples in file order: pydicom read them as the header says.
    stream = (frame.transpose(2, 0, 1) if stated == 1 else frame).reshape(-1).astype(np.float64)
    found = _sample_layout(stream)
    if found is None or found == stated:
        return
    layouts = ("interleaved R,G,B per pixel", "one plane per colour")
    raise UnreadableFileError(
        header.path,
        f"PlanarConfiguration is {stated} ({layouts[stated]}) but the pixel data are laid out as "
        f"{layouts[found]} (configuration {found}); the header is wrong",
    )


def _sample_layout(stream: np.ndarray) -> int | None:
    """0 (interleaved), 1 (planar) or ``None`` (cannot tell) for the samples of one frame in file order.

    The stream is cut into ``LAYOUT_CHUNKS`` parts and each part votes; a layout
    needs ``LAYOUT_MAJORITY`` of the parts that show any change, so a few strong
    edges cannot decide alone.
    """
    usable = stream.size - stream.size % (3 * LAYOUT_CHUNKS)
    votes = [_chunk_layout(chunk) for chunk in stream[:usable].reshape(LAYOUT_CHUNKS, -1)]
    informative = [vote for vote in votes if vote != -1]
    if len(informative) < LAYOUT_CHUNKS // 2:
        return None
    for layout in (0, 1):
        if informative.count(layout) >= LAYOUT_MAJORITY * len(informative):
            return layout
    return None


def _chunk_layout(samples: np.ndarray) -> int | None:
    """The layout one part of the stream shows: 0, 1, ``None`` (neither) or -1 (too few changes:
    fewer than ``LAYOUT_MIN_CHANGES`` of its steps, e.g. a flat background or a few stripes)."""
    steps = np.abs(np.diff(samples))
    if np.count_nonzero(steps) < LAYOUT_MIN_CHANGES * steps.size:
        return -1
    third = float(np.abs(samples[3:] - samples[:-3]).mean())
    phases = steps[: steps.size - steps.size % 3].reshape(-1, 3).mean(axis=0)
    if (
        phases.max() >= INTERLEAVED_PHASE_RATIO * phases.min()
        or steps.mean() >= INTERLEAVED_PHASE_RATIO * third
    ):
        return 0
    if phases.max() <= 1.25 * phases.min() and steps.mean() <= PLANE_SMOOTHNESS_RATIO * third:
        return 1
    return None


def read_clip(header: SliceHeader, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A clip (or one picture) as ``(C, X, Y, T)``, its affine and ``meta`` notes.

    Grey values are rescaled (RescaleSlope/Intercept) like every DICOM image;
    colour ones are R, G, B as stored (8 or 16 bit).

    Returns:
        The array, the voxel→RAS affine (x along columns, y along rows, both in
        mm; the third column a unit step standing for one frame) and notes.
    """
    frames = decode_frames(dataset, header)
    if header.is_colour:
        array = frames.transpose(3, 2, 1, 0)
    else:
        array = _rescaled(frames[..., 0], header).transpose(2, 1, 0)[np.newaxis]
    (column_spacing, row_spacing), spacing_from = pixel_spacing(dataset, header)
    notes: dict[str, Any] = {
        "axes": "XYT",
        "frames": header.frames,
        **frame_interval(dataset, header),
        "pixel_spacing_from": spacing_from,
    }
    row_direction, column_direction, origin = np.eye(3)[0], np.eye(3)[1], np.zeros(3)
    if header.orientation is not None and header.position is not None:
        from medvol.io.dicom import _unit_axes

        row_direction, column_direction, _, _ = _unit_axes(header)
        origin = np.asarray(header.position, dtype=np.float64)
        notes["patient_geometry"] = True
        notes["affine_from"] = "ImageOrientationPatient and ImagePositionPatient of the plane"
    else:
        notes["patient_geometry"] = False
        notes["affine_from"] = (
            "image axes (no ImageOrientationPatient/ImagePositionPatient): x along the columns, "
            "y down the rows, origin 0"
        )
    normal = np.cross(row_direction, column_direction)
    affine = affine_from_columns(
        origin, (row_direction * column_spacing, column_direction * row_spacing, normal)
    )
    return array, affine, notes


def _rescaled(frames: np.ndarray, header: SliceHeader) -> np.ndarray:
    """Grey frames with RescaleSlope/Intercept applied (float32 unless an integer shift)."""
    slope, intercept = header.rescale_slope, header.rescale_intercept
    if slope == 1.0 and float(intercept).is_integer():
        if intercept == 0:
            return frames
        return (frames.astype(np.int64) + int(intercept)).astype(np.int32)
    return (frames.astype(np.float64) * slope + intercept).astype(np.float32)


def pixel_spacing(dataset: Dataset, header: SliceHeader) -> tuple[tuple[float, float], str]:
    """The distance between columns and between rows (mm), and where it came from.

    PixelSpacing when present; else the ultrasound region with centimetre
    units in both directions that covers the most pixels
    (SequenceOfUltrasoundRegions, PhysicalDeltaX/Y); else 1 mm, said so.
    """
    if header.pixel_spacing is not None and min(header.pixel_spacing) > 0:
        between_rows, between_columns = header.pixel_spacing
        return (between_columns, between_rows), "PixelSpacing"
    regions = []
    for number, region in enumerate(dataset.get("SequenceOfUltrasoundRegions") or [], 1):
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        deltas = (region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY"))
        if (
            units != (ULTRASOUND_CM, ULTRASOUND_CM)
            or None in deltas
            or min(abs(float(d)) for d in deltas) <= 0
        ):
            continue
        width = int(region.get("RegionLocationMaxX1", 0)) - int(region.get("RegionLocationMinX0", 0))
        height = int(region.get("RegionLocationMaxY1", 0)) - int(region.get("RegionLocationMinY0", 0))
        regions.append((width * height, number, abs(float(deltas[0])) * 10, abs(float(deltas[1])) * 10))
    if regions:
        _, number, delta_x, delta_y = max(regions)
        count = len(dataset.SequenceOfUltrasoundRegions)
        return (
            delta_x,
            delta_y,
        ), f"SequenceOfUltrasoundRegions (region {number} of {count}, PhysicalDeltaX/Y)"
    return (1.0, 1.0), "none: no PixelSpacing or ultrasound region in cm, 1 mm assumed"


def frame_interval(dataset: Dataset, header: SliceHeader) -> dict[str, Any]:
    """``frame_interval_ms`` and ``frame_interval_from`` (``None`` for one frame or no timing).

    From FrameTime (ms), FrameTimeVector (ms from the previous frame: the mean
    of frames 2 onwards, with ``frame_interval_range_ms`` when they differ),
    whichever FrameIncrementPointer names first, then 1000 / CineRate, then
    1000 / RecommendedDisplayFrameRate (frames/s). A value that is not a
    positive number is skipped and named in ``frame_interval_skipped``.
    """
    if header.frames == 1:
        return {"frame_interval_ms": None, "frame_interval_from": "one frame"}
    times = ["FrameTime", "FrameTimeVector"]
    if header.frame_increment[:1] == ("FrameTimeVector",):
        times.reverse()
    skipped = []
    for keyword in (*times, "CineRate", "RecommendedDisplayFrameRate"):
        value = dataset.get(keyword)
        if value in (None, ""):
            continue
        found = _interval(keyword, value, header.frames)
        if found is None:
            skipped.append(f"{keyword} {value!r}")
            continue
        interval, spread = found
        notes: dict[str, Any] = {"frame_interval_ms": round(interval, 6), "frame_interval_from": keyword}
        if spread is not None:
            notes["frame_interval_range_ms"] = spread
        if skipped:
            notes["frame_interval_skipped"] = skipped
        return notes
    return {
        "frame_interval_ms": None,
        "frame_interval_from": "unknown: no usable FrameTime, FrameTimeVector, CineRate or "
        "RecommendedDisplayFrameRate",
        **({"frame_interval_skipped": skipped} if skipped else {}),
    }


def _interval(keyword: str, value: Any, frames: int) -> tuple[float, list[float] | None] | None:
    """(interval ms, ``[min, max]`` when the intervals differ), or ``None`` for an unusable value."""
    try:
        if keyword == "FrameTimeVector":
            numbers = [float(v) for v in ([value] if isinstance(value, (int, float, str)) else value)]
            steps = numbers[1:]  # the first entry is 0: no frame before the first
            if len(numbers) != frames or not steps or not np.all(np.isfinite(steps)) or min(steps) <= 0:
                return None
            spread = None if max(steps) - min(steps) < 1e-6 else [min(steps), max(steps)]
            return float(np.mean(steps)), spread
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number) or number <= 0:
        return None
    return (number if keyword == "FrameTime" else 1000.0 / number), None


def clip_source_error(header: SliceHeader) -> SeriesError:
    """Why a classic multi-frame file whose frames do not follow in time cannot be loaded."""
    increment = ", ".join(header.frame_increment)
    return SeriesError(
        Path(header.path),
        f"its {header.frames} frames follow {increment} (FrameIncrementPointer), not time, and carry no "
        "per-frame positions: medvol cannot place them as slices nor read them as a clip",
    )
