"""Several volumes in one DICOM series: echoes, time points, b-values, magnitude and field map.

Each series is built with pydicom (classic: one file per slice; enhanced: one
multi-frame file with per-frame functional groups) and every volume medvol
gives is compared with the values as written and with dcm2niix, voxel by
voxel and in world coordinates. Series that cannot be split, and broken
multi-volume files, must fail with one line naming the file (and frame).
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import medvol
from medvol.errors import MedvolError, SeriesError, UnreadableFileError
from medvol.io import load_volumes
from tests.dicom_factory import Geometry, SeriesTruth
from tests.dicom_multivolume_factory import (
    VolumeSpec,
    echoes,
    time_points,
    write_enhanced_mr_volumes,
    write_mr_volumes,
)
from tests.geometry_oracle import index_map, resample_by_index
from tests.test_dicom_synthetic import (
    assert_same_voxels,
    dcm2niix_executable,
    grid_points,
    run_cli,
    volume_points,
)

OBLIQUE = Geometry(rows=10, columns=14, slices=6).oblique(12.0, -7.0, 25.0)
WORLD_TOLERANCE_MM = 1e-3
FIELD_MAP = ("DERIVED", "PRIMARY", "B0_MAP", "NONE")


def dcm2niix_volumes(source: Path, out: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """dcm2niix's conversion of ``source``: for each file written (name without ``.nii``),
    the world position ``(N, 3)`` and value ``(N,)`` of every voxel of each of its volumes."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [dcm2niix_executable(), "-z", "n", "-f", "out", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in sorted(out.glob("out*.nii")):
        image = nib.load(path)
        assert isinstance(image, nib.Nifti1Image)
        data = np.asarray(image.get_fdata(dtype=np.float64))
        data = data[..., np.newaxis] if data.ndim == 3 else data
        written[path.name[: -len(".nii")]] = [
            grid_points(image.affine, data[..., t]) for t in range(data.shape[3])
        ]
    return written


