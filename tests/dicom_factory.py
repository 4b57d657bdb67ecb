"""Synthetic DICOM series with known geometry and pixels, for loader tests.

Every file is a valid DICOM Part-10 file (128-byte preamble, file meta,
Explicit VR Little Endian) of a CT image (or an Enhanced CT multi-frame image)
that carries fake patient identifiers, so tests can check they never leak.

Pixels are a ramp: the stored value of pixel ``(row r, column c)`` of the
slice acquired ``k``-th is ``base + k * rows * columns + r * columns + c``, so
every voxel of a series is distinguishable. The ground truth each writer
returns is computed from the values *as written* (decimal strings parsed
back), never from medvol.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-998877"
PATIENT_BIRTH_DATE = "19700101"
ACCESSION_NUMBER = "ACC-123456"
#: Strings that must never appear in anything medvol prints or writes.
IDENTIFIERS = ("Doe", "Jane", PATIENT_ID, PATIENT_BIRTH_DATE, ACCESSION_NUMBER)

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def ds_text(value: float) -> str:
    """A number as a valid DICOM decimal string (at most 16 characters)."""
    return str(format_number_as_ds(float(value)))


def ds_float(value: float) -> float:
    """The float a reader gets back after ``value`` is written as a DS."""
    return float(ds_text(value))


def rotation(x_deg: float, y_deg: float, z_deg: float) -> np.ndarray:
    """A 3×3 rotation matrix: about x, then y, then z (degrees)."""
    a, b, c = np.radians([x_deg, y_deg, z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Geometry:
    """Where a synthetic series lies (all vectors LPS, mm).

    Attributes:
        rows, columns, slices: matrix size and number of slices.
        row_direction: ImageOrientationPatient[0:3], the direction of
            increasing column index.
        column_direction: ImageOrientationPatient[3:6], the direction of
            increasing row index.
        pixel_spacing: DICOM PixelSpacing, (between rows, between columns).
        origin: ImagePositionPatient of the first acquired slice.
        step: displacement from one acquired slice to the next; ``None`` means
            ``slice_spacing`` along the normal. A step off the normal is a
            gantry tilt; a step against the normal is a reversed acquisition.
        slice_spacing: distance between slices when ``step`` is ``None``.
        slice_thickness: the SliceThickness written (never used for spacing).
    """

    rows: int = 12
    columns: int = 16
    slices: int = 8
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (0.8, 0.7)
    origin: tuple[float, float, float] = (-20.5, -31.25, 40.0)
    step: tuple[float, float, float] | None = None
    slice_spacing: float = 2.5
    slice_thickness: float = 3.0

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def step_vector(self) -> np.ndarray:
        if self.step is not None:
            return np.asarray(self.step, dtype=np.float64)
        return self.normal * self.slice_spacing

    def positions(self) -> np.ndarray:
        """ImagePositionPatient of each acquired slice, ``(slices, 3)``."""
        return np.asarray(self.origin) + np.outer(np.arange(self.slices), self.step_vector)

    def oblique(self, x_deg: float, y_deg: float, z_deg: float) -> Geometry:
        """This geometry with its orientation (and default step) rotated."""
        matrix = rotation(x_deg, y_deg, z_deg)
        row = matrix @ np.asarray(self.row_direction)
        column = matrix @ np.asarray(self.column_direction)
        step = None if self.step is None else tuple(matrix @ np.asarray(self.step))
        return replace(self, row_direction=tuple(row), column_direction=tuple(column), step=step)


def tilted(geometry: Geometry, tilt_deg: float) -> Geometry:
    """A gantry tilt: the slice step turned by ``tilt_deg`` toward the column direction."""
    angle = np.radians(tilt_deg)
    normal = geometry.normal
    column = np.asarray(geometry.column_direction)
    step = geometry.slice_spacing * (np.cos(angle) * normal + np.sin(angle) * column)
    return replace(geometry, step=(float(step[0]), float(step[1]), float(step[2])))


@dataclass
class SliceTruth:
    """One written slice (or frame) as a reader should see it."""

    index: int  # acquisition order: InstanceNumber - 1 (in-stack position - 1 for a frame)
    path: Path
    position: np.ndarray  # ImagePositionPatient as written, LPS
    row_direction: np.ndarray  # as written
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]  # as written
    stored: np.ndarray  # (rows, columns) stored values
    slope: float
    intercept: float

    @property
    def values(self) -> np.ndarray:
        """Rescaled values, ``(rows, columns)``, float64."""
        return self.stored.astype(np.float64) * self.slope + self.intercept

    def world_ras(self) -> np.ndarray:
        """RAS world position of every pixel, ``(rows, columns, 3)``."""
        rows, columns = self.stored.shape
        r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        lps = (
            self.position
            + c[..., None] * self.pixel_spacing[1] * self.row_direction
            + r[..., None] * self.pixel_spacing[0] * self.column_direction
        )
        return lps * LPS_TO_RAS


@dataclass
class SeriesTruth:
    """A written series: its files and every pixel's place and value."""

    folder: Path
    geometry: Geometry
    series_uid: str
    series_number: int
    slices: list[SliceTruth] = field(default_factory=list)

    def acquired(self, index: int) -> SliceTruth:
        """The slice acquired ``index``-th (the one with InstanceNumber ``index + 1``)."""
        return next(s for s in self.slices if s.index == index)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pixel's RAS world position ``(N, 3)`` and rescaled value ``(N,)``."""
        world = np.concatenate([s.world_ras().reshape(-1, 3) for s in self.slices])
        values = np.concatenate([s.values.reshape(-1) for s in self.slices])
        return world, values


