"""Images and masks both as DICOM: DICOM SEG objects and mask series, paired in one folder.

The image is the real CT series shipped with medvol (Siemens, JPEG 2000).
Masks are made from each source file's own pixels (HU thresholds), so the
expected label of every voxel is known without medvol: the SEG objects are
written by highdicom (another tool, its own frame order and empty-frame
omission), the mask series by pydicom. medvol must place every frame by
geometry alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medvol
from medvol.data.cases import validate, write_manifest
from medvol.data.dicom_pairs import DicomPairing
from medvol.data.loading import load_files
from medvol.errors import GeometryError
from medvol.io.dicom_seg import load_dicom_seg
from medvol.io.discovery import dicom_case_id
from medvol.volume import Volume

hd = pytest.importorskip(
    "highdicom", reason="DICOM SEG objects are written with highdicom (medvol[dicom-seg])"
)

CT_SAMPLE = Path(medvol.__file__).parent / "samples" / "ct_jpeg2000"
BONE_HU, FAT_HU = 300.0, (-200.0, -50.0)


def expected_label(hu: np.ndarray) -> np.ndarray:
    """Segment 1 bone (HU > 300), segment 2 fat (-200 < HU < -50), else 0."""
    return np.where(hu > BONE_HU, 1, np.where((hu > FAT_HU[0]) & (hu < FAT_HU[1]), 2, 0))


def copy_series(folder: Path, study_uid: str, description: str, offset_hu: float = 0.0) -> str:
    """Copy the CT sample into ``folder`` as a new series of ``study_uid``; returns its series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for number, path in enumerate(sorted(CT_SAMPLE.iterdir())):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = study_uid, series_uid, description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if offset_hu:
            shifted = (ds.pixel_array.astype(np.int32) + int(offset_hu)).astype(ds.pixel_array.dtype)
            ds.set_pixel_data(shifted, "MONOCHROME2", int(ds.BitsStored))
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"IM{number:04d}.dcm", enforce_file_format=True)
    return series_uid


def dicom_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file())