def assert_volumes_match(volumes: list[medvol.Volume], expected: list[tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(volumes) == len(expected)
    for volume, (world, values) in zip(volumes, expected, strict=True):
        assert_same_voxels(*volume_points(volume), world, values, tolerance_mm=WORLD_TOLERANCE_MM)


def truth_points(truths: list[SeriesTruth]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [truth.points() for truth in truths]


# --- 1. classic and enhanced series split into their volumes, equal to dcm2niix ------------


@pytest.fixture(scope="module")
def classic_echoes(tmp_path_factory: pytest.TempPathFactory) -> list[SeriesTruth]:
    specs = [VolumeSpec(echo_number=e + 1, echo_time=4.6 + 5 * e, slope=1.0 + e) for e in range(3)]
    return write_mr_volumes(tmp_path_factory.mktemp("echoes") / "series", OBLIQUE, specs, seed=1)


def test_classic_multi_echo_gives_one_volume_per_echo_equal_to_dcm2niix(
    classic_echoes: list[SeriesTruth], tmp_path: Path
) -> None:
    volumes = load_volumes(classic_echoes[0].folder)
    assert [v.meta["volume"] for v in volumes] == [
        "1 of 3: echo 1, TE 4.6 ms",
        "2 of 3: echo 2, TE 9.6 ms",
        "3 of 3: echo 3, TE 14.6 ms",
    ]
    assert [v.meta["volume_suffix"] for v in volumes] == ["_e1", "_e2", "_e3"]
    assert_volumes_match(volumes, truth_points(classic_echoes))
    reference = dcm2niix_volumes(classic_echoes[0].folder, tmp_path)
    assert sorted(reference) == ["out_e1", "out_e2", "out_e3"]
    assert_volumes_match(volumes, [reference[f"out{v.meta['volume_suffix']}"][0] for v in volumes])


def test_classic_dynamic_series_gives_the_time_points_in_order_equal_to_dcm2niix(tmp_path: Path) -> None:
    truths = write_mr_volumes(tmp_path / "dce", OBLIQUE, time_points(4), seed=2)
    volumes = load_volumes(truths[0].folder)
    assert [v.meta["volume_labels"]["temporal_position"] for v in volumes] == [1, 2, 3, 4]
    assert [v.meta["volume_suffix"] for v in volumes] == ["_t1", "_t2", "_t3", "_t4"]
    assert_volumes_match(volumes, truth_points(truths))
    reference = dcm2niix_volumes(truths[0].folder, tmp_path / "dcm2niix")
    assert list(reference) == ["out"] and len(reference["out"]) == 4
    assert_volumes_match(volumes, reference["out"])


def test_enhanced_multi_echo_file_gives_one_volume_per_echo_equal_to_dcm2niix(tmp_path: Path) -> None:
    specs = [VolumeSpec(echo_time=4.6), VolumeSpec(echo_time=9.6, slope=2.5)]
    truths = write_enhanced_mr_volumes(tmp_path / "study" / "echoes.dcm", OBLIQUE, specs, seed=3)
    volumes = load_volumes(truths[0].slices[0].path)
    assert [v.meta["volume_suffix"] for v in volumes] == ["_e1", "_e2"]
    assert [v.meta["volume_labels"]["echo_time"] for v in volumes] == [4.6, 9.6]
    assert_volumes_match(volumes, truth_points(truths))
    reference = dcm2niix_volumes(truths[0].folder, tmp_path / "dcm2niix")
    assert sorted(reference) == ["out_e1", "out_e2"]
    assert_volumes_match(volumes, [reference["out_e1"][0], reference["out_e2"][0]])


def test_enhanced_dynamic_file_gives_the_time_points_in_order_equal_to_dcm2niix(tmp_path: Path) -> None:
    specs = [VolumeSpec(temporal_position=t) for t in (3, 1, 2)]  # stored out of order
    truths = write_enhanced_mr_volumes(tmp_path / "study" / "dynamic.dcm", OBLIQUE, specs, seed=4)
    volumes = load_volumes(truths[0].slices[0].path)
    assert [v.meta["volume_labels"]["temporal_position"] for v in volumes] == [1, 2, 3]
    assert_volumes_match(volumes, truth_points([truths[1], truths[2], truths[0]]))
    reference = dcm2niix_volumes(truths[0].folder, tmp_path / "dcm2niix")
    assert_volumes_match(volumes, reference["out"])


def test_enhanced_magnitude_and_field_map_at_one_echo_time_split_by_frame_type(tmp_path: Path) -> None:
    """What a Philips B0 map file holds: a magnitude and a field map at the same positions."""
    specs = [VolumeSpec(echo_time=4.6, image_type=FIELD_MAP), VolumeSpec(echo_time=4.6)]
    truths = write_enhanced_mr_volumes(tmp_path / "study" / "IM_0027_fMAP.dcm", OBLIQUE, specs, seed=5)
    volumes = load_volumes(truths[0].slices[0].path)
    # Magnitude first, then the field map, whatever order the frames are stored in.
    assert [v.meta["image_type"] for v in volumes] == [["ORIGINAL", "PRIMARY", "M", "NONE"], list(FIELD_MAP)]
    assert [v.meta["volume_suffix"] for v in volumes] == ["", "_fieldmaphz"]
    assert_volumes_match(volumes, truth_points([truths[1], truths[0]]))
    reference = dcm2niix_volumes(truths[0].folder, tmp_path / "dcm2niix")
    assert_volumes_match(volumes, reference["out"][::-1])


def test_diffusion_b_values_split_the_series(tmp_path: Path) -> None:
    specs = [VolumeSpec(b_value=b) for b in (1000.0, 0.0, 500.0)]
    truths = write_mr_volumes(tmp_path / "dwi", OBLIQUE, specs, seed=6)
    volumes = load_volumes(truths[0].folder)
    assert [v.meta["volume_suffix"] for v in volumes] == ["_b0", "_b500", "_b1000"]
    assert_volumes_match(volumes, truth_points([truths[1], truths[2], truths[0]]))


def test_a_single_volume_is_not_split_by_what_varies_from_slice_to_slice(tmp_path: Path) -> None:
    """Acquisition number and trigger time differ per slice in many single volumes."""
    truths = write_mr_volumes(tmp_path / "one", OBLIQUE, [VolumeSpec()], seed=7)
    for number, truth_slice in enumerate(truths[0].slices):
        dataset = pydicom.dcmread(truth_slice.path)
        dataset.AcquisitionNumber = number + 1
        dataset.TriggerTime = str(37 * number)
        dataset.save_as(truth_slice.path)
    volume = medvol.load(truths[0].folder)
    assert "volume" not in volume.meta
    assert_same_voxels(*volume_points(volume), *truths[0].points())


# --- 2. choosing: one volume, all as channels, or an error listing them ---------------------


def test_load_without_a_choice_lists_the_volumes_and_how_to_choose(classic_echoes: list[SeriesTruth]) -> None:
    with pytest.raises(SeriesError) as caught:
        medvol.load(classic_echoes[0].folder)
    message = str(caught.value)
    assert "holds 3 volumes" in message and "volume=N" in message and "--volume all" in message
    assert "2: echo 2, TE 9.6 ms (6 slices, suffix _e2)" in message


def test_load_one_volume_or_all_as_channels(classic_echoes: list[SeriesTruth]) -> None:
    folder = classic_echoes[0].folder
    second = medvol.load(folder, volume=2)
    assert second.meta["volume_labels"] == {"echo": 2.0, "echo_time": 9.6}
    assert_same_voxels(*volume_points(second), *classic_echoes[1].points())
    stacked = medvol.load(folder, volume="all")
    assert stacked.array.shape == (3, *second.shape)
    np.testing.assert_array_equal(stacked.array[1], second.array[0].astype(stacked.array.dtype))
    np.testing.assert_array_equal(stacked.affine, second.affine)
    assert stacked.meta["channel_volumes"][2] == "3 of 3: echo 3, TE 14.6 ms"
    with pytest.raises(SeriesError, match="no volume 4; the volumes are"):
        medvol.load(folder, volume=4)


def test_load_all_gives_every_volume_of_every_series(classic_echoes: list[SeriesTruth]) -> None:
    assert [v.meta["volume_number"] for v in medvol.load_all(classic_echoes[0].folder)] == [1, 2, 3]


# --- 3. series that cannot be split ------------------------------------------------------


def test_a_slice_missing_from_one_echo_is_refused_naming_the_files(tmp_path: Path) -> None:
    truths = write_mr_volumes(tmp_path / "gap", OBLIQUE, echoes(2), seed=8, drop=[(1, 3)])
    with pytest.raises(SeriesError) as caught:
        medvol.load(truths[0].folder, volume=1)
    message = str(caught.value)
    assert "volume 2 (echo 2, TE 9.6 ms) has no image at" in message
    assert truths[0].acquired(3).path.name in message


def test_a_frame_missing_from_one_echo_is_refused_naming_the_frame(tmp_path: Path) -> None:
    path = tmp_path / "gap.dcm"
    write_enhanced_mr_volumes(
        path, OBLIQUE, [VolumeSpec(echo_time=4.6), VolumeSpec(echo_time=9.6)], drop=[(0, 2)]
    )
    with pytest.raises(SeriesError) as caught:
        medvol.load(path, volume=1)
    assert caught.value.path == path
    assert "volume 1 (TE 4.6 ms, dimension index 1) has no image at" in str(caught.value)
    assert "where volume 2 has frame " in str(caught.value)


def test_positions_that_differ_per_volume_are_refused(tmp_path: Path) -> None:
    """Echo 2 half a slice off: interleaved, the positions would look like one finer volume."""
    truths = write_mr_volumes(tmp_path / "shifted", OBLIQUE, echoes(2), seed=9, shift=[(1, 1.25)])
    with pytest.raises(SeriesError, match="the volumes do not hold the same slices"):
        medvol.load(truths[0].folder, volume=1)


def test_images_at_one_position_that_nothing_tells_apart_are_refused_naming_both(tmp_path: Path) -> None:
    truths = write_mr_volumes(tmp_path / "twins", OBLIQUE, [VolumeSpec(), VolumeSpec()], seed=10)
    with pytest.raises(SeriesError) as caught:
        medvol.load(truths[0].folder)
    message = str(caught.value)
    assert "share a position" in message and "tells them apart" in message
    names = {s.path.name for t in truths for s in t.slices}
    assert sum(name in message for name in names) == 2


# --- 4. broken multi-volume files: one line naming the file (and frame), exit 1, nothing written --

Breaker = Callable[[Path], Path]


def _enhanced_echoes(path: Path) -> Path:
    write_enhanced_mr_volumes(path, OBLIQUE, [VolumeSpec(echo_time=4.6), VolumeSpec(echo_time=9.6)], seed=11)
    return path


def _truncated_pixels(root: Path) -> Path:
    path = _enhanced_echoes(root / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-500])
    return path


def _frame_missing(root: Path) -> Path:
    path = root / "missing.dcm"
    write_enhanced_mr_volumes(
        path, OBLIQUE, [VolumeSpec(echo_time=4.6), VolumeSpec(echo_time=9.6)], drop=[(1, 4)]
    )
    return path


def _orientation_disagrees(root: Path) -> Path:
    path = _enhanced_echoes(root / "disagree.dcm")
    dataset = pydicom.dcmread(path)
    plane = pydicom.Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    dataset.PerFrameFunctionalGroupsSequence[6].PlaneOrientationSequence = pydicom.Sequence([plane])
    dataset.save_as(path)
    return path


def _dimension_disagrees(root: Path) -> Path:
    """One frame's DimensionIndexValues name the other echo than its EffectiveEchoTime does."""
    path = _enhanced_echoes(root / "dimension.dcm")
    dataset = pydicom.dcmread(path)
    content = dataset.PerFrameFunctionalGroupsSequence[4].FrameContentSequence[0]
    stack, position, echo = content.DimensionIndexValues
    content.DimensionIndexValues = [stack, position, 3 - echo]
    dataset.save_as(path)
    return path


def _fewer_functional_groups(root: Path) -> Path:
    path = _enhanced_echoes(root / "groups.dcm")
    dataset = pydicom.dcmread(path)
    del dataset.PerFrameFunctionalGroupsSequence[-1]
    dataset.save_as(path)
    return path


def _zero_frames(root: Path) -> Path:
    path = _enhanced_echoes(root / "empty.dcm")
    dataset = pydicom.dcmread(path)
    dataset.NumberOfFrames = 0
    dataset.save_as(path)
    return path


BROKEN: list[tuple[str, Breaker, type[MedvolError], str]] = [
    ("truncated-multi-frame-pixels", _truncated_pixels, UnreadableFileError, "truncated"),
    ("frame-missing-from-one-echo", _frame_missing, SeriesError, "has no image at"),
    ("per-frame-groups-disagree", _orientation_disagrees, SeriesError, "frame 7: ImageOrientationPatient"),
    ("dimension-index-disagrees", _dimension_disagrees, SeriesError, "DimensionIndexValues differ"),
    (
        "fewer-functional-groups-than-frames",
        _fewer_functional_groups,
        SeriesError,
        "11 item(s) for NumberOfFrames 12",
    ),
    ("zero-frames", _zero_frames, UnreadableFileError, "NumberOfFrames is 0"),
]


@pytest.mark.parametrize(
    ("breaker", "error_type", "reason"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_multi_volume_file_fails_in_one_line_naming_it(
    tmp_path: Path, breaker: Breaker, error_type: type[MedvolError], reason: str
) -> None:
    path = breaker(tmp_path / "in")
    for target in (path, path.parent):
        with pytest.raises(error_type) as caught:
            medvol.load(target, volume=1)
        message = str(caught.value)
        assert reason in message and path.name in message and "\n" not in message, message
    out = tmp_path / "out"
    out.mkdir()
    for extra in ([], ["--volume", "2"], ["--volume", "all"]):
        result = run_cli("convert", path, out / "scan.nii.gz", *extra)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("medvol: error: "), result.stderr
        assert path.name in lines[0] and reason in lines[0] and "unexpected" not in lines[0]
        assert list(out.iterdir()) == []


# --- 5. the command line -------------------------------------------------------------------


def test_info_lists_the_volumes_and_convert_writes_one_file_each(
    classic_echoes: list[SeriesTruth], tmp_path: Path
) -> None:
    folder = classic_echoes[0].folder
    info = run_cli("info", folder)
    assert info.returncode == 0, info.stderr
    assert f"{folder} (volume 2 of 3)" in info.stdout and "2 of 3: echo 2, TE 9.6 ms" in info.stdout
    assert "volume_suffix      _e2" in info.stdout

    result = run_cli("convert", folder, tmp_path / "mte.nii.gz")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.glob("mte*"))
    assert written == [f"mte_e{e}.{ext}" for e in (1, 2, 3) for ext in ("json", "nii.gz")]
    reloaded = [medvol.load(tmp_path / f"mte_e{e}.nii.gz") for e in (1, 2, 3)]
    assert_volumes_match(reloaded, truth_points(classic_echoes))

    again = run_cli("convert", folder, tmp_path / "mte.nii.gz")
    assert again.returncode == 1 and "output exists" in again.stderr

    one = run_cli("convert", folder, tmp_path / "echo2.nii.gz", "--volume", "2")
    assert one.returncode == 0, one.stderr
    assert_volumes_match([medvol.load(tmp_path / "echo2.nii.gz")], [classic_echoes[1].points()])

    stacked = run_cli("convert", folder, tmp_path / "all.nii", "--volume", "all")
    assert stacked.returncode == 0, stacked.stderr
    image = nib.load(tmp_path / "all.nii")
    assert image.shape == (*reloaded[0].shape, 3)
    data = np.asarray(image.dataobj)
    for e, volume in enumerate(reloaded):
        np.testing.assert_array_equal(data[..., e], volume.array[0])


def test_each_echo_file_says_its_echo_in_the_sidecar_as_dcm2niix_does(
    classic_echoes: list[SeriesTruth], tmp_path: Path
) -> None:
    folder = classic_echoes[0].folder
    assert run_cli("convert", folder, tmp_path / "medvol" / "mte.nii.gz").returncode == 0
    dcm2niix_volumes(folder, tmp_path / "dcm2niix")
    for echo in (1, 2, 3):
        ours = json.loads((tmp_path / "medvol" / f"mte_e{echo}.json").read_text())
        theirs = json.loads((tmp_path / "dcm2niix" / f"out_e{echo}.json").read_text())
        assert ours["EchoNumber"] == theirs["EchoNumber"] == echo
        assert ours["EchoTime"] == pytest.approx(theirs["EchoTime"]) == (4.6 + 5 * (echo - 1)) / 1000
        reloaded = medvol.load(tmp_path / "medvol" / f"mte_e{echo}.nii.gz")
        assert reloaded.meta["echo_time"] == pytest.approx(4.6 + 5 * (echo - 1))  # back in ms
    # Stacked as channels, the volume has no one echo: the sidecar names none.
    assert run_cli("convert", folder, tmp_path / "all.nii.gz", "--volume", "all").returncode == 0
    assert "EchoTime" not in json.loads((tmp_path / "all.json").read_text())


def test_convert_writes_nothing_when_one_of_the_outputs_exists(
    classic_echoes: list[SeriesTruth], tmp_path: Path
) -> None:
    (tmp_path / "mte_e3.nii.gz").write_bytes(b"someone else's file")
    result = run_cli("convert", classic_echoes[0].folder, tmp_path / "mte.nii.gz")
    assert result.returncode == 1 and "mte_e3.nii.gz: output exists" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mte_e3.nii.gz"]


# --- 6. public samples: nibabel's test data (Siemens DWI mosaics, a Philips enhanced MPRAGE) ----

NIBABEL_DICOM = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def public_sample(tmp_path: Path, *names: str) -> Path:
    """Decompress nibabel's ``NAME.dcm.gz`` samples into one folder (skip when nibabel lacks them)."""
    folder = tmp_path / "sample"
    folder.mkdir()
    for name in names:
        source = NIBABEL_DICOM / f"{name}.dcm.gz"
        if not source.is_file():
            pytest.skip(f"nibabel's test data {source} is not installed")
        (folder / f"{name}.dcm").write_bytes(gzip.decompress(source.read_bytes()))
    return folder


def grid_differences(volume: medvol.Volume, affine: np.ndarray, data: np.ndarray) -> tuple[float, float]:
    """The largest voxel difference and world distance (mm, over the grid's corners) between
    ``volume`` and a reference grid holding the same voxels in any axis order."""
    mapping = index_map(volume.affine, affine, WORLD_TOLERANCE_MM)
    ours = resample_by_index(volume.array[0], mapping, data.shape)
    corners = np.array([[i, j, k, 1] for i in (0, 1) for j in (0, 1) for k in (0, 1)]).T
    corners[:3] *= np.array(data.shape)[:, None] - 1
    world = np.abs((affine @ corners) - (volume.affine @ (mapping @ corners)))[:3]
    return float(np.abs(ours.astype(np.float64) - data).max()), float(world.max())


def dcm2niix_arrays(source: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """dcm2niix's one output for ``source``: affine and ``(X, Y, Z, T)`` values."""
    out.mkdir()
    result = subprocess.run(
        [dcm2niix_executable(), "-z", "n", "-f", "out", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    image = nib.load(out / "out.nii")
    assert isinstance(image, nib.Nifti1Image)
    data = np.asarray(image.get_fdata(dtype=np.float64))
    return image.affine, data[..., np.newaxis] if data.ndim == 3 else data


def test_public_siemens_diffusion_mosaics_are_the_volumes_of_one_series(tmp_path: Path) -> None:
    folder = public_sample(tmp_path, "siemens_dwi_0", "siemens_dwi_1000")
    volumes = load_volumes(folder)
    assert [v.meta["volume"] for v in volumes] == ["1 of 2: acquisition 1", "2 of 2: acquisition 2"]
    affine, data = dcm2niix_arrays(folder, tmp_path / "dcm2niix")
    assert data.shape[3] == 2
    for t, volume in enumerate(volumes):
        voxels, world = grid_differences(volume, affine, data[..., t])
        assert voxels == 0 and world < WORLD_TOLERANCE_MM, (t, voxels, world)


def test_public_philips_enhanced_file_is_one_volume_equal_to_dcm2niix(tmp_path: Path) -> None:
    folder = public_sample(tmp_path, "philips_mprage")
    volume = medvol.load(folder)
    assert "volume" not in volume.meta and volume.shape == (256, 256, 176)
    affine, data = dcm2niix_arrays(folder, tmp_path / "dcm2niix")
    voxels, world = grid_differences(volume, affine, data[..., 0])
    assert voxels == 0 and world < WORLD_TOLERANCE_MM, (voxels, world)


def test_slice_timing_in_trigger_time_does_not_cut_a_dynamic_series_into_slivers(tmp_path: Path) -> None:
    """TriggerTime differs per slice and per time point; AcquisitionNumber tells the volumes apart."""
    specs = [VolumeSpec(acquisition_number=t + 1) for t in range(3)]
    truths = write_mr_volumes(tmp_path / "fmri", OBLIQUE, specs, seed=12)
    for t, truth in enumerate(truths):
        for truth_slice in truth.slices:
            dataset = pydicom.dcmread(truth_slice.path)
            dataset.TriggerTime = str(2000 * t + 150 * truth_slice.index)
            dataset.save_as(truth_slice.path)
    volumes = load_volumes(truths[0].folder)
    assert [v.meta["volume_suffix"] for v in volumes] == ["_a1", "_a2", "_a3"]
    assert_volumes_match(volumes, truth_points(truths))


# --- 4. a dataset of multi-echo series: a chosen echo, or every echo as channels ----------------


def echo_manifest(root: Path, volume_column: list[str] | None = None) -> Path:
    """A classification manifest of four 2-echo series (classes 0, 1, 0, 1), optionally with ``volume``."""
    specs = [VolumeSpec(echo_number=e + 1, echo_time=5.0 + 5 * e) for e in range(2)]
    lines = ["image,class" + (",volume" if volume_column else "")]
    for number in range(4):
        write_mr_volumes(root / f"s{number}", Geometry(rows=6, columns=5, slices=4), specs, seed=number)
        extra = f",{volume_column[number]}" if volume_column else ""
        lines.append(f"s{number},{number % 2}{extra}")
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def test_a_dataset_of_echo_series_needs_a_volume_choice_and_takes_all_as_channels(tmp_path: Path) -> None:
    from medvol.data.cases import load_case, read_manifest, validate

    manifest = echo_manifest(tmp_path / "data")
    refused = validate(manifest, store=False)
    assert not refused.usable
    assert all("holds 2 volumes" in f.message for f in refused.findings if f.kind == "unreadable")

    out = tmp_path / "all.csv"
    result = run_cli("index", manifest, "--volume", "all", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    cases, _ = read_manifest(out)
    assert [case.volume for case in cases] == ["all"] * 4
    image, _ = load_case(cases[0])
    expected = medvol.load(tmp_path / "data" / "s0", volume="all")
    assert image.array.shape[0] == 2
    np.testing.assert_array_equal(image.array, expected.array)
    np.testing.assert_array_equal(image.affine, expected.affine)


def test_a_manifest_chooses_a_volume_per_case_and_refuses_a_bad_choice(tmp_path: Path) -> None:
    from medvol.data.cases import load_case, validate

    echo_manifest(tmp_path / "data")
    manifest = tmp_path / "data" / "chosen.csv"
    manifest.write_text("case_id,image,class,volume\na,s0,0,1\nb,s0,1,2\nc,s1,0,all\nd,s2,1,echo\n")
    report = validate(manifest, store=False)
    bad = [f for f in report.findings if f.kind == "bad_volume"]
    assert len(bad) == 1 and "volume 'echo' is not a volume number" in bad[0].message
    # Two echoes of one series are two images, not a duplicate case.
    assert [case.case_id for case in report.usable] == ["a", "b", "c"]
    assert not [f for f in report.findings if f.kind == "duplicate_case"]
    echo1, echo2, both = (load_case(case)[0] for case in report.usable)
    np.testing.assert_array_equal(echo1.array, medvol.load(tmp_path / "data" / "s0", volume=1).array)
    np.testing.assert_array_equal(echo2.array, medvol.load(tmp_path / "data" / "s0", volume=2).array)
    assert both.array.shape[0] == 2


def test_a_stored_check_is_not_reused_for_another_volume_choice(tmp_path: Path) -> None:
    from medvol.data.cases import validate

    manifest = echo_manifest(tmp_path / "data")
    first = validate(manifest, volume="1")
    assert first.checked == 4 and len(first.usable) == 4
    assert validate(manifest, volume="1").reused == 4
    again = validate(manifest, volume="all")
    assert again.checked == 4 and again.reused == 0
