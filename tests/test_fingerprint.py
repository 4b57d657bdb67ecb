"""Dataset fingerprint and plan (``medvol plan``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from medvol.cli import main
from medvol.data.fingerprint import MAX_PATCH_VOXELS, patch_size, target_spacing
from medvol.transforms import Normalizer, PreprocessConfig, ZScore


def test_target_spacing_is_median_unless_anisotropic() -> None:
    assert target_spacing([[1, 1, 1], [1, 1, 2], [1, 1, 3]]) == [1.0, 1.0, 2.0]
    # Slices of 1..10 mm with 0.5 mm pixels: the coarse axis takes its 10th percentile
    # (1.9 mm) rather than its median (5.5 mm).
    spacings = [[0.5, 0.5, float(z)] for z in range(1, 11)]
    assert target_spacing(spacings) == [0.5, 0.5, 1.9]


def test_patch_size_rounds_up_and_respects_budget() -> None:
    assert patch_size([35, 50, 36]) == [40, 56, 40]
    big = patch_size([512, 512, 300])
    assert np.prod(big) <= MAX_PATCH_VOXELS
    assert all(p % 8 == 0 for p in big)


def test_hippocampus_plan_matches_the_field(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.yaml"
    assert main(["plan", str(shared_data / "msd-hippocampus"), "--out", str(out)]) == 0
    plan = yaml.safe_load(out.read_text())
    assert plan["preprocess"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert plan["patch_size"] == [40, 56, 40]  # what nnU-Net plans for this task
    assert plan["normalize"]["params"]["per_scan"] is True  # MR: z-score each scan
    assert PreprocessConfig.from_dict(plan["preprocess"]).spacing_mm == (1.0, 1.0, 1.0)
    normalizer = Normalizer.from_dict({**plan["normalize"], "learned": {}})
    assert isinstance(normalizer, ZScore)
    assert out.with_suffix(".fingerprint.json").is_file()
