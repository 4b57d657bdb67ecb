"""A researcher's own DICOM data, first try: rounding, whole folders, file names, copies.

Each test stands for a defect a new user met on public data: positions with
rounding-level jitter taken for gantry tilt, one bad series stopping a whole
folder, errors about one file naming its folder, and copies of a series in
sibling folders merged into one broken series.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import medvol
from medvol.data.cases import discover_dicom
from medvol.errors import SeriesError
from medvol.io import SomeSeriesFailedError
from medvol.io.describe import describe
from medvol.io.dicom import TILT_TOLERANCE_DEG, scan_folder
from medvol.io.discovery import dicom_case_id
from medvol.prediction.discovery import find_scans
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


def test_orientation_rounded_to_five_decimals_is_not_shear(tmp_path: Path) -> None:
    oblique = Geometry().oblique(10.0, -7.0, 23.0)
    rounded = replace(
        oblique,
        row_direction=tuple(np.round(oblique.row_direction, 5)),
        column_direction=tuple(np.round(oblique.column_direction, 5)),
    )
    truth = write_series(tmp_path / "series", rounded, seed=13)
    volume = medvol.load(truth.folder)
    assert not medvol.io.geometry.is_sheared(volume.affine)
    assert 0 < volume.meta["orientation_residual_deg"] < TILT_TOLERANCE_DEG
    assert_matches_truth(volume, truth)  # within 0.001 mm of where the headers put each voxel
    assert_same_voxels(*volume_points(volume), *dcm2niix_points(truth.folder, tmp_path / "dcm2niix"))
    medvol.save(volume, tmp_path / "ct.nrrd")
    np.testing.assert_allclose(medvol.load(tmp_path / "ct.nrrd").affine, volume.affine, atol=1e-6)


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
    # The frames by number, the file once (not "volume.dcm and volume.dcm").
    assert "frames 1 and 2 share a position" in str(caught.value), caught.value
    assert str(caught.value).count("volume.dcm") == 1, caught.value
    result = run_cli("info", path)
    assert result.returncode == 1
    assert f"{path}:" in result.stderr, result.stderr


def test_a_volume_in_one_file_is_described_by_its_file(tmp_path: Path) -> None:
    first = write_enhanced(tmp_path / "study" / "first.dcm", Geometry())
    second = write_enhanced(tmp_path / "study" / "second.dcm", Geometry(), base=3000)
    paths = sorted(describe(volume)["path"] for volume in medvol.load_all(tmp_path / "study"))
    assert paths == sorted(str(truth.slices[0].path) for truth in (first, second))


# --- 2. one bad series does not stop a folder -------------------------------------------


@pytest.fixture()
def mixed_study(tmp_path: Path) -> dict[str, Path | SeriesTruth]:
    """good/: a valid series; gap/: a series with a missing slice; cut/: a series with a cut file."""
    root = tmp_path / "study"
    good = write_series(root / "good", Geometry(), series_number=1, seed=21)
    write_series(root / "gap", Geometry(), series_number=2, drop=[3], seed=22)
    cut = write_series(root / "cut", Geometry(), series_number=3, seed=23)
    victim = cut.acquired(4).path
    victim.write_bytes(victim.read_bytes()[:700])
    return {"root": root, "good": good, "victim": victim}


def test_load_all_loads_every_readable_series_and_names_every_failure(
    mixed_study: dict[str, Path | SeriesTruth],
) -> None:
    root, good, victim = mixed_study["root"], mixed_study["good"], mixed_study["victim"]
    assert isinstance(root, Path) and isinstance(good, SeriesTruth) and isinstance(victim, Path)
    with pytest.raises(SomeSeriesFailedError) as caught:
        medvol.load_all(root)
    error = caught.value
    assert len(error.volumes) == 1
    assert error.volumes[0].meta["series_uid"] == good.series_uid
    assert_matches_truth(error.volumes[0], good)
    message = str(error)
    assert "3 of 4 series or files could not be loaded" in message
    assert "missing slice" in message and str(root / "gap") in message
    assert victim.name in message and "truncated" in message
    assert f"unreadable DICOM file {victim.name} in this folder" in message


def test_info_describes_the_good_series_and_lists_the_others(
    mixed_study: dict[str, Path | SeriesTruth],
) -> None:
    root, good, victim = mixed_study["root"], mixed_study["good"], mixed_study["victim"]
    assert isinstance(good, SeriesTruth) and isinstance(victim, Path)
    result = run_cli("info", root)
    assert result.returncode == 1
    assert good.series_uid in result.stdout and "(image)" in result.stdout
    assert "could not be read (1 described)" in result.stderr
    assert "missing slice" in result.stderr and victim.name in result.stderr
    as_json = run_cli("info", root, "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["series_uid"] == good.series_uid


def test_convert_of_a_good_series_is_not_stopped_by_a_bad_file_elsewhere(
    mixed_study: dict[str, Path | SeriesTruth], tmp_path: Path
) -> None:
    root, good, victim = mixed_study["root"], mixed_study["good"], mixed_study["victim"]
    assert isinstance(root, Path) and isinstance(good, SeriesTruth) and isinstance(victim, Path)
    result = run_cli("convert", root, tmp_path / "good.nii.gz", "--series", good.series_uid)
    assert result.returncode == 0, result.stderr
    assert victim.name in result.stderr  # skipped with a warning, not silently
    assert_matches_truth(medvol.load(tmp_path / "good.nii.gz"), good)
    # The series beside the unreadable file is refused, naming the file.
    with pytest.raises(medvol.MedvolError, match=victim.name):
        medvol.load(root, series=3)


# --- 4. copies of a series in sibling folders -------------------------------------------


def test_copies_in_sibling_folders_are_two_series_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "export"
    truth = write_series(root / "a", Geometry(), seed=31)
    shutil.copytree(root / "a", root / "b")
    with caplog.at_level(logging.WARNING, logger="medvol"):
        volumes = medvol.load_all(root)
    assert len(volumes) == 2
    for volume in volumes:
        assert_matches_truth(volume, truth)
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert str(root / "a") in warning and str(root / "b") in warning and "copies" in warning

    with pytest.raises(SeriesError) as caught:
        medvol.load(root)
    message = str(caught.value)
    assert "2 image series" in message and "share a position" not in message
    assert f"in {root / 'a'}" in message and f"in {root / 'b'}" in message
    with pytest.raises(SeriesError, match="is in 2 folders"):
        medvol.load(root, series=truth.series_uid)
    assert_matches_truth(medvol.load(root, series=2), truth)

    result = run_cli("info", root)
    assert result.returncode == 0, result.stderr
    assert "series 2 of 2" in result.stdout
    assert "copies" in result.stderr


def test_a_broken_copy_does_not_take_the_good_one_down(tmp_path: Path) -> None:
    root = tmp_path / "export"
    truth = write_series(root / "a", Geometry(), seed=32)
    write_series(root / "b", Geometry(), series_uid=truth.series_uid, drop=[2], seed=33)
    with pytest.raises(SomeSeriesFailedError) as caught:
        medvol.load_all(root)
    (volume,) = caught.value.volumes
    assert_matches_truth(volume, truth)
    (failure,) = caught.value.failures
    assert failure.error.path == root / "b"
    assert "missing slice" in str(failure.error)


def test_case_ids_name_the_series_not_the_folder_given(tmp_path: Path) -> None:
    root = tmp_path / "export"
    truth = write_series(root / "one" / "a", Geometry(), seed=34)
    shutil.copytree(root / "one" / "a", root / "two" / "a")
    series, _ = scan_folder(root)
    assert [item.key for item in series] == [truth.series_uid] * 2
    expected = dicom_case_id(truth.series_uid)
    cases, findings = discover_dicom(root)  # medvol index of the parent
    assert [case.case_id for case in cases] == [expected]
    (duplicate,) = [f for f in findings if f.kind == "duplicate"]
    assert duplicate.case_id == expected and duplicate.path == str(root / "two" / "a")
    assert any(f.kind == "series_in_several_folders" for f in findings)
    assert [scan.case_id for scan in find_scans(root / "one").scans] == [expected]  # predict of one folder
    found = find_scans(root)  # medvol predict of the parent: both copies, each into its own folder
    assert [scan.case_id for scan in found.scans] == [expected, expected]
    assert sorted(scan.name for scan in found.scans) == [f"one/a/{expected}", f"two/a/{expected}"]
    assert not found.failures


def test_series_without_a_uid_are_told_apart_by_their_content(tmp_path: Path) -> None:
    """Two different series with a blank SeriesInstanceUID are two cases, not one and its "copy"."""
    root = tmp_path / "export"
    write_series(root / "a", Geometry(), seed=35)
    write_series(root / "b", Geometry(rows=12, columns=10, slices=5), base=700, seed=36)
    for path in (p for p in root.rglob("*") if p.is_file()):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = ""
        dataset.save_as(path)
    shutil.copytree(root / "a", root / "copy" / "a")
    cases, findings = discover_dicom(root)  # medvol index of the parent
    ids = {Path(case.images[0]).relative_to(root).as_posix(): case.case_id for case in cases}
    assert set(ids) == {"a", "b"} and ids["a"] != ids["b"]
    (duplicate,) = [f for f in findings if f.kind == "duplicate"]  # the true copy, and only it
    assert duplicate.case_id == ids["a"] and duplicate.path == str(root / "copy" / "a")
    assert not any(f.kind == "series_in_several_folders" for f in findings)
    assert [scan.case_id for scan in find_scans(root / "b").scans] == [ids["b"]]  # the folder given
    assert [scan.case_id for scan in find_scans(root / "copy").scans] == [ids["a"]]
