"""Conformance with real scans and their reference conversions (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medvol
from tests.geometry_oracle import index_map, resample_by_index

CT_SERIES = "dicom/ct-jpeg2000-series"
CT_REFERENCE = "dicom/ct-jpeg2000-series-reference/example_ct_dicom.nii.gz"


@pytest.fixture(scope="module")
def ct_volume(shared_data: Path) -> medvol.Volume:
    return medvol.load(shared_data / CT_SERIES)


def test_ct_series_spacing_and_metadata(ct_volume: medvol.Volume) -> None:
    assert ct_volume.shape == (512, 512, 20)
    np.testing.assert_allclose(ct_volume.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    assert ct_volume.meta["modality"] == "CT"
    assert ct_volume.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    # Spacing comes from positions, not the 3 mm SliceThickness.
    assert ct_volume.meta["slice_step_from"] == "ImagePositionPatient"


def test_ct_series_matches_dcm2niix_voxel_for_voxel(ct_volume: medvol.Volume, shared_data: Path) -> None:
    reference = nib.load(shared_data / CT_REFERENCE)
    mapping = index_map(ct_volume.affine, reference.affine, tolerance_mm=1e-3)
    ours = resample_by_index(ct_volume.array[0], mapping, reference.shape)
    expected = np.asanyarray(reference.dataobj)
    # Rescale applied: HU, air at -1024.
    np.testing.assert_array_equal(ours, expected)
    assert ours.min() == -1024


def test_ct_world_coordinates_match_dcm2niix(ct_volume: medvol.Volume, shared_data: Path) -> None:
    reference = nib.load(shared_data / CT_REFERENCE)
    corners = np.array(np.meshgrid([0, 511], [0, 511], [0, 19], indexing="ij")).reshape(3, -1).T
    world_reference = nib.affines.apply_affine(reference.affine, corners)
    mapping = index_map(ct_volume.affine, reference.affine, tolerance_mm=1e-3)
    ours_index = corners @ mapping[:3, :3].T + mapping[:3, 3]
    np.testing.assert_allclose(ct_volume.world_coordinates(ours_index), world_reference, atol=1e-3)


@pytest.mark.parametrize("number", range(1, 10))
def test_transfer_syntaxes_decode_to_dcm2niix_pixels(shared_data: Path, number: int) -> None:
    folder = shared_data / "dicom/transfer-syntaxes"
    volume = medvol.load(folder / "In" / f"{number}.dcm")
    reference = nib.load(folder / "Ref/1.nii")
    mapping = index_map(volume.affine, reference.affine, tolerance_mm=1e-3)
    ours = resample_by_index(volume.array[0], mapping, reference.shape)
    np.testing.assert_array_equal(ours, np.asanyarray(reference.dataobj))
    assert volume.meta["mosaic"] is True


def test_transfer_syntaxes_identical_to_each_other(shared_data: Path) -> None:
    folder = shared_data / "dicom/transfer-syntaxes/In"
    volumes = [medvol.load(folder / f"{n}.dcm") for n in range(1, 10)]
    for volume in volumes[1:]:
        np.testing.assert_array_equal(volume.array, volumes[0].array)
        np.testing.assert_allclose(volume.affine, volumes[0].affine, atol=1e-6)


def test_folder_of_nine_files_lists_nine_series(shared_data: Path) -> None:
    with pytest.raises(medvol.MedvolError, match="9 image series found"):
        medvol.load(shared_data / "dicom/transfer-syntaxes/In")
    chosen = medvol.load(shared_data / "dicom/transfer-syntaxes/In", series=4)
    assert chosen.meta["transfer_syntax"] == "1.2.840.10008.1.2.5"  # RLE


@pytest.mark.parametrize(
    ("name", "codes"), [("example_ct_sm.nii.gz", "RAS"), ("example_mr_sm.nii.gz", "LPS")]
)
def test_nifti_lands_in_nibabel_world(shared_data: Path, name: str, codes: str) -> None:
    path = shared_data / "nifti" / name
    volume = medvol.load(path)
    image = nib.load(path)
    assert volume.orientation == codes
    np.testing.assert_array_equal(volume.affine, image.affine)
    np.testing.assert_array_equal(volume.array[0], np.asanyarray(image.dataobj))
    index = np.array([[0, 0, 0], [10, 20, 5], [s - 1 for s in image.shape]])
    np.testing.assert_allclose(
        volume.world_coordinates(index), nib.affines.apply_affine(image.affine, index), atol=1e-9
    )


def test_ct_and_mr_nifti_share_one_world_convention(shared_data: Path) -> None:
    """A point's RAS coordinate is the same however the file stores its axes."""
    mr = medvol.load(shared_data / "nifti/example_mr_sm.nii.gz")
    as_ras = nib.as_closest_canonical(nib.load(shared_data / "nifti/example_mr_sm.nii.gz"))
    assert nib.aff2axcodes(as_ras.affine) == ("R", "A", "S")
    # Voxel (0,0,0) of the LPS file is the last voxel along x and y of its RAS twin.
    last = np.array([[as_ras.shape[0] - 1, as_ras.shape[1] - 1, 0]])
    np.testing.assert_allclose(
        mr.world_coordinates(np.zeros((1, 3))), nib.affines.apply_affine(as_ras.affine, last), atol=1e-4
    )
    np.testing.assert_array_equal(mr.array[0, 0, 0, 0], np.asanyarray(as_ras.dataobj)[-1, -1, 0])


@pytest.mark.parametrize(
    "relative",
    [
        "nifti/example_ct_sm.nii.gz",
        "nifti/example_seg_mr.nii.gz",
        "msd-hippocampus/images/hippocampus_001.nii.gz",
        "msd-hippocampus/labels/hippocampus_001.nii.gz",
    ],
)
def test_nifti_load_save_load_is_lossless(shared_data: Path, tmp_path: Path, relative: str) -> None:
    first = medvol.load(shared_data / relative)
    medvol.save(first, tmp_path / "copy.nii.gz")
    second = medvol.load(tmp_path / "copy.nii.gz")
    assert second.array.dtype == first.array.dtype
    np.testing.assert_array_equal(second.array, first.array)
    np.testing.assert_array_equal(second.affine, first.affine)


def test_dicom_to_nifti_conversion_keeps_geometry(
    ct_volume: medvol.Volume, shared_data: Path, tmp_path: Path
) -> None:
    medvol.save(ct_volume, tmp_path / "ct.nii.gz")
    converted = medvol.load(tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(converted.affine, ct_volume.affine, atol=1e-4)
    np.testing.assert_array_equal(converted.array, ct_volume.array)
    segmentation = nib.load(shared_data / "dicom/ct-jpeg2000-series-reference/segmentation.nii.gz")
    index_map(converted.affine, segmentation.affine, tolerance_mm=1e-3)  # same grid


def test_nrrd_and_mha_round_trip_keeps_world(ct_volume: medvol.Volume, tmp_path: Path) -> None:
    small = medvol.Volume(ct_volume.array[:, ::8, ::8, :], ct_volume.affine @ np.diag([8, 8, 1, 1]))
    for suffix in (".nrrd", ".mha"):
        medvol.save(small, tmp_path / f"ct{suffix}")
        again = medvol.load(tmp_path / f"ct{suffix}")
        np.testing.assert_allclose(again.affine, small.affine, atol=1e-6)
        np.testing.assert_array_equal(again.array, small.array)
