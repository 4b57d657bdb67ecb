"""Preprocessing (reorient, resample, crop, pad) and its inverse, on synthetic and real volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nibabel.eulerangles import euler2mat

import medvol
from medvol.errors import GeometryError
from medvol.io.geometry import is_sheared
from medvol.transforms.preprocess import (
    PreprocessConfig,
    PreprocessRecord,
    bbox_from_mm,
    crop,
    foreground_bbox,
    invert,
    pad,
    preprocess,
    reorient,
    resample,
)
from medvol.volume import Volume

SHAPE = (40, 50, 24)
RAMP = np.array([0.5, -1.0, 2.0])  # a linear function of world position (mm)


def oblique_lps_affine() -> np.ndarray:
    """An LPS-ish, rotated (not sheared) grid with anisotropic spacing in mm."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ euler2mat(0.3, -0.2, 0.1) @ np.diag([1.2, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def gantry_tilt_affine(degrees: float = 15.0) -> np.ndarray:
    """Axial slices 2 mm apart along a step tilted in the y–z plane (sheared)."""
    tilt = np.radians(degrees)
    return np.array(
        [
            [0.8, 0.0, 0.0, -20.0],
            [0.0, 0.8, 2.0 * np.sin(tilt), -10.0],
            [0.0, 0.0, 2.0 * np.cos(tilt), 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def world_grid(volume: Volume) -> np.ndarray:
    """World position (mm) of every voxel, ``(X, Y, Z, 3)``."""
    index = np.indices(volume.shape).reshape(3, -1).T
    return volume.world_coordinates(index).reshape(*volume.shape, 3)


def blob_pair(affine: np.ndarray, shape: tuple[int, int, int] = SHAPE) -> tuple[Volume, Volume]:
    """An image that is a linear ramp in world mm, and a smooth ellipsoid label (value 3)."""
    grid = Volume(np.zeros((1, *shape)), affine)
    world = world_grid(grid)
    centre = world.reshape(-1, 3).mean(axis=0)
    inside = np.linalg.norm((world - centre) / [12.0, 9.0, 14.0], axis=-1) < 1
    image = Volume((world @ RAMP)[np.newaxis].astype(np.float32), affine)
    label = Volume((3 * inside).astype(np.uint8)[np.newaxis], affine)
    return image, label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def world_centroid(label: Volume) -> np.ndarray:
    return label.world_coordinates(np.argwhere(label.array[0] > 0)).mean(axis=0)


def assert_same_world_voxels(ours: Volume, source: Volume) -> None:
    """Every voxel of ``ours`` sits on a source voxel centre and has its value."""
    source_index = np.linalg.inv(source.affine) @ np.vstack(
        [world_grid(ours).reshape(-1, 3).T, np.ones(ours.array[0].size)]
    )
    rounded = np.round(source_index[:3]).astype(int)
    np.testing.assert_allclose(source_index[:3], rounded, atol=1e-6)
    expected = source.array[:, rounded[0], rounded[1], rounded[2]].reshape(ours.array.shape)
    np.testing.assert_array_equal(ours.array, expected)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_reorient_is_an_exact_permutation(orientation: str) -> None:
    image, _ = blob_pair(oblique_lps_affine())
    result, entry = reorient(image, orientation)
    assert result.orientation == orientation
    assert result.array.dtype == image.array.dtype
    assert entry["from_orientation"] == "LPS"
    assert_same_world_voxels(result, image)


def test_resampled_grid_covers_the_same_extent_with_the_target_spacing() -> None:
    image, _ = reorient(blob_pair(oblique_lps_affine())[0])
    result, entry = resample(image, (1.0, 1.5, 3.0))
    np.testing.assert_allclose(result.spacing, (1.0, 1.5, 3.0))
    expected_shape = np.round(np.array(image.shape) * image.spacing / (1.0, 1.5, 3.0))
    np.testing.assert_array_equal(result.shape, expected_shape)
    # Same axis directions, same centre of the field of view.
    unit = result.affine[:3, :3] / result.spacing
    np.testing.assert_allclose(unit, image.affine[:3, :3] / image.spacing, atol=1e-12)
    centre = [(np.array(v.shape) - 1) / 2 for v in (result, image)]
    np.testing.assert_allclose(result.world_coordinates(centre[0]), image.world_coordinates(centre[1]))
    assert entry["resampled"] and entry["output_shape"] == list(result.shape)


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_resampled_image_values_sit_at_their_new_world_positions(interpolation: str) -> None:
    # A linear function of world position is reproduced by interpolation only if the affine is right.
    image, _ = reorient(blob_pair(oblique_lps_affine())[0])
    result, _ = resample(image, (1.0, 1.0, 1.0), interpolation)  # type: ignore[arg-type]
    assert result.array.dtype == np.float32
    expected = world_grid(result) @ RAMP
    interior = (slice(4, -4),) * 3
    tolerance = 1e-3 if interpolation == "linear" else 0.2
    np.testing.assert_allclose(result.array[0][interior], expected[interior], atol=tolerance)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_resampled_labels_keep_their_values_and_dtype(dtype: type) -> None:
    values = np.array([0, 1, 7, 100], dtype=dtype)
    if dtype == np.int64:
        values[-1] = 2**40 + 1  # not representable in float32
    rng = np.random.default_rng(0)
    label = Volume(values[rng.integers(0, 4, size=(1, 20, 21, 22))], oblique_lps_affine())
    result, _ = resample(label, (0.7, 1.3, 1.9), "nearest")
    assert result.array.dtype == dtype
    assert set(np.unique(result.array)) == set(values.tolist())


def test_invert_without_resampling_gives_back_identical_labels() -> None:
    image, label = blob_pair(oblique_lps_affine())
    config = PreprocessConfig(
        crop="foreground", foreground_from="label", margin_vox=2, pad_to_shape=(48, 48, 48)
    )
    pre_image, pre_label, record = preprocess(image, label, config)
    assert pre_image.orientation == "RAS" and pre_image.shape == (48, 48, 48)
    assert [entry["step"] for entry in record.steps] == ["reorient", "resample", "crop", "pad"]
    assert not record.steps[1]["resampled"]
    assert pre_label is not None
    back = invert(pre_label, record)
    np.testing.assert_array_equal(back.affine, label.affine)
    np.testing.assert_array_equal(back.array, label.array)
    assert back.array.dtype == np.uint8


def test_invert_after_resampling_restores_the_source_grid() -> None:
    image, label = blob_pair(oblique_lps_affine())
    config = PreprocessConfig(
        spacing_mm=(1.0, 1.0, 1.0), crop="foreground", foreground_from="label", margin_vox=3
    )
    _, pre_label, record = preprocess(image, label, config)
    assert pre_label is not None
    assert pre_label.array.dtype == np.uint8 and set(np.unique(pre_label.array)) == {0, 3}
    back = invert(pre_label, record)
    assert back.shape == label.shape
    np.testing.assert_array_equal(back.affine, label.affine)
    assert back.array.dtype == np.uint8 and set(np.unique(back.array)) == {0, 3}
    assert dice(back.array > 0, label.array > 0) > 0.95
    # The labelled structure stays where it was in the world.
    half_voxel = min(label.spacing) / 2
    assert np.linalg.norm(world_centroid(pre_label) - world_centroid(label)) < half_voxel
    assert np.linalg.norm(world_centroid(back) - world_centroid(label)) < half_voxel


def test_invert_probabilities_is_linear_and_fills_outside_the_crop() -> None:
    image, label = blob_pair(oblique_lps_affine())
    config = PreprocessConfig(spacing_mm=(1.5, 1.5, 1.5), crop="foreground", foreground_from="label")
    _, pre_label, record = preprocess(image, label, config)
    assert pre_label is not None
    foreground = (pre_label.array[0] > 0).astype(np.float32)
    softmax = Volume(np.stack([1 - foreground, foreground]), pre_label.affine)
    back = invert(softmax, record, fill_value=[1.0, 0.0])
    assert back.array.dtype == np.float32 and back.shape == label.shape
    np.testing.assert_allclose(back.array.sum(axis=0), 1.0, atol=1e-6)
    assert set(np.unique(back.array)) > {0.0, 1.0}  # interpolated, not nearest
    assert dice(back.array[1] > 0.5, label.array[0] > 0) > 0.9
    corner = back.array[:, 0, 0, 0]
    np.testing.assert_array_equal(corner, [1.0, 0.0])  # outside the crop: the fill value


def test_sheared_grid_is_resampled_onto_an_orthogonal_grid() -> None:
    image, label = blob_pair(gantry_tilt_affine(), shape=(50, 60, 20))
    pre_image, pre_label, record = preprocess(image, label, PreprocessConfig(image_fill_value=-1000.0))
    assert record.steps[1]["sheared"] and record.steps[1]["resampled"]
    assert not is_sheared(pre_image.affine)
    # In-plane spacing kept, slice spacing is the distance between slice planes.
    np.testing.assert_allclose(pre_image.spacing, (0.8, 0.8, 2.0 * np.cos(np.radians(15))))
    assert 0.5 < np.mean(pre_image.array != -1000.0) < 1.0  # the tilted volume's corners are filled
    world = world_grid(pre_image)
    source_index = (world - image.affine[:3, 3]) @ np.linalg.inv(image.affine[:3, :3]).T
    interior = np.all((source_index > 1) & (source_index < np.array(image.shape) - 2), axis=-1)
    np.testing.assert_allclose(pre_image.array[0][interior], (world @ RAMP)[interior], atol=1e-3)
    assert pre_label is not None
    back = invert(pre_label, record)
    np.testing.assert_array_equal(back.affine, label.affine)
    assert dice(back.array > 0, label.array > 0) > 0.95


def test_sheared_grid_is_refused_when_asked() -> None:
    image, _ = blob_pair(gantry_tilt_affine())
    with pytest.raises(GeometryError, match=r"sheared by 15\.00°"):
        preprocess(image, None, PreprocessConfig(on_shear="error"))


def test_crop_to_image_foreground_with_margin_keeps_world_positions() -> None:
    array = np.zeros((1, 30, 30, 30), dtype=np.int16)
    array[0, 10:15, 12:20, 5:6] = 500
    volume = Volume(array, oblique_lps_affine())
    bbox = foreground_bbox(np.any(array > 100, axis=0), margin_vox=6)
    assert bbox == ((4, 21), (6, 26), (0, 12))  # clipped at the grid's edge
    cropped, entry = crop(volume, bbox)
    assert cropped.shape == (17, 20, 12) and entry["bbox_vox"] == [[4, 21], [6, 26], [0, 12]]
    assert_same_world_voxels(cropped, volume)
    assert foreground_bbox(np.zeros((3, 4, 5), dtype=bool)) == ((0, 3), (0, 4), (0, 5))


def test_crop_to_a_world_box() -> None:
    volume = Volume(np.zeros((1, 20, 20, 20)), np.diag([2.0, 2.0, 2.0, 1.0]))
    bbox = bbox_from_mm(volume, ((3.0, 10.0), (0.0, 1.0), (100.0, -5.0)), margin_vox=1)
    assert bbox == ((1, 7), (0, 2), (0, 20))
    with pytest.raises(GeometryError, match="does not overlap"):
        bbox_from_mm(volume, ((-50.0, -40.0), (0.0, 1.0), (0.0, 1.0)))


def test_pad_is_symmetric_recorded_and_inverted() -> None:
    image, label = blob_pair(np.diag([1.0, 1.0, 1.0, 1.0]), shape=(5, 6, 7))
    padded, entry = pad(image, (8, 6, 4), value=-1.0)
    assert padded.shape == (8, 6, 7) and entry["pad_vox"] == [[1, 2], [0, 0], [0, 0]]
    assert_same_world_voxels(crop(padded, ((1, 6), (0, 6), (0, 7)))[0], image)
    assert np.all(padded.array[:, 0] == -1.0)
    _, pre_label, record = preprocess(image, label, PreprocessConfig(pad_to_shape=(8, 8, 8)))
    assert pre_label is not None and pre_label.shape == (8, 8, 8)
    np.testing.assert_array_equal(invert(pre_label, record).array, label.array)


def test_record_is_json_and_travels_with_the_volume() -> None:
    image, label = blob_pair(oblique_lps_affine())
    config = PreprocessConfig(
        spacing_mm=(2.0, 2.0, 2.0), crop="bbox", bbox_mm=((-20, 20), (-30, 10), (0, 60))
    )
    pre_image, pre_label, record = preprocess(image, label, config)
    saved = json.loads(json.dumps(record.to_dict()))
    assert saved == pre_image.meta["preprocess"]
    assert PreprocessConfig.from_dict(saved["config"]) == config
    assert pre_label is not None
    again = invert(pre_label, PreprocessRecord.from_dict(saved))
    np.testing.assert_array_equal(again.array, invert(pre_label, record).array)
    np.testing.assert_array_equal(again.affine, image.affine)
    assert "preprocess" not in again.meta


def test_invert_refuses_a_prediction_on_another_grid() -> None:
    image, _ = blob_pair(oblique_lps_affine())
    pre_image, _, record = preprocess(image, None, PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0)))
    wrong = Volume(np.zeros((1, 5, 5, 5), dtype=np.uint8), pre_image.affine)
    with pytest.raises(GeometryError, match="not on the preprocessed grid"):
        invert(wrong, record)


def test_label_on_another_grid_is_refused() -> None:
    image, label = blob_pair(oblique_lps_affine())
    affine = label.affine.copy()
    affine[0, 3] += 1.0  # 1 mm off
    with pytest.raises(GeometryError, match="does not match the image grid"):
        preprocess(image, Volume(label.array, affine))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"orientation": "RAR"}, "orientation"),
        ({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm"),
        ({"crop": "bbox"}, "bbox_mm"),
        ({"image_interpolation": "cubic"}, "image_interpolation"),
        ({"pad_to_shape": (1, 2)}, "pad_to_shape"),
    ],
)
def test_config_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**options)