def hounsfield(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def write_seg(series: Path, out: Path, overlap: bool = False) -> Path:
    """A BINARY DICOM SEG of ``series`` by highdicom: bone and fat (or two overlapping segments)."""
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(path) for path in sorted(dicom_files(series), reverse=True)]
    for ds in sources:  # the shipped sample keeps its SOP UIDs in the file meta only
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
    hu = np.stack([hounsfield(ds) for ds in sources])
    second = hu > 0 if overlap else (hu > FAT_HU[0]) & (hu < FAT_HU[1])
    planes = np.stack([hu > BONE_HU, second], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="threshold", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in ((1, "bone"), (2, "fat"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=planes,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="threshold",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(out)
    return out


def write_mask_series(
    series: Path, folder: Path, description: str = "MaskTumor", shift_mm: float = 0.0
) -> str:
    """A mask series (uint16 images of the thresholds) on ``series``' slices, as some archives store masks."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for path in dicom_files(series):
        ds = pydicom.dcmread(path)
        mask = expected_label(hounsfield(ds)).astype(np.uint16)
        ds.set_pixel_data(mask, "MONOCHROME2", 16)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = series_uid, description, 900
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if shift_mm:
            position = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [position[0] + shift_mm, *position[1:]]
        ds.save_as(folder / f"mask_{path.name}", enforce_file_format=True)
    return series_uid


@pytest.fixture(scope="module")
def ct() -> Volume:
    return medvol.load(CT_SAMPLE)


def test_seg_frames_land_on_the_voxels_of_their_source_slices(ct: Volume, tmp_path: Path) -> None:
    seg = write_seg(CT_SAMPLE, tmp_path / "seg.dcm")
    label = load_dicom_seg(seg, ct)
    assert label.shape == ct.shape and np.array_equal(label.affine, ct.affine)
    np.testing.assert_array_equal(label.array[0], expected_label(ct.array[0]))
    assert label.meta["segments"] == {1: "bone", 2: "fat"}
    assert (label.array == 1).sum() > 1000 and (label.array == 2).sum() > 1000


def test_seg_on_another_grid_is_refused_naming_the_frame(ct: Volume, tmp_path: Path) -> None:
    seg = write_seg(CT_SAMPLE, tmp_path / "seg.dcm")
    shifted = ct.affine.copy()
    shifted[:3, 3] += shifted[:3, 0] * 0.5  # half a voxel along x
    with pytest.raises(GeometryError, match=r"frame \d+ does not lie on the image's voxel grid"):
        load_dicom_seg(seg, Volume(ct.array, shifted))
    with pytest.raises(GeometryError, match="outside the image"):
        load_dicom_seg(seg, Volume(ct.array[:, :, :, :10], ct.affine))


def test_overlapping_segments_are_refused(ct: Volume, tmp_path: Path) -> None:
    seg = write_seg(CT_SAMPLE, tmp_path / "seg.dcm", overlap=True)
    with pytest.raises(GeometryError, match=r"segments 1 and 2 overlap \(\d+ voxel"):
        load_dicom_seg(seg, ct)


def test_a_seg_beside_its_series_is_the_label_of_that_series(ct: Volume, tmp_path: Path) -> None:
    patient = tmp_path / "data" / "patient1"
    series_uid = copy_series(patient / "ct", generate_uid(), "CT Body 3.0")
    (patient / "seg").mkdir()
    seg = write_seg(patient / "ct", patient / "seg" / "seg.dcm")
    report = validate(tmp_path / "data")
    assert [f for f in report.findings if f.severity == "error"] == []
    (case,) = report.usable
    assert case.case_id == dicom_case_id(series_uid) and case.label == seg and case.label_series is None
    _, label = load_files(case.images, case.label, case.series, case.label_series)
    assert label is not None
    np.testing.assert_array_equal(label.array[0], expected_label(ct.array[0]))


def test_a_seg_without_series_references_pairs_by_frame_of_reference(tmp_path: Path) -> None:
    """The shipped sample has blank study and series UIDs: its frame of reference pairs the SEG."""
    folder = tmp_path / "exam"
    shutil.copytree(CT_SAMPLE, folder)
    write_seg(CT_SAMPLE, folder / "seg.dcm")
    report = validate(folder)
    assert len(report.usable) == 1 and report.usable[0].label == folder / "seg.dcm"


def test_a_mask_series_pairs_with_the_series_on_its_grid(ct: Volume, tmp_path: Path) -> None:
    study = generate_uid()
    ct_uid = copy_series(tmp_path / "exam" / "ct", study, "CT Body 3.0")
    write_mask_series(tmp_path / "exam" / "ct", tmp_path / "exam" / "mask", "MaskTumor")
    report = validate(tmp_path / "exam")
    assert [f for f in report.findings if f.severity == "error"] == []
    (case,) = report.usable
    assert case.case_id == dicom_case_id(ct_uid) and case.label == tmp_path / "exam" / "mask"
    _, label = load_files(case.images, case.label, case.series, case.label_series)
    assert label is not None
    np.testing.assert_array_equal(label.array[0], expected_label(ct.array[0]))


def test_several_series_on_the_mask_grid_need_image_series(ct: Volume, tmp_path: Path) -> None:
    """Image, mask and a second sequence in ONE folder (as an exam export): ambiguous until told."""
    exam = tmp_path / "exam"
    study = generate_uid()
    ct_uid = copy_series(exam / "staging", study, "CT Body 3.0")
    copy_series(exam / "staging2", study, "CT soft tissue", offset_hu=10)
    write_mask_series(exam / "staging", exam / "staging3", "MaskTumor")
    for folder in ("staging", "staging2", "staging3"):  # one folder holding all three series
        for path in (exam / folder).iterdir():
            path.rename(exam / f"{folder}_{path.name}")
        (exam / folder).rmdir()
    report = validate(exam)
    assert not report.usable
    (ambiguous,) = [f for f in report.findings if f.kind == "ambiguous_pair"]
    assert "2 image series qualify" in ambiguous.message and "--image-series" in ambiguous.message

    report = validate(exam, dicom_pairing=DicomPairing(image_series="^CT Body"))
    (case,) = report.usable
    assert case.case_id == dicom_case_id(ct_uid) and case.label == exam and case.label_series
    assert [f.kind for f in report.findings if f.severity == "warning"] == ["series_left_out"]
    manifest = write_manifest(report, tmp_path / "sub" / "cases.csv")
    (again,) = validate(manifest).usable
    assert (again.label_series, again.series) == (case.label_series, case.series)
    _, label = load_files(again.images, again.label, again.series, again.label_series)
    assert label is not None
    np.testing.assert_array_equal(label.array[0], expected_label(ct.array[0]))


def test_a_mask_series_off_every_grid_is_reported(tmp_path: Path) -> None:
    study = generate_uid()
    copy_series(tmp_path / "exam" / "ct", study, "CT Body 3.0")
    write_mask_series(tmp_path / "exam" / "ct", tmp_path / "exam" / "mask", "tumour mask", shift_mm=0.4)
    report = validate(tmp_path / "exam")
    (finding,) = [f for f in report.findings if f.kind == "label_without_image"]
    assert finding.path == str(tmp_path / "exam" / "mask") and "no image series" in finding.message


def test_index_cli_pairs_and_a_bad_pattern_is_one_line(tmp_path: Path) -> None:
    exam = tmp_path / "exam"
    copy_series(exam / "ct", generate_uid(), "CT Body 3.0")
    write_mask_series(exam / "ct", exam / "roi", "Lesion contour")
    run = [sys.executable, "-m", "medvol", "index", str(exam), "--out", str(tmp_path / "cases.csv")]
    default = subprocess.run(run, capture_output=True, text=True)
    assert default.returncode == 1 and "0 usable pairs" in default.stdout  # 'contour' is no mask name
    chosen = subprocess.run([*run, "--mask-series", "contour", "--json"], capture_output=True, text=True)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert json.loads(chosen.stdout)["usable_pairs"] == 1
    bad = subprocess.run([*run, "--mask-series", "("], capture_output=True, text=True)
    assert bad.returncode == 1 and "--mask-series '(' is not a regular expression" in bad.stderr
    assert "unexpected" not in bad.stderr


def test_a_truncated_seg_is_reported_not_crashed(tmp_path: Path) -> None:
    exam = tmp_path / "exam"
    copy_series(exam / "ct", generate_uid(), "CT Body 3.0")
    seg = write_seg(exam / "ct", exam / "seg.dcm")
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size - 5000])
    report = validate(exam)
    assert not report.usable
    assert any(f.path == str(seg) for f in report.findings if f.severity == "error")


def test_info_on_a_seg_says_what_it_is(tmp_path: Path) -> None:
    seg = write_seg(CT_SAMPLE, tmp_path / "seg.dcm")
    result = subprocess.run(
        [sys.executable, "-m", "medvol", "info", str(seg)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "seg.dcm" in result.stderr and "holds the label map of an image series" in result.stderr
