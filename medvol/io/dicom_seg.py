"""DICOM SEG objects read as label maps on the grid of the image series they segment.

A DICOM Segmentation (SOP class ``1.2.840.10008.5.1.4.1.1.66.4``, and the
label-map SOP class ``...66.7``) stores frames, each the mask of one segment
on one plane, with its own position and orientation. It is no volume by
itself: frames may cover only the slices a segment touches. medvol places
each frame on the image's voxel grid by geometry alone (the frame's
position, orientation and pixel spacing against the image's affine), so a
SEG written by any tool lands where it belongs, or is refused with the frame
that does not fit. The label value of a voxel is its segment number
(``SegmentNumber``); a voxel claimed by two segments is refused, since a
label map holds one class per voxel.

Only pydicom is needed (no highdicom); BINARY, FRACTIONAL (threshold at half
the maximum) and LABELMAP segmentations are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medvol.errors import GeometryError, UnreadableFileError
from medvol.io.geometry import affine_from_columns
from medvol.volume import Volume

SEGMENTATION_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
)
FRAME_FIT_TOLERANCE_VOXELS = 0.01
"""How far (in voxels) a SEG frame's pixel centres may lie from the image's voxel
centres: 0.01 voxel is 0.005 mm at 0.5 mm pixels, far below any real misplacement."""

REFERENCE_TAGS = [
    "SOPClassUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "ReferencedSeriesSequence",
]


@dataclass(frozen=True)
class SegReference:
    """What pairs a DICOM SEG with its image series (no patient data).

    ``referenced_series_uids`` are the series the SEG says it was derived
    from (``ReferencedSeriesSequence``); empty when the SEG does not say.
    """

    path: str
    study_uid: str
    frame_of_reference_uid: str
    referenced_series_uids: tuple[str, ...]


def is_segmentation_sop_class(sop_class_uid: str) -> bool:
    return sop_class_uid in SEGMENTATION_SOP_CLASSES


def read_seg_reference(path: str | Path) -> SegReference:
    """The study, frame of reference and source series a SEG names (header only).

    Raises:
        UnreadableFileError: the file cannot be read or is not a DICOM SEG.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=REFERENCE_TAGS)
    except Exception as error:  # pydicom raises many types for corrupt files
        raise UnreadableFileError(path, f"corrupt or truncated DICOM header ({error})") from error
    sop_class = str(ds.get("SOPClassUID", ""))
    if not is_segmentation_sop_class(sop_class):
        raise UnreadableFileError(path, f"not a DICOM SEG (SOP class {sop_class or 'missing'})")
    referenced = tuple(
        str(item.SeriesInstanceUID)
        for item in ds.get("ReferencedSeriesSequence") or []
        if item.get("SeriesInstanceUID")
    )
    return SegReference(
        str(path), str(ds.get("StudyInstanceUID", "")), str(ds.get("FrameOfReferenceUID", "")), referenced
    )


