"""Dataset fingerprint and plan (``medvol plan``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from medvol.cli import main
from medvol.data.cases import Case
from medvol.data.fingerprint import MAX_PATCH_VOXELS, fingerprint, make_plan, patch_size, target_spacing
from medvol.io import save
from medvol.transforms import Normalizer, PreprocessConfig, ZScore
from medvol.volume import Volume


def test_target_spacing_is_median_unless_anisotropic() -> None:
    assert target_spacing([[1, 1, 1], [1, 1, 2], [1, 1, 3]]) == [1.0, 1.0, 2.0]
    # Slices of 1..10 mm with 0.5 mm pixels: the coarse axis takes its 10th percentile
    # (1.9 mm) rather than its median (5.5 mm).
    spacings = [[0.5, 0.5, float(z)] for z in range(1, 11)]
    assert target_spacing(spacings) == [0.5, 0.5, 1.9]


def test_patch_size_fits_in_the_median_shape_and_respects_budget() -> None:
    assert patch_size([35, 50, 36]) == [32, 48, 32]
    assert patch_size([5.0, 64, 64]) == [5, 64, 64]  # an axis under 8 voxels keeps its length
    big = patch_size([512, 512, 300])
    assert np.prod(big) <= MAX_PATCH_VOXELS
    assert all(p % 8 == 0 for p in big)
    rng = np.random.default_rng(0)
    for median in rng.uniform(1, 400, size=(200, 3)):
        assert all(p <= m for p, m in zip(patch_size(median), median, strict=True)), median


def test_patch_size_ignores_float_noise_in_the_median_shape() -> None:
    assert patch_size([24.000002, 319.9999997, 36.5]) == [24, 320, 32]


def test_plan_of_a_24_slice_dataset_with_spacing_noise_has_a_24_slice_patch() -> None:
    # Spacings as a scanner writes them: 0.7999999 mm pixels, 3.0000001 mm slices.
    measured = {
        "modality": "CT",
        "spacings_mm": [[0.7999999, 0.7999999, 3.0000001]] * 3,
        "shapes": [[100, 100, 24]] * 3,
    }
    plan = make_plan(measured)
    assert plan["preprocess"]["spacing_mm"] == [0.8, 0.8, 3.0]
    assert plan["patch_size"] == [96, 96, 24]


def test_fingerprint_measures_along_ras_axes(tmp_path: Path) -> None:
    # A sagittal stack stored with its slice axis first: index axes point S, A, R.
    affine = np.array([[0, 0, 0.5, 0], [0, 0.5, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    image = save(Volume(np.ones((1, 12, 64, 48), np.float32), affine), tmp_path / "image.nii.gz")
    label = save(Volume(np.ones((1, 12, 64, 48), np.uint8), affine), tmp_path / "label.nii.gz")
    measured = fingerprint([Case("sagittal", (image,), label)])
    assert measured["spacings_mm"] == [[0.5, 0.5, 4.0]]
    assert measured["shapes"] == [[48, 64, 12]]
    assert make_plan(measured)["patch_size"] == [48, 64, 8]


def test_hippocampus_plan_matches_the_field(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.yaml"
    assert main(["plan", str(shared_data / "msd-hippocampus"), "--out", str(out)]) == 0
    plan = yaml.safe_load(out.read_text())
    assert plan["preprocess"]["spacing_mm"] == [1.0, 1.0, 1.0]
    # Median shape (35, 50, 36): the patch fits in it (nnU-Net rounds up, to 40, 56, 40).
    assert plan["patch_size"] == [32, 48, 32]
    assert plan["normalize"]["params"]["per_scan"] is True  # MR: z-score each scan
    assert PreprocessConfig.from_dict(plan["preprocess"]).spacing_mm == (1.0, 1.0, 1.0)
    normalizer = Normalizer.from_dict({**plan["normalize"], "learned": {}})
    assert isinstance(normalizer, ZScore)
    assert out.with_suffix(".fingerprint.json").is_file()


def test_plan_without_a_usable_case_says_why(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    series = shared_data / "dicom" / "ct-jpeg2000-series"  # one scan, no label map
    for root, counts in ((tmp_path / "empty", "0 found"), (series, "1 found: 1 unusable")):
        assert main(["plan", str(root), "--out", str(tmp_path / "plan.yaml")]) == 1
        err = capsys.readouterr().err
        assert f"{root}: no usable case to plan from ({counts}" in err and "unexpected" not in err
    assert not (tmp_path / "plan.yaml").exists()