def ramp(geometry: Geometry, base: int = 100) -> np.ndarray:
    """Stored values ``(slices, rows, columns)``, all different."""
    count = geometry.slices * geometry.rows * geometry.columns
    return (base + np.arange(count)).reshape(geometry.slices, geometry.rows, geometry.columns)


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def base_dataset(sop_class: str, *, study_uid: str | None = None) -> Dataset:
    """A dataset with file meta, SOP common, patient and study modules."""
    sop_instance = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ACCESSION_NUMBER
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "F"
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write a Part-10 file (preamble, file meta, Explicit VR Little Endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _image_pixel_module(ds: Dataset, rows: int, columns: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0


def _pixel_bytes(stored: np.ndarray, signed: bool) -> bytes:
    dtype = np.dtype("<i2" if signed else "<u2")
    info = np.iinfo(dtype)
    assert stored.min() >= info.min and stored.max() <= info.max, "ramp does not fit the pixel type"
    return np.ascontiguousarray(stored, dtype=dtype).tobytes()


def _file_names(count: int, rng: random.Random, shuffle: bool) -> list[str]:
    if not shuffle:
        return [f"slice{index:03d}.dcm" for index in range(count)]
    # Random names whose sort order has nothing to do with slice order.
    names = [f"{rng.getrandbits(40):010x}" for _ in range(count)]
    return names


def write_series(
    folder: Path,
    geometry: Geometry,
    *,
    series_number: int = 1,
    series_uid: str | None = None,
    study_uid: str | None = None,
    description: str = "synthetic CT",
    slopes: Sequence[float] | float = 1.0,
    intercepts: Sequence[float] | float = 0.0,
    signed: bool = False,
    base: int = 100,
    shuffle: bool = True,
    seed: int = 0,
    drop: Sequence[int] = (),
    duplicate: Sequence[tuple[int, int]] = (),
    positions: np.ndarray | None = None,
) -> SeriesTruth:
    """Write one single-frame CT series.

    Args:
        folder: where the files go (created).
        geometry: orientation, positions and matrix.
        slopes, intercepts: RescaleSlope/Intercept, one for all slices or one
            per acquired slice.
        signed: PixelRepresentation 1 (int16) instead of 0 (uint16).
        base: first value of the ramp.
        shuffle: random file names, written in random order.
        seed: for the shuffling.
        drop: acquired slice indices not written (a missing slice).
        duplicate: ``(k, j)`` pairs: slice ``k`` is written at slice ``j``'s
            position (two slices share a position).
        positions: explicit ImagePositionPatient per acquired slice
            (``(slices, 3)``), e.g. for uneven spacing.
    """
    rng = random.Random(seed)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference = generate_uid()
    count = geometry.slices
    slope_list = [float(slopes)] * count if isinstance(slopes, int | float) else list(slopes)
    intercept_list = [float(intercepts)] * count if isinstance(intercepts, int | float) else list(intercepts)
    assert len(slope_list) == count and len(intercept_list) == count
    all_positions = geometry.positions() if positions is None else np.array(positions, dtype=np.float64)
    for k, j in duplicate:
        all_positions[k] = all_positions[j]
    stored = ramp(geometry, base)
    indices = [k for k in range(count) if k not in set(drop)]
    names = _file_names(len(indices), rng, shuffle)
    order = list(range(len(indices)))
    if shuffle:
        rng.shuffle(order)
    truth = SeriesTruth(folder=folder, geometry=geometry, series_uid=series_uid, series_number=series_number)
    iop = [ds_text(v) for v in (*geometry.row_direction, *geometry.column_direction)]
    spacing = [ds_text(v) for v in geometry.pixel_spacing]
    for write_index in order:
        k = indices[write_index]
        ds = base_dataset(CT_IMAGE_STORAGE, study_uid=study_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.Manufacturer = "SYNTHETIC"
        ds.PatientPosition = "HFS"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = frame_of_reference
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [ds_text(v) for v in all_positions[k]]
        ds.PixelSpacing = spacing
        ds.SliceThickness = ds_text(geometry.slice_thickness)
        ds.RescaleSlope = ds_text(slope_list[k])
        ds.RescaleIntercept = ds_text(intercept_list[k])
        ds.RescaleType = "HU"
        _image_pixel_module(ds, geometry.rows, geometry.columns, signed)
        ds.PixelData = _pixel_bytes(stored[k], signed)
        path = write(ds, folder / names[write_index])
        truth.slices.append(
            SliceTruth(
                index=k,
                path=path,
                position=np.array([float(v) for v in ds.ImagePositionPatient]),
                row_direction=np.array([float(v) for v in ds.ImageOrientationPatient[:3]]),
                column_direction=np.array([float(v) for v in ds.ImageOrientationPatient[3:]]),
                pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                stored=stored[k].copy(),
                slope=float(ds.RescaleSlope),
                intercept=float(ds.RescaleIntercept),
            )
        )
    truth.slices.sort(key=lambda s: str(s.path))
    return truth


def write_enhanced(
    path: Path,
    geometry: Geometry,
    *,
    slopes: Sequence[float] | float = 1.0,
    intercepts: Sequence[float] | float = 0.0,
    base: int = 100,
    seed: int = 0,
) -> SeriesTruth:
    """Write an Enhanced CT multi-frame file whose frames are stored in shuffled order.

    Geometry lives in the functional groups: orientation and pixel spacing in
    the shared groups, position and rescale per frame. ``FrameContentSequence``
    gives each frame its in-stack position (the acquisition index + 1), so
    readers that sort by dimension indices can do so.
    """
    rng = random.Random(seed)
    count = geometry.slices
    slope_list = [float(slopes)] * count if isinstance(slopes, int | float) else list(slopes)
    intercept_list = [float(intercepts)] * count if isinstance(intercepts, int | float) else list(intercepts)
    stored = ramp(geometry, base)
    positions = geometry.positions()
    storage_order = list(range(count))
    rng.shuffle(storage_order)
    assert storage_order != sorted(storage_order)

    ds = base_dataset(ENHANCED_CT_IMAGE_STORAGE)
    series_uid = generate_uid()
    dimension_uid = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 5
    ds.SeriesDescription = "synthetic enhanced CT"
    ds.FrameOfReferenceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20240102101500"
    ds.NumberOfFrames = count
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    _image_pixel_module(ds, geometry.rows, geometry.columns, signed=False)

    dimension_organization = Dataset()
    dimension_organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = DicomSequence([dimension_organization])
    stack_id = Dataset()
    stack_id.DimensionOrganizationUID = dimension_uid
    stack_id.DimensionIndexPointer = pydicom.tag.Tag("StackID")
    stack_id.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    in_stack = Dataset()
    in_stack.DimensionOrganizationUID = dimension_uid
    in_stack.DimensionIndexPointer = pydicom.tag.Tag("InStackPositionNumber")
    in_stack.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    ds.DimensionIndexSequence = DicomSequence([stack_id, in_stack])

    orientation = Dataset()
    orientation.ImageOrientationPatient = [
        ds_text(v) for v in (*geometry.row_direction, *geometry.column_direction)
    ]
    measures = Dataset()
    measures.PixelSpacing = [ds_text(v) for v in geometry.pixel_spacing]
    measures.SliceThickness = ds_text(geometry.slice_thickness)
    measures.SpacingBetweenSlices = ds_text(float(np.linalg.norm(geometry.step_vector)))
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    truth = SeriesTruth(folder=path.parent, geometry=geometry, series_uid=series_uid, series_number=5)
    row_direction = np.array([float(v) for v in orientation.ImageOrientationPatient[:3]])
    column_direction = np.array([float(v) for v in orientation.ImageOrientationPatient[3:]])
    pixel_spacing = (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1]))
    per_frame = []
    frames = []
    for k in storage_order:
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1]
        content.FrameAcquisitionNumber = 1
        item.FrameContentSequence = DicomSequence([content])
        plane = Dataset()
        plane.ImagePositionPatient = [ds_text(v) for v in positions[k]]
        item.PlanePositionSequence = DicomSequence([plane])
        transform = Dataset()
        transform.RescaleIntercept = ds_text(intercept_list[k])
        transform.RescaleSlope = ds_text(slope_list[k])
        transform.RescaleType = "HU"
        item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(item)
        frames.append(stored[k])
        truth.slices.append(
            SliceTruth(
                index=k,
                path=path,
                position=np.array([float(v) for v in plane.ImagePositionPatient]),
                row_direction=row_direction,
                column_direction=column_direction,
                pixel_spacing=pixel_spacing,
                stored=stored[k].copy(),
                slope=float(transform.RescaleSlope),
                intercept=float(transform.RescaleIntercept),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = _pixel_bytes(np.stack(frames), signed=False)
    write(ds, path)
    return truth


def write_text_sr(path: Path) -> Path:
    """A Basic Text SR document (no image) with the same patient."""
    ds = base_dataset(BASIC_TEXT_SR)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    return write(ds, path)


def write_dicomdir_like(path: Path) -> Path:
    """A Media Storage Directory object (what a file named DICOMDIR holds)."""
    ds = base_dataset(MEDIA_STORAGE_DIRECTORY)
    del ds.SOPClassUID, ds.SOPInstanceUID
    ds.FileSetID = "SYNTH"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    return write(ds, path)
