"""medvol's DICOM loader on synthetic series whose every voxel is known.

Each series is written with pydicom (``tests/dicom_factory.py``) from a ramp
of stored values, so each voxel is distinguishable: a swapped axis, a wrong
slice order, a lost rescale or a sign error in the LPS→RAS conversion shows
up as a wrong value at a world position. The ground truth is computed from
the ImagePositionPatient, ImageOrientationPatient and PixelSpacing strings as
written; SimpleITK and dcm2niix are independent oracles.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medvol
from medvol.errors import (
    GeometryError,
    InvalidDataError,
    MedvolError,
    SeriesError,
    UnreadableFileError,
)
from tests.dicom_factory import (
    IDENTIFIERS,
    Geometry,
    SeriesTruth,
    tilted,
    write_dicomdir_like,
    write_enhanced,
    write_series,
    write_text_sr,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Oblique about all three axes; acquired against the normal (head to feet),
# so slice order, file order and file-name order all differ.
OBLIQUE = Geometry(slice_spacing=-2.5).oblique(20.0, -35.0, 50.0)
TOLERANCE_MM = 1e-3


# --- oracles -----------------------------------------------------------------


def grid_points(affine: np.ndarray, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World position ``(N, 3)`` and value ``(N,)`` of every voxel of a 3D grid."""
    index = np.indices(array.shape).reshape(3, -1).T
    return index @ affine[:3, :3].T + affine[:3, 3], array.reshape(-1)


def volume_points(volume: medvol.Volume) -> tuple[np.ndarray, np.ndarray]:
    assert volume.num_channels == 1
    return grid_points(volume.affine, volume.array[0])


def assert_same_voxels(
    world: np.ndarray,
    values: np.ndarray,
    expected_world: np.ndarray,
    expected_values: np.ndarray,
    tolerance_mm: float = TOLERANCE_MM,
) -> None:
    """Every voxel lies on exactly one expected voxel (to ``tolerance_mm``) and has its value.

    Voxels are paired by world position, never by array order, so readers
    that flip or permute axes are compared fairly.
    """
    assert world.shape == expected_world.shape, (world.shape, expected_world.shape)
    centre = expected_world.mean(axis=0)
    ours, theirs = world - centre, expected_world - centre
    squared = (ours**2).sum(1)[:, None] + (theirs**2).sum(1)[None, :] - 2 * ours @ theirs.T
    nearest = squared.argmin(axis=1)
    assert np.unique(nearest).size == nearest.size, "several voxels land on one expected voxel"
    distance = np.linalg.norm(ours - theirs[nearest], axis=1)
    assert distance.max() < tolerance_mm, f"voxels off by up to {distance.max():.6f} mm"
    np.testing.assert_array_equal(values.astype(np.float64), expected_values[nearest].astype(np.float64))


def assert_matches_truth(volume: medvol.Volume, truth: SeriesTruth) -> None:
    assert_same_voxels(*volume_points(volume), *truth.points())