def load_dicom_seg(path: str | Path, image: Volume) -> Volume:
    """A DICOM SEG as an integer label map ``(1, X, Y, Z)`` on ``image``'s grid.

    Voxels outside every segment are 0; a voxel in segment ``n`` is ``n``.
    ``meta["segments"]`` maps each segment number to its label.

    Raises:
        UnreadableFileError: not a readable DICOM SEG, or pixel data missing
            or cut short.
        GeometryError: a frame does not lie on the image's grid (another
            plane, pixel size, or position between slices, or outside it), or
            two segments claim one voxel.
    """
    path = Path(path)
    ds = _read_seg(path)
    frames = _frame_masks(path, ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != len(frames):
        raise UnreadableFileError(
            path, f"{len(frames)} frame(s) of pixel data but {len(per_frame)} per-frame description(s)"
        )
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    labelmap = str(ds.get("SegmentationType", "")).upper() == "LABELMAP"
    voxel_from_world = np.linalg.inv(image.affine)
    label = np.zeros(image.shape, dtype=np.int16)
    for number, (mask, group) in enumerate(zip(frames, per_frame, strict=True), start=1):
        indices = _frame_voxel_indices(path, number, group, shared, voxel_from_world, image.shape, mask.shape)
        segment = mask if labelmap else mask.astype(bool) * _segment_number(path, number, group)
        _paint(path, number, label, indices, segment.T)  # frames are (rows, columns); indices (columns, rows)
    segments = {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in ds.SegmentSequence}
    meta = {
        "source_path": str(path),
        "format": "dicom-seg",
        "reader": "pydicom",
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "segments": segments,
    }
    return Volume(label[None], image.affine.copy(), meta)


def _read_seg(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for corrupt files
        raise UnreadableFileError(path, f"corrupt or truncated DICOM file ({error})") from error
    if not is_segmentation_sop_class(str(ds.get("SOPClassUID", ""))):
        raise UnreadableFileError(path, f"not a DICOM SEG (SOP class {ds.get('SOPClassUID', 'missing')})")
    if "SegmentSequence" not in ds:
        raise UnreadableFileError(path, "DICOM SEG without a SegmentSequence")
    return ds


def _frame_masks(path: Path, ds: Dataset) -> np.ndarray:
    """The SEG's frames ``(frames, rows, columns)``: 0/1 masks, or segment numbers for a LABELMAP."""
    if "PixelData" not in ds:
        raise UnreadableFileError(path, "DICOM SEG without pixel data")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as error:  # truncated or undecodable pixel data
        raise UnreadableFileError(path, f"cannot decode the SEG's pixel data ({error})") from error
    if pixels.ndim == 2:
        pixels = pixels[None]
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    if kind == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        return (pixels >= maximum / 2).astype(np.uint8)
    return pixels


def _segment_number(path: Path, frame: int, group: Dataset) -> int:
    identification = group.get("SegmentIdentificationSequence")
    if not identification or "ReferencedSegmentNumber" not in identification[0]:
        raise UnreadableFileError(path, f"frame {frame} names no segment (SegmentIdentificationSequence)")
    return int(identification[0].ReferencedSegmentNumber)


def _functional_value(group: Dataset, shared: Dataset, macro: str, keyword: str) -> Any:
    """A value from the frame's functional groups, else from the shared ones."""
    for source in (group, shared):
        items = source.get(macro)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _frame_voxel_indices(
    path: Path,
    frame: int,
    group: Dataset,
    shared: Dataset,
    voxel_from_world: np.ndarray,
    shape: tuple[int, int, int],
    frame_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image voxel index ``(x, y, z)`` of each pixel of a frame, each ``(columns, rows)``.

    Raises:
        GeometryError: the frame's pixels are not voxel centres of the image.
    """
    orientation = _functional_value(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    position = _functional_value(group, shared, "PlanePositionSequence", "ImagePositionPatient")
    spacing = _functional_value(group, shared, "PixelMeasuresSequence", "PixelSpacing")
    if orientation is None or position is None or spacing is None:
        raise UnreadableFileError(path, f"frame {frame} has no position, orientation or pixel spacing")
    row_direction, column_direction = np.array(orientation[:3], float), np.array(orientation[3:], float)
    # DICOM: pixel (column i, row j) lies at position + i * spacing[1] * row_dir + j * spacing[0] * col_dir.
    steps = (row_direction * float(spacing[1]), column_direction * float(spacing[0]), np.zeros(3))
    frame_affine = affine_from_columns(np.array(position, float), steps)
    to_voxel = voxel_from_world @ frame_affine
    rows, columns = frame_shape
    i, j = np.meshgrid(np.arange(columns), np.arange(rows), indexing="ij")
    points = to_voxel[:3, 0, None, None] * i + to_voxel[:3, 1, None, None] * j + to_voxel[:3, 3, None, None]
    rounded = np.rint(points)
    off_grid = float(np.abs(points - rounded).max())
    if off_grid > FRAME_FIT_TOLERANCE_VOXELS:
        raise GeometryError(
            path,
            f"frame {frame} does not lie on the image's voxel grid (pixel centres up to {off_grid:.3f} "
            "voxel from a voxel centre): the SEG was made on another series or grid",
        )
    index = rounded.astype(np.int64)
    if (index.min(axis=(1, 2)) < 0).any() or (index.max(axis=(1, 2)) >= np.array(shape)).any():
        raise GeometryError(path, f"frame {frame} lies (partly) outside the image's {shape} voxel grid")
    return index[0], index[1], index[2]


def _paint(
    path: Path,
    frame: int,
    label: np.ndarray,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray],
    values: np.ndarray,
) -> None:
    """Write a frame's non-zero segment numbers into ``label``; refuse a voxel two segments claim."""
    inside = values > 0
    target = tuple(axis[inside] for axis in indices)
    existing = label[target]
    clash = (existing > 0) & (existing != values[inside])
    if clash.any():
        pairs = sorted(
            {(int(a), int(b)) for a, b in zip(existing[clash], values[inside][clash], strict=True)}
        )
        raise GeometryError(
            path,
            f"segments {pairs[0][0]} and {pairs[0][1]} overlap ({int(clash.sum())} voxel(s), frame {frame}): "
            "a label map holds one segment per voxel, so overlapping segments cannot be read as one",
        )
    label[target] = values[inside]
