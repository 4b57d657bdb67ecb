"""A researcher's own DICOM data, first try: rounding, whole folders, file names, copies.

Each test stands for a defect a new user met on public data: positions with
rounding-level jitter taken for gantry tilt, one bad series stopping a whole
folder, errors about one file naming its folder, and copies of a series in
sibling folders merged into one broken series.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import medvol
from medvol.errors import SeriesError
from medvol.io.describe import describe
from medvol.io.dicom import TILT_TOLERANCE_DEG
from tests.dicom_factory import Geometry, SeriesTruth, tilted, write_enhanced, write_series
from tests.test_dicom_synthetic import (
    assert_matches_truth,
    assert_same_voxels,
    dcm2niix_points,
    volume_points,
)

# Positions written to 3 decimals after a 0.0008 degree drift: what older scanners' headers hold.
ROUNDED = tilted(Geometry(slices=20), 0.0008)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvol", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def rounded_series(tmp_path_factory: pytest.TempPathFactory) -> SeriesTruth:
    folder = tmp_path_factory.mktemp("rounded") / "series"
    return write_series(folder, ROUNDED, positions=np.round(ROUNDED.positions(), 3), seed=11)


# --- 1. rounding is not gantry tilt ---------------------------------------------


def test_rounding_jitter_gives_an_orthogonal_affine_and_records_the_residual(
    rounded_series: SeriesTruth,
) -> None:
    volume = medvol.load(rounded_series.folder)
    assert "gantry_tilt_deg" not in volume.meta
    assert not medvol.io.geometry.is_sheared(volume.affine)
    residual = volume.meta["slice_position_residual_mm"]
    assert 0 < residual < 0.002
    assert 0 < volume.meta["slice_direction_residual_deg"] < TILT_TOLERANCE_DEG
    assert describe(volume)["slice_position_residual_mm"] == residual  # `medvol info` shows it
    # Every voxel within the recorded residual of where the headers put it.
    assert_same_voxels(*volume_points(volume), *rounded_series.points(), tolerance_mm=residual + 1e-6)


def test_rounding_jitter_converts_like_dcm2niix(rounded_series: SeriesTruth, tmp_path: Path) -> None:
    result = run_cli("convert", rounded_series.folder, tmp_path / "ct.nii.gz")
    assert result.returncode == 0, result.stderr
    header = nib.load(tmp_path / "ct.nii.gz").header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    converted = medvol.load(tmp_path / "ct.nii.gz")
    assert_same_voxels(
        *volume_points(converted), *dcm2niix_points(rounded_series.folder, tmp_path / "dcm2niix")
    )
    for suffix in (".nrrd", ".mha"):
        result = run_cli("convert", rounded_series.folder, tmp_path / f"ct{suffix}")
        assert result.returncode == 0, result.stderr
        again = medvol.load(tmp_path / f"ct{suffix}")
        np.testing.assert_allclose(again.affine, converted.affine, atol=1e-4)
        np.testing.assert_array_equal(again.array, converted.array)


def test_info_shows_the_residual(rounded_series: SeriesTruth) -> None:
    result = run_cli("info", rounded_series.folder)
    assert result.returncode == 0, result.stderr
    assert "slice_position_residual_mm" in result.stdout
    assert "gantry_tilt_deg" not in result.stdout


@pytest.mark.parametrize("tilt_deg", [0.05, 2.0])
def test_a_real_tilt_above_the_tolerance_is_still_a_tilt(tmp_path: Path, tilt_deg: float) -> None:
    assert tilt_deg > TILT_TOLERANCE_DEG
    truth = write_series(tmp_path / "tilt", tilted(Geometry(slices=20), tilt_deg), seed=12)
    volume = medvol.load(truth.folder)
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(tilt_deg, abs=1e-3)
    assert volume.meta["sheared_affine"] is True
    assert "slice_position_residual_mm" not in volume.meta
    assert_matches_truth(volume, truth)
    with pytest.raises(medvol.MedvolError, match="sheared"):
        medvol.save(volume, tmp_path / "tilt.nrrd")


# --- 3. errors about one file name that file -----------------------------------------


def test_error_in_a_multiframe_file_names_the_file(tmp_path: Path) -> None:
    truth = write_enhanced(tmp_path / "study" / "volume.dcm", Geometry())
    path = truth.slices[0].path
    dataset = pydicom.dcmread(path)
    frames = dataset.PerFrameFunctionalGroupsSequence
    frames[1].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[0].PlanePositionSequence[0].ImagePositionPatient
    )
    dataset.save_as(path)
    with pytest.raises(SeriesError) as caught:
        medvol.load(path)
    assert caught.value.path == path
    assert "share a position" in str(caught.value) and "[frame" in str(caught.value)
    result = run_cli("info", path)
    assert result.returncode == 1
    assert f"{path}:" in result.stderr, result.stderr