def test_real_mr_lps_to_ras_keeps_every_voxel(shared_data: Path) -> None:
    source = medvol.load(shared_data / "nifti" / "example_mr_sm.nii.gz")
    assert source.orientation == "LPS"
    result, _, record = preprocess(source, None, PreprocessConfig(orientation="RAS"))
    assert result.orientation == "RAS"
    assert_same_world_voxels(result, source)
    back = invert(result, record, interpolation="nearest")
    np.testing.assert_array_equal(back.array, source.array)
    np.testing.assert_array_equal(back.affine, source.affine)


def test_real_hippocampus_round_trip(shared_data: Path) -> None:
    folder = shared_data / "msd-hippocampus"
    image = medvol.load(folder / "images" / "hippocampus_001.nii.gz")
    label = medvol.load(folder / "labels" / "hippocampus_001.nii.gz")
    config = PreprocessConfig(
        spacing_mm=(1.0, 1.0, 1.0), crop="foreground", margin_vox=2, pad_to_shape=(48, 64, 48)
    )
    _, same, record = preprocess(image, label, config)
    assert same is not None and same.shape == (48, 64, 48)
    np.testing.assert_array_equal(invert(same, record).array, label.array)

    _, coarse, record = preprocess(image, label, PreprocessConfig(spacing_mm=(0.7, 0.8, 1.3)))
    assert coarse is not None and coarse.array.dtype == label.array.dtype
    assert set(np.unique(coarse.array)) == set(np.unique(label.array)) == {0, 1, 2}
    back = invert(coarse, record)
    np.testing.assert_array_equal(back.affine, label.affine)
    for value in (1, 2):  # anterior, posterior
        assert dice(back.array == value, label.array == value) > 0.9


def test_label_foreground_crop_needs_a_label() -> None:
    image, _ = blob_pair(oblique_lps_affine())
    with pytest.raises(ValueError, match="needs a label"):
        preprocess(image, None, PreprocessConfig(crop="foreground", foreground_from="label"))
