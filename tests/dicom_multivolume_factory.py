"""Synthetic MR series holding several volumes at the same positions (echoes, time points, b-values).

``write_mr_volumes`` writes a classic series (one file per slice per volume);
``write_enhanced_mr_volumes`` one Enhanced MR multi-frame file whose frames
of every volume are stored in shuffled order, with the per-frame functional
groups a scanner writes (FrameContentSequence with TemporalPositionIndex,
StackID, InStackPositionNumber and DimensionIndexValues; MREchoSequence;
MRDiffusionSequence; MRImageFrameTypeSequence). Each writer returns one
``SeriesTruth`` per volume, in the order given, with values as written.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from tests.dicom_factory import (
    Geometry,
    SeriesTruth,
    SliceTruth,
    _image_pixel_module,
    _pixel_bytes,
    base_dataset,
    ds_text,
    ramp,
    write,
)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


@dataclass(frozen=True)
class VolumeSpec:
    """What tells one volume of a series from the others (``None``: not written).

    Attributes:
        echo_number: EchoNumbers (classic only; enhanced files have no echo number).
        echo_time: EchoTime (classic) or EffectiveEchoTime (enhanced), ms.
        temporal_position: TemporalPositionIdentifier (classic) or
            TemporalPositionIndex (enhanced).
        trigger_time: TriggerTime, ms (classic only).
        acquisition_number: AcquisitionNumber (classic only).
        b_value: DiffusionBValue, s/mm².
        image_type: ImageType (classic) or FrameType (enhanced), the
            magnitude/phase value third, e.g. ``("ORIGINAL", "PRIMARY", "M", "NONE")``.
        slope: RescaleSlope of this volume's images.
    """

    echo_number: int | None = None
    echo_time: float | None = None
    temporal_position: int | None = None
    trigger_time: float | None = None
    acquisition_number: int | None = None
    b_value: float | None = None
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NONE")
    slope: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def echoes(count: int, first_ms: float = 4.6, step_ms: float = 5.0) -> list[VolumeSpec]:
    """``count`` echoes numbered from 1."""
    return [VolumeSpec(echo_number=e + 1, echo_time=first_ms + e * step_ms) for e in range(count)]


def time_points(count: int, interval_ms: float = 1500.0) -> list[VolumeSpec]:
    """``count`` dynamic time points (a DCE/fMRI series)."""
    return [
        VolumeSpec(temporal_position=t + 1, trigger_time=t * interval_ms, acquisition_number=t + 1)
        for t in range(count)
    ]


def _mr_common(ds: Dataset, series_uid: str, series_number: int, frame_of_reference: str) -> None:
    ds.Modality = "MR"
    ds.Manufacturer = "SYNTHETIC"
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "synthetic MR volumes"
    ds.FrameOfReferenceUID = frame_of_reference
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "20"
    ds.MagneticFieldStrength = "3"


def _truth(
    path: Path,
    position: Sequence[str],
    geometry_iop: Sequence[str],
    spacing: Sequence[str],
    stored: np.ndarray,
    k: int,
    slope: str,
) -> SliceTruth:
    return SliceTruth(
        index=k,
        path=path,
        position=np.array([float(v) for v in position]),
        row_direction=np.array([float(v) for v in geometry_iop[:3]]),
        column_direction=np.array([float(v) for v in geometry_iop[3:]]),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        stored=stored.copy(),
        slope=float(slope),
        intercept=0.0,
    )


def write_mr_volumes(
    folder: Path,
    geometry: Geometry,
    volumes: Sequence[VolumeSpec],
    *,
    seed: int = 0,
    drop: Sequence[tuple[int, int]] = (),
    shift: Sequence[tuple[int, float]] = (),
) -> list[SeriesTruth]:
    """Write a classic MR series: one file per slice of every volume, random names, shuffled.

    Args:
        volumes: what distinguishes each volume; volume ``v``'s ramp starts at ``100 + v * 10000``.
        drop: ``(volume, slice)`` pairs not written (a slice missing from one volume).
        shift: ``(volume, mm)``: that volume's positions moved along the normal.
    """
    rng = random.Random(seed)
    series_uid, frame_of_reference, study_uid = generate_uid(), generate_uid(), generate_uid()
    iop = [ds_text(v) for v in (*geometry.row_direction, *geometry.column_direction)]
    spacing = [ds_text(v) for v in geometry.pixel_spacing]
    truths = []
    jobs = []
    for v, spec in enumerate(volumes):
        offset = dict(shift).get(v, 0.0)
        positions = geometry.positions() + offset * geometry.normal
        stored = ramp(geometry, base=100 + v * 10000)
        truths.append(SeriesTruth(folder=folder, geometry=geometry, series_uid=series_uid, series_number=7))
        for k in range(geometry.slices):
            if (v, k) not in set(drop):
                jobs.append((v, spec, k, positions[k], stored[k]))
    rng.shuffle(jobs)
    for number, (v, spec, k, position, stored) in enumerate(jobs):
        ds = base_dataset(MR_IMAGE_STORAGE, study_uid=study_uid)
        _mr_common(ds, series_uid, 7, frame_of_reference)
        ds.ImageType = list(spec.image_type)
        ds.InstanceNumber = v * geometry.slices + k + 1
        for keyword, value in (
            ("EchoNumbers", spec.echo_number),
            ("EchoTime", spec.echo_time),
            ("TemporalPositionIdentifier", spec.temporal_position),
            ("TriggerTime", spec.trigger_time),
            ("AcquisitionNumber", spec.acquisition_number),
            ("DiffusionBValue", spec.b_value),
        ):
            if value is not None:
                setattr(ds, keyword, ds_text(value) if keyword in ("EchoTime", "TriggerTime") else value)
        if spec.temporal_position is not None:
            ds.NumberOfTemporalPositions = len(volumes)
        for keyword, value in spec.extra.items():
            setattr(ds, keyword, value)
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [ds_text(p) for p in position]
        ds.PixelSpacing = spacing
        ds.SliceThickness = ds_text(geometry.slice_thickness)
        ds.RescaleSlope = ds_text(spec.slope)
        ds.RescaleIntercept = "0"
        _image_pixel_module(ds, geometry.rows, geometry.columns, signed=False)
        ds.PixelData = _pixel_bytes(stored, signed=False)
        path = write(ds, folder / f"{rng.getrandbits(40):010x}-{number}")
        truths[v].slices.append(
            _truth(path, ds.ImagePositionPatient, iop, spacing, stored, k, ds.RescaleSlope)
        )
    return truths


def write_enhanced_mr_volumes(
    path: Path,
    geometry: Geometry,
    volumes: Sequence[VolumeSpec],
    *,
    seed: int = 0,
    drop: Sequence[tuple[int, int]] = (),
) -> list[SeriesTruth]:
    """Write one Enhanced MR file holding every volume, frames shuffled.

    Each frame's FrameContentSequence gives StackID 1, its InStackPositionNumber
    (slice + 1), its TemporalPositionIndex (when the volume has a temporal
    position) and DimensionIndexValues ``[stack, in-stack position, rank]``, the
    rank of the volume's temporal position, echo time or b-value (else its index);
    echo time, b-value and frame type live in their per-frame macros.
    """
    rng = random.Random(seed)
    ds = base_dataset(ENHANCED_MR_IMAGE_STORAGE)
    series_uid = generate_uid()
    _mr_common(ds, series_uid, 9, generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "MIXED"]
    ds.InstanceNumber = 1
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20240102101500"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    _image_pixel_module(ds, geometry.rows, geometry.columns, signed=False)
    dimension_uid = generate_uid()
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = DicomSequence([organization])
    pointers = [("StackID", "FrameContentSequence"), ("InStackPositionNumber", "FrameContentSequence")]
    if volumes[0].temporal_position is not None:
        pointers.append(("TemporalPositionIndex", "FrameContentSequence"))
    elif volumes[0].echo_time is not None:
        pointers.append(("EffectiveEchoTime", "MREchoSequence"))
    elif volumes[0].b_value is not None:
        pointers.append(("DiffusionBValue", "MRDiffusionSequence"))
    # DimensionIndexValues' third entry: the rank of the volume's value along that dimension.
    by_dimension = {
        "TemporalPositionIndex": [spec.temporal_position for spec in volumes],
        "EffectiveEchoTime": [spec.echo_time for spec in volumes],
        "DiffusionBValue": [spec.b_value for spec in volumes],
    }.get(pointers[-1][0], list(range(len(volumes))))
    if len(set(by_dimension)) < len(volumes):  # e.g. magnitude and field map at one echo time
        by_dimension = list(range(len(volumes)))
    rank = [sorted(set(by_dimension)).index(value) + 1 for value in by_dimension]
    indices = []
    for keyword, group in pointers:
        item = Dataset()
        item.DimensionOrganizationUID = dimension_uid
        item.DimensionIndexPointer = pydicom.tag.Tag(keyword)
        item.FunctionalGroupPointer = pydicom.tag.Tag(group)
        indices.append(item)
    ds.DimensionIndexSequence = DicomSequence(indices)

    orientation = Dataset()
    iop = [ds_text(v) for v in (*geometry.row_direction, *geometry.column_direction)]
    orientation.ImageOrientationPatient = iop
    measures = Dataset()
    spacing = [ds_text(v) for v in geometry.pixel_spacing]
    measures.PixelSpacing = spacing
    measures.SliceThickness = ds_text(geometry.slice_thickness)
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    positions = geometry.positions()
    jobs = [(v, k) for v in range(len(volumes)) for k in range(geometry.slices) if (v, k) not in set(drop)]
    rng.shuffle(jobs)
    truths = [
        SeriesTruth(folder=path.parent, geometry=geometry, series_uid=series_uid, series_number=9)
        for _ in volumes
    ]
    per_frame, frames = [], []
    for v, k in jobs:
        spec = volumes[v]
        stored = ramp(geometry, base=100 + v * 10000)[k]
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        if spec.temporal_position is not None:
            content.TemporalPositionIndex = spec.temporal_position
        content.DimensionIndexValues = [1, k + 1, rank[v]]
        item.FrameContentSequence = DicomSequence([content])
        plane = Dataset()
        plane.ImagePositionPatient = [ds_text(p) for p in positions[k]]
        item.PlanePositionSequence = DicomSequence([plane])
        frame_type = Dataset()
        frame_type.FrameType = list(spec.image_type)
        item.MRImageFrameTypeSequence = DicomSequence([frame_type])
        if spec.echo_time is not None:
            echo = Dataset()
            echo.EffectiveEchoTime = spec.echo_time
            item.MREchoSequence = DicomSequence([echo])
        if spec.b_value is not None:
            diffusion = Dataset()
            diffusion.DiffusionBValue = spec.b_value
            diffusion.DiffusionDirectionality = "ISOTROPIC" if spec.b_value else "NONE"
            item.MRDiffusionSequence = DicomSequence([diffusion])
        transform = Dataset()
        transform.RescaleIntercept = "0"
        transform.RescaleSlope = ds_text(spec.slope)
        transform.RescaleType = "US"
        item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(item)
        frames.append(stored)
        truths[v].slices.append(
            _truth(path, plane.ImagePositionPatient, iop, spacing, stored, k, transform.RescaleSlope)
        )
    ds.NumberOfFrames = len(frames)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = _pixel_bytes(np.stack(frames), signed=False)
    write(ds, path)
    return truths