def sitk_points(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK/GDCM's reading of the series in ``folder`` (its own file sorting)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    return grid_points(affine, array)


def dcm2niix_executable() -> str:
    beside_python = Path(sys.executable).parent / "dcm2niix"
    found = str(beside_python) if beside_python.is_file() else shutil.which("dcm2niix")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dcm2niix is missing; CI must run the dcm2niix oracle (pip install dcm2niix)")
        pytest.skip("dcm2niix not installed (pip install dcm2niix)")
    return found


def dcm2niix_points(source: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """dcm2niix's conversion of ``source``: world and (scaled) value of every voxel."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [dcm2niix_executable(), "-z", "n", "-f", "out", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = sorted(out.glob("out*.nii"))
    assert len(written) == 1, (written, result.stdout)
    image = nib.load(written[0])
    assert isinstance(image, nib.Nifti1Image)
    return grid_points(image.affine, np.asarray(image.get_fdata(dtype=np.float64)))


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory: pytest.TempPathFactory) -> SeriesTruth:
    """An oblique CT series with random file names written in random order."""
    folder = tmp_path_factory.mktemp("oblique") / "series"
    return write_series(folder, OBLIQUE, intercepts=-1024.0, seed=3)


@pytest.fixture(scope="module")
def oblique_volume(oblique_series: SeriesTruth) -> medvol.Volume:
    return medvol.load(oblique_series.folder)


# --- 1. oblique, shuffled ----------------------------------------------------


def test_oblique_shuffled_series_every_voxel_matches_truth(
    oblique_series: SeriesTruth, oblique_volume: medvol.Volume
) -> None:
    geometry = oblique_series.geometry
    assert oblique_volume.shape == (geometry.columns, geometry.rows, geometry.slices)
    assert_matches_truth(oblique_volume, oblique_series)


def test_oblique_axes_follow_the_documented_conventions(
    oblique_series: SeriesTruth, oblique_volume: medvol.Volume
) -> None:
    first = oblique_series.slices[0]
    row_spacing, column_spacing = first.pixel_spacing
    affine = oblique_volume.affine
    # X follows the column index (along IOP's row direction), Y the row index.
    np.testing.assert_allclose(affine[:3, 0], LPS_TO_RAS @ first.row_direction * column_spacing, atol=1e-9)
    np.testing.assert_allclose(affine[:3, 1], LPS_TO_RAS @ first.column_direction * row_spacing, atol=1e-9)
    # Z runs along the slice normal even though acquisition ran against it.
    normal_ras = LPS_TO_RAS @ np.cross(first.row_direction, first.column_direction)
    assert affine[:3, 2] @ normal_ras == pytest.approx(2.5, abs=1e-6)
    np.testing.assert_allclose(oblique_volume.spacing, (0.7, 0.8, 2.5), atol=1e-6)
    assert oblique_volume.array.dtype.kind == "i"  # integer rescale stays integer
    assert oblique_volume.meta["slice_step_from"] == "ImagePositionPatient"
    assert oblique_volume.meta["skipped_files"] == []


def test_oblique_series_agrees_with_simpleitk(
    oblique_series: SeriesTruth, oblique_volume: medvol.Volume
) -> None:
    assert_same_voxels(*volume_points(oblique_volume), *sitk_points(oblique_series.folder))


def test_oblique_series_agrees_with_dcm2niix(
    oblique_series: SeriesTruth, oblique_volume: medvol.Volume, tmp_path: Path
) -> None:
    assert_same_voxels(
        *volume_points(oblique_volume), *dcm2niix_points(oblique_series.folder, tmp_path / "dcm2niix")
    )


# --- 2. two series in one folder ---------------------------------------------


def test_two_series_in_one_folder_must_be_chosen(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    first = write_series(folder, Geometry(), series_number=1, description="axial", seed=1)
    sagittal = Geometry(
        rows=10,
        columns=14,
        slices=6,
        row_direction=(0.0, 1.0, 0.0),
        column_direction=(0.0, 0.0, -1.0),
        origin=(-30.0, -40.0, 60.0),
        slice_spacing=3.0,
    )
    second = write_series(folder, sagittal, series_number=2, description="sagittal", base=5000, seed=2)

    with pytest.raises(SeriesError) as caught:
        medvol.load(folder)
    message = str(caught.value)
    assert str(folder) in message
    assert "2 image series" in message
    for truth in (first, second):
        assert truth.series_uid in message
    assert "'axial'" in message and "'sagittal'" in message

    for choice, truth in ((1, first), (2, second), ("2", second), (second.series_uid, second)):
        volume = medvol.load(folder, series=choice)
        assert volume.meta["series_uid"] == truth.series_uid
        assert_matches_truth(volume, truth)

    with pytest.raises(SeriesError, match="no series 3"):
        medvol.load(folder, series=3)


# --- 3. slices that do not make one regular grid ------------------------------


def _uneven_positions(geometry: Geometry) -> np.ndarray:
    gaps = np.array([0.0, 2.5, 2.5, 2.5, 3.4, 2.5, 2.5, 2.5])
    return np.asarray(geometry.origin) + np.outer(np.cumsum(gaps), geometry.normal)


@pytest.mark.parametrize(
    ("options", "expected", "named_slices"),
    [
        ({"drop": [3]}, "1 missing slice", (2, 4)),
        ({"duplicate": [(5, 4)]}, "share a position", (4, 5)),
        ({"positions": _uneven_positions(Geometry())}, "uneven slice spacing", (3, 4)),
    ],
    ids=["missing", "duplicate", "uneven"],
)
def test_irregular_slices_are_refused(
    tmp_path: Path, options: dict[str, Any], expected: str, named_slices: tuple[int, int]
) -> None:
    geometry = Geometry()
    truth = write_series(tmp_path / "series", geometry, **options)
    with pytest.raises(SeriesError) as caught:
        medvol.load(truth.folder)
    message = str(caught.value)
    assert expected in message
    assert str(truth.folder) in message
    # The message names the two files around the problem.
    for k in named_slices:
        assert truth.acquired(k).path.name in message


# --- 4. gantry tilt ------------------------------------------------------------


@pytest.fixture()
def tilted_series(tmp_path: Path) -> SeriesTruth:
    return write_series(tmp_path / "tilt", tilted(Geometry(), 15.0), intercepts=-1024.0, seed=4)


def test_gantry_tilt_is_kept_as_an_exact_sheared_affine(tilted_series: SeriesTruth) -> None:
    volume = medvol.load(tilted_series.folder)
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(15.0, abs=1e-3)
    assert volume.meta["sheared_affine"] is True
    # Every voxel sits at its own slice's ImagePositionPatient plus in-plane offsets.
    assert_matches_truth(volume, tilted_series)
    positions = sorted((s.position for s in tilted_series.slices), key=lambda p: p[2])
    for z, position in enumerate(positions):
        np.testing.assert_allclose(
            volume.world_coordinates(np.array([[0, 0, z]]))[0], LPS_TO_RAS @ position, atol=1e-6
        )


def test_gantry_tilt_survives_nifti_and_is_refused_by_nrrd(
    tilted_series: SeriesTruth, tmp_path: Path
) -> None:
    volume = medvol.load(tilted_series.folder)
    nifti = medvol.save(volume, tmp_path / "tilt.nii.gz")
    again = medvol.load(nifti)
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(again.array, volume.array)
    assert_matches_truth(again, tilted_series)

    target = tmp_path / "tilt.nrrd"
    with pytest.raises(GeometryError, match="sheared"):
        medvol.save(volume, target)
    assert not target.exists()
    # No temporary left; the sidecar is the NIfTI's (the refused NRRD leaves it as it was).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tilt", "tilt.json", "tilt.nii.gz"]


# --- 5. rescale slope and intercept ------------------------------------------


@pytest.mark.parametrize(
    ("options", "dtype_kind"),
    [
        ({"slopes": 0.5, "intercepts": -1000.0}, "f"),
        (
            {
                # First and last slices have an integer rescale: the output type
                # must not be chosen from one slice.
                "slopes": [1.0, 0.5, 2.0, 0.25, 3.0, 1.5, 0.75, 1.0],
                "intercepts": [-1024.0, -1000.0, -10.0, 5.0, 0.0, -1.0, 2.5, -1024.0],
            },
            "f",
        ),
        ({"slopes": 1.0, "intercepts": -1024.0}, "i"),
        ({"slopes": 1.0, "intercepts": 0.0, "signed": True, "base": -700}, "i"),
    ],
    ids=["slope-0.5", "per-slice-slopes", "integer-intercept", "signed-int16"],
)
def test_rescale_is_applied_exactly(tmp_path: Path, options: dict[str, Any], dtype_kind: str) -> None:
    truth = write_series(tmp_path / "series", Geometry(), **options)
    volume = medvol.load(truth.folder)
    assert volume.array.dtype.kind == dtype_kind
    if dtype_kind == "f":
        assert volume.array.dtype == np.float32
    assert_matches_truth(volume, truth)  # exact equality of stored * slope + intercept
    if options.get("signed"):
        assert volume.array.min() == -700


# --- 6. enhanced multi-frame ---------------------------------------------------


@pytest.mark.parametrize(
    "rescale",
    [
        {"slopes": 0.5, "intercepts": -1000.0},
        {"slopes": [1.0, 0.5, 2.0, 0.25, 3.0, 1.5, 0.75, 1.0], "intercepts": -1000.0},
    ],
    ids=["shared-rescale", "per-frame-rescale"],
)
def test_enhanced_multiframe_with_shuffled_frames_matches_truth(
    tmp_path: Path, rescale: dict[str, Any]
) -> None:
    truth = write_enhanced(tmp_path / "enhanced" / "volume.dcm", OBLIQUE, **rescale)
    volume = medvol.load(truth.folder)
    assert volume.meta["multiframe"] is True
    assert volume.shape == (OBLIQUE.columns, OBLIQUE.rows, OBLIQUE.slices)
    assert volume.array.dtype == np.float32
    assert_matches_truth(volume, truth)
    # The file alone loads the same volume.
    alone = medvol.load(truth.folder / "volume.dcm")
    np.testing.assert_array_equal(alone.affine, volume.affine)
    np.testing.assert_array_equal(alone.array, volume.array)


def test_enhanced_multiframe_agrees_with_dcm2niix(tmp_path: Path) -> None:
    truth = write_enhanced(tmp_path / "enhanced" / "volume.dcm", OBLIQUE, slopes=0.5, intercepts=-1000.0)
    volume = medvol.load(truth.folder)
    assert_same_voxels(*volume_points(volume), *dcm2niix_points(truth.folder, tmp_path / "dcm2niix"))


# --- 7. objects that are not images --------------------------------------------


def test_non_image_objects_are_skipped_and_listed(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "study", Geometry(), seed=7)
    report = write_text_sr(tmp_path / "study" / "report.dcm")
    dicomdir = write_dicomdir_like(tmp_path / "study" / "DICOMDIR")
    readme = tmp_path / "study" / "README.txt"
    readme.write_text("exported by a PACS\n")

    volume = medvol.load(truth.folder)
    assert_matches_truth(volume, truth)
    skipped = {Path(item["path"]).name: item["reason"] for item in volume.meta["skipped_files"]}
    assert set(skipped) == {report.name, dicomdir.name, readme.name}
    assert "Basic Text SR" in skipped[report.name]
    assert "not an image" in skipped[dicomdir.name]
    assert "not a DICOM file" in skipped[readme.name]


# --- 8. broken input -------------------------------------------------------------

# Each builder makes a broken input below tmp_path and returns (what to load,
# the file or folder the error must name).
Builder = Callable[[Path], tuple[Path, Path]]


def _series_with_cut_slice(keep: Callable[[int], int], acquired: int = 3) -> Builder:
    """A series whose ``acquired``-th slice is cut to ``keep(file size)`` bytes."""

    def build(root: Path) -> tuple[Path, Path]:
        truth = write_series(root / "series", Geometry(), seed=8)
        victim = truth.acquired(acquired).path
        data = victim.read_bytes()
        victim.write_bytes(data[: keep(len(data))])
        return truth.folder, victim

    return build


def _series_with_empty_file(root: Path) -> tuple[Path, Path]:
    truth = write_series(root / "series", Geometry(), seed=9)
    empty = truth.folder / "IM0005"
    empty.write_bytes(b"")
    return truth.folder, empty


def _empty_file(root: Path) -> tuple[Path, Path]:
    path = root / "slice.dcm"
    path.write_bytes(b"")
    return path, path


def _cut_single_file(root: Path) -> tuple[Path, Path]:
    truth = write_series(root / "series", Geometry(slices=1), shuffle=False)
    path = truth.slices[0].path
    path.write_bytes(path.read_bytes()[:-50])
    return path, path


def _cut_enhanced(root: Path) -> tuple[Path, Path]:
    truth = write_enhanced(root / "enhanced" / "volume.dcm", OBLIQUE)
    path = truth.slices[0].path
    path.write_bytes(path.read_bytes()[:-700])
    return truth.folder, path


def _empty_folder(root: Path) -> tuple[Path, Path]:
    folder = root / "empty"
    folder.mkdir()
    return folder, folder


def _only_other_files(root: Path) -> tuple[Path, Path]:
    folder = root / "documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here\n")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4\n" + bytes(300))
    return folder, folder / "notes.txt"


def _tree_without_series(root: Path) -> tuple[Path, Path]:
    folder = root / "project"
    for sub in ("a/b/c", "a/d", "e"):
        (folder / sub).mkdir(parents=True)
    (folder / "a/b/c/photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), folder / "a/d/mask.nii.gz")
    (folder / "e/config.json").write_text("{}")
    return folder, folder / "a/b/c/photo.png"


def _tree_of_non_images(root: Path) -> tuple[Path, Path]:
    folder = root / "export"
    write_dicomdir_like(folder / "DICOMDIR")
    report = write_text_sr(folder / "reports" / "2024" / "report.dcm")
    (folder / "reports" / "index.html").write_text("<html></html>")
    return folder, report


def _nifti_with_nan(root: Path) -> tuple[Path, Path]:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = root / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path, path


def _cut_nifti(root: Path) -> tuple[Path, Path]:
    path = root / "cut.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(4000, dtype=np.float32).reshape(10, 20, 20), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, path


def _missing(root: Path) -> tuple[Path, Path]:
    return root / "nowhere" / "scan", root / "nowhere" / "scan"


BROKEN: list[tuple[str, Builder, type[MedvolError], str]] = [
    ("dicom-cut-in-file-meta", _series_with_cut_slice(lambda n: 200), UnreadableFileError, "truncated"),
    ("dicom-cut-in-header", _series_with_cut_slice(lambda n: 700), UnreadableFileError, "truncated"),
    # An end slice: skipping it would load a shorter volume without a word.
    (
        "dicom-end-slice-cut-in-header",
        _series_with_cut_slice(lambda n: 700, 7),
        UnreadableFileError,
        "truncated",
    ),
    ("dicom-cut-before-pixels", _series_with_cut_slice(lambda n: n - 396), UnreadableFileError, "truncated"),
    ("dicom-cut-in-pixels", _series_with_cut_slice(lambda n: n - 100), UnreadableFileError, "truncated"),
    ("dicom-cut-last-byte", _series_with_cut_slice(lambda n: n - 1), UnreadableFileError, "truncated"),
    ("dicom-file-cut", _cut_single_file, UnreadableFileError, "truncated"),
    ("enhanced-cut-in-pixels", _cut_enhanced, UnreadableFileError, "truncated"),
    ("zero-length-file-in-series", _series_with_empty_file, UnreadableFileError, "empty file"),
    ("zero-length-file", _empty_file, UnreadableFileError, "empty file"),
    ("empty-folder", _empty_folder, SeriesError, "empty folder"),
    ("only-non-dicom-files", _only_other_files, SeriesError, "no DICOM image series"),
    ("tree-without-series", _tree_without_series, SeriesError, "no DICOM image series"),
    ("tree-of-non-image-dicom", _tree_of_non_images, SeriesError, "Basic Text SR"),
    ("nifti-with-nan", _nifti_with_nan, InvalidDataError, "NaN"),
    ("truncated-nifti", _cut_nifti, UnreadableFileError, "not a readable NIfTI"),
    ("nonexistent-path", _missing, UnreadableFileError, "no such file"),
]


@pytest.mark.parametrize(
    ("builder", "error_type", "reason"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_input_raises_an_error_naming_the_file(
    tmp_path: Path, builder: Builder, error_type: type[MedvolError], reason: str
) -> None:
    target, culprit = builder(tmp_path)
    with pytest.raises(error_type) as caught:
        medvol.load(target)
    message = str(caught.value)
    assert culprit.name in message, message
    assert reason in message, message
    assert caught.value.path is not None


def test_nan_nifti_loads_when_allowed(tmp_path: Path) -> None:
    path, _ = _nifti_with_nan(tmp_path)
    volume = medvol.load(path, allow_nan=True)
    assert int(np.count_nonzero(~np.isfinite(volume.array))) == 2
    assert np.isnan(volume.array[0, 1, 2, 3])


# --- 9. patient identifiers never leak -------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvol", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_no_identifiers(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for identifier in IDENTIFIERS:
        assert identifier.encode() not in data, f"{identifier!r} leaked into {where}"


def test_cli_never_shows_or_writes_patient_identifiers(oblique_series: SeriesTruth, tmp_path: Path) -> None:
    folder = tmp_path / "with-extras"
    shutil.copytree(oblique_series.folder, folder)
    write_text_sr(folder / "report.dcm")
    tilt = write_series(tmp_path / "tilt", tilted(Geometry(), 15.0), seed=5)
    broken = write_series(tmp_path / "broken", Geometry(), seed=6)
    victim = broken.slices[1].path
    victim.write_bytes(victim.read_bytes()[:700])

    output = tmp_path / "out.nii.gz"
    runs = {
        "info --json": run_cli("info", folder, "--json"),
        "info": run_cli("info", folder),
        "convert": run_cli("convert", folder, output),
        "info tilt": run_cli("info", tilt.folder),
        "info broken": run_cli("info", broken.folder, "--json"),
        "convert broken": run_cli("convert", broken.folder, tmp_path / "broken.nii.gz"),
    }
    for name, result in runs.items():
        expected_code = 1 if "broken" in name else 0
        assert result.returncode == expected_code, (name, result.stdout, result.stderr)
        assert_no_identifiers(result.stdout, f"stdout of {name}")
        assert_no_identifiers(result.stderr, f"stderr of {name}")
    assert '"shape": [' in runs["info --json"].stdout
    assert victim.name in runs["info broken"].stderr
    assert not (tmp_path / "broken.nii.gz").exists()

    written = output.read_bytes()
    assert_no_identifiers(written, "the compressed NIfTI")
    assert_no_identifiers(gzip.decompress(written), "the NIfTI")
    assert_same_voxels(*volume_points(medvol.load(output)), *oblique_series.points())
