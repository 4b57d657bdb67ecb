"""Label-to-image synthesis and writing synthetic variants of real labelled cases."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medvol.augment import (
    AugmentConfig,
    SynthesisConfig,
    labels_to_image,
    synthesis_config_from_dict,
    synthesize_cases,
)
from medvol.errors import MedvolError
from medvol.io import load

HIPPOCAMPUS_CASES = ("hippocampus_001", "hippocampus_003")  # uint8 image; float32 image with a float label


def label_map() -> np.ndarray:
    label = np.zeros((1, 32, 36, 30), np.uint8)
    label[0, 6:20, 8:30, 5:25] = 1
    label[0, 10:16, 12:20, 10:18] = 2
    return label


def region_means(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    return np.array([image[label == value].mean() for value in np.unique(label)])


def test_labels_to_image_draws_new_contrasts_on_an_unchanged_label() -> None:
    label = label_map()
    means = []
    for seed in range(3):
        image, out_label = labels_to_image(label, seed)
        assert np.array_equal(out_label, label) and out_label.dtype == label.dtype
        assert image.dtype == np.float32 and image.shape == label.shape
        assert image.min() == 0.0 and image.max() == 1.0
        means.append(region_means(image, label))
    # Each draw separates the regions (background included) ...
    assert all(np.ptp(m) > 0.05 for m in means)
    # ... with a different contrast from draw to draw.
    assert not np.allclose(means[0], means[1], atol=0.05)
    assert not np.allclose(means[1], means[2], atol=0.05)


def test_labels_to_image_is_reproducible() -> None:
    label = label_map()
    spatial = AugmentConfig(affine_prob=1.0)
    first, again = labels_to_image(label, 11, spatial=spatial), labels_to_image(label, 11, spatial=spatial)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], labels_to_image(label, 12, spatial=spatial)[0])


def test_labels_to_image_with_spatial_augmentation_moves_image_and_label_together() -> None:
    label = label_map()
    config = SynthesisConfig(mean_range=(0.0, 1.0), std_range=(0.0, 0.01), noise_std=0.0)
    image, moved = labels_to_image(label, 4, config, AugmentConfig(affine_prob=1.0, rotate_deg=25.0))
    assert not np.array_equal(moved, label)
    assert set(np.unique(moved).tolist()) <= {0, 1, 2}
    # Inside each moved region the intensity is homogeneous: the image was drawn on the moved label.
    within = max(image[moved == value].std() for value in np.unique(moved))
    assert within < 0.5 * np.ptp(region_means(image, moved))


def test_synthesis_config_unknown_keys_are_named() -> None:
    with pytest.raises(MedvolError, match="mean_rnage"):
        synthesis_config_from_dict({"mean_rnage": [0, 1]})
    assert synthesis_config_from_dict({"gamma_range": [0.9, 1.1]}).gamma_range == (0.9, 1.1)


@pytest.fixture
def hippocampus_cases(shared_data: Path) -> list[tuple[Path, Path]]:
    root = shared_data / "msd-hippocampus"
    return [
        (root / "images" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz") for case in HIPPOCAMPUS_CASES
    ]


@pytest.mark.shared
@pytest.mark.parametrize("mode", ["augment", "labels-to-image"])
def test_synthesize_cases_writes_variants_on_the_source_grid(
    hippocampus_cases: list[tuple[Path, Path]], tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "synthetic"
    report = synthesize_cases(hippocampus_cases, 2, out, seed=3, mode=mode)  # type: ignore[arg-type]
    assert report.errors == [] and len(report.written) == 4 and report.skipped == 0

    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["case_id"], row["variant"]) for row in rows] == [
        (case, str(k)) for case in HIPPOCAMPUS_CASES for k in range(2)
    ]
    for row in rows:
        source_image, source_label = load(row["source_image"]), load(row["source_label"])
        image, label = load(out / row["image"]), load(out / row["label"])
        np.testing.assert_allclose(image.affine, source_image.affine, atol=1e-5)
        np.testing.assert_allclose(label.affine, source_label.affine, atol=1e-5)
        assert image.shape == label.shape == source_image.shape
        assert image.array.dtype == np.float32 and label.array.dtype.kind in "iu"
        assert set(np.unique(label.array).tolist()) <= {0, 1, 2}
        assert not np.array_equal(image.array, source_image.array.astype(np.float32))

    png = (out / "preview.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from matplotlib.image import imread

    pixels = imread(out / "preview.png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and np.ptp(pixels[..., :3]) > 0


@pytest.mark.shared
def test_synthesize_cases_resumes_and_is_deterministic(
    hippocampus_cases: list[tuple[Path, Path]], tmp_path: Path
) -> None:
    first = synthesize_cases(hippocampus_cases, 2, tmp_path / "a", seed=5, mode="labels-to-image")
    files = sorted(p for p in (tmp_path / "a").rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}

    again = synthesize_cases(hippocampus_cases, 2, tmp_path / "a", seed=5, mode="labels-to-image")
    assert again.written == [] and again.skipped == 4
    assert sorted(p for p in (tmp_path / "a").rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps, "a rerun must not rewrite anything"

    # A lost variant is redone identically; a case processed alone gets the same variants.
    lost = first.written[1]
    expected = load(lost).array
    lost.unlink()
    redo = synthesize_cases(hippocampus_cases[:1], 2, tmp_path / "a", seed=5, mode="labels-to-image")
    assert redo.written == [lost]
    np.testing.assert_array_equal(load(lost).array, expected)
    assert len((tmp_path / "a" / "manifest.csv").read_text().splitlines()) == 1 + 4, (
        "rows of other cases kept"
    )

    # Another seed into the same folder would mix runs: refused.
    with pytest.raises(MedvolError, match="seed 5"):
        synthesize_cases(hippocampus_cases, 2, tmp_path / "a", seed=6, mode="labels-to-image")


def test_synthesize_cases_reports_a_broken_case_and_goes_on(tmp_path: Path) -> None:
    import nibabel as nib

    label = label_map()
    good_image, good_label = tmp_path / "good_img.nii.gz", tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(label[0].astype(np.float32), np.eye(4)), good_image)
    nib.save(nib.Nifti1Image(label[0], np.eye(4)), good_label)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    report = synthesize_cases([(good_image, broken), (good_image, good_label)], 1, tmp_path / "out", seed=0)
    assert len(report.errors) == 1 and "broken.nii.gz" in report.errors[0][1]
    assert [p.name for p in report.written] == ["good_aug000.nii.gz"]


@pytest.mark.shared
def test_augment_mode_never_copies_a_case(hippocampus_cases: list[tuple[Path, Path]], tmp_path: Path) -> None:
    """A draw where no stage fires is drawn again: no variant equals its source (a duplicate case)."""
    rare = AugmentConfig(
        **{f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")}
    )
    rare = dataclasses.replace(rare, noise_prob=0.1)
    report = synthesize_cases(hippocampus_cases[:1], 6, tmp_path / "rare", seed=0, augment=rare)
    assert report.errors == [] and len(report.written) == 6
    source = load(hippocampus_cases[0][0]).array.astype(np.float32)
    for path in report.written:
        assert not np.allclose(load(path).array, source, atol=1e-4)
    off = dataclasses.replace(rare, noise_prob=0.0)
    report = synthesize_cases(hippocampus_cases[:1], 1, tmp_path / "off", seed=0, augment=off)
    assert "changed nothing" in report.errors[0][1]


def test_synthetic_images_keep_the_source_modality(tmp_path: Path) -> None:
    """A variant of a CT scan is a CT scan for `medvol plan` (its sidecar says so)."""
    from medvol.io import save
    from medvol.volume import Volume

    rng = np.random.default_rng(0)
    label = Volume(label_map(), np.eye(4))
    image = Volume(rng.normal(size=label.array.shape).astype(np.float32), np.eye(4), {"modality": "CT"})
    save(image, tmp_path / "src" / "case.nii.gz")
    save(label, tmp_path / "src" / "case_label.nii.gz")
    report = synthesize_cases(
        [(tmp_path / "src/case.nii.gz", tmp_path / "src/case_label.nii.gz")], 1, tmp_path / "out", seed=1
    )
    (written,) = report.written
    assert load(written).meta["modality"] == "CT"


def only(**stages: object) -> AugmentConfig:
    """An ``AugmentConfig`` with every stage off except ``stages`` (values given)."""
    off = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")}
    return AugmentConfig(**{**off, **stages})  # type: ignore[arg-type]


def write_case(folder: Path, image: np.ndarray, label: np.ndarray, name: str = "case") -> tuple[Path, Path]:
    """``image`` and ``label`` ``(1, X, Y, Z)`` as NIfTI files with a 1 mm identity affine."""
    from medvol.io import save
    from medvol.volume import Volume

    paths = folder / "images" / f"{name}.nii.gz", folder / "labels" / f"{name}.nii.gz"
    save(Volume(image, np.eye(4)), paths[0])
    save(Volume(label, np.eye(4)), paths[1])
    return paths


def test_labels_to_image_leaves_no_frame_at_the_border() -> None:
    """Blur with zero padding darkened the border faces by over a background std; edges are extended."""
    label = np.zeros((1, 40, 40, 40), np.uint8)
    label[0, 15:25, 15:25, 15:25] = 1
    plain = SynthesisConfig(bias_coeff_range=(0.0, 0.0), noise_std=0.0, blur_sigma_vox=(1.0, 1.5))
    for seed in range(8):
        image = labels_to_image(label, seed, plain)[0][0]
        faces = np.concatenate(
            [image[[0, -1]].ravel(), image[:, [0, -1]].ravel(), image[..., [0, -1]].ravel()]
        )
        interior = image[3:-3, 3:-3, 3:-3][label[0, 3:-3, 3:-3, 3:-3] == 0]
        assert abs(faces.mean() - interior.mean()) < 0.5 * interior.std(), seed


def test_rotations_fill_with_the_background_not_the_mean(tmp_path: Path) -> None:
    """Voxels rotated in from outside the field of view get the border's value (10), not the mean (≈ 47)."""
    from scipy import ndimage

    image = np.full((1, 30, 30, 30), 10.0, np.float32)
    label = np.zeros((1, 30, 30, 30), np.uint8)
    image[0, 10:20, 10:20, 10:20], label[0, 10:20, 10:20, 10:20] = 1000.0, 1
    rotate = only(affine_prob=1.0, rotate_deg=45.0, scale_range=0.0)
    report = synthesize_cases(
        [write_case(tmp_path, image, label)], 3, tmp_path / "out", seed=0, augment=rotate
    )
    assert report.errors == [] and len(report.written) == 3
    for path in report.written:
        variant = load(path).array[0]
        moved = load(path.parents[1] / "labels" / path.name).array[0]
        far = ~ndimage.binary_dilation(moved == 1, iterations=3)
        np.testing.assert_allclose(variant[far], 10.0, atol=1e-3)


def test_variants_of_a_case_are_never_byte_identical(tmp_path: Path) -> None:
    """Flips alone have 7 outcomes other than the source: 6 variants must be 6 distinct ones."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 12, 14, 10)).astype(np.float32)
    label = (image > 1).astype(np.uint8)
    flips = only(flip_axes=(0, 1, 2), flip_prob=0.5)
    source = write_case(tmp_path, image, label)
    report = synthesize_cases([source], 6, tmp_path / "out", seed=0, augment=flips)
    assert report.errors == [] and len(report.written) == 6
    contents = [load(path).array.tobytes() for path in report.written]
    assert len(set(contents)) == 6 and image.tobytes() not in contents

    # A lost variant is redone identically (it must differ from the variants before it only).
    lost = report.written[3]
    lost.unlink()
    synthesize_cases([source], 6, tmp_path / "out", seed=0, augment=flips)
    assert load(lost).array.tobytes() == contents[3]

    # One flippable axis has one outcome: a second variant cannot differ, and the case says so.
    one_axis = only(flip_axes=(0,), flip_prob=0.5)
    report = synthesize_cases([source], 2, tmp_path / "one", seed=0, augment=one_axis)
    assert len(report.written) == 1 and "repeated an earlier variant" in report.errors[0][1]
