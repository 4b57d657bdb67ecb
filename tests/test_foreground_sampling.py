"""Foreground-aware patch sampling: ``data.foreground_fraction`` of training patches contain foreground.

A small target (a tumour of 0.2 % of the voxels) is rarely inside a uniformly
placed patch; the share of patches centred on a labelled voxel is a config key
whose default (1/3, as nnU-Net) keeps earlier runs' patches draw for draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import medvol
from medvol.config import dump_config, parse_config
from medvol.data.dataset import FOREGROUND_FRACTION, random_patch
from medvol.demo import hippocampus_segmenter
from medvol.engine.distributed import Runtime
from medvol.engine.run_folder import RunFolder
from medvol.errors import MedvolError
from medvol.tasks import task_for

HIPPOCAMPUS = Path(str(medvol.sample("hippocampus")))


def _small_target() -> tuple[np.ndarray, np.ndarray]:
    """A 60×60×30 volume whose label has 2 foreground voxels (0.002 %), one at a corner."""
    image = np.random.default_rng(1).normal(size=(1, 60, 60, 30)).astype(np.float32)
    label = np.zeros((1, 60, 60, 30), np.uint8)
    label[0, 30, 31, 15] = 1
    label[0, 59, 0, 29] = 2  # a corner: the patch must shift to stay inside the volume
    return image, label


@pytest.mark.parametrize("size", [(16, 16, 16), (8, 24, 40), (64, 4, 4)])
def test_fraction_one_always_gives_foreground(size: tuple[int, int, int]) -> None:
    image, label = _small_target()
    rng = np.random.default_rng(0)
    for _ in range(300):
        patch_image, patch_label = random_patch(image, label, size, rng, foreground_fraction=1.0)
        assert patch_image.shape == (1, *size)
        assert patch_label.any()


def test_fraction_zero_places_patches_uniformly() -> None:
    image, label = _small_target()
    rng = np.random.default_rng(0)
    hits = sum(
        int(random_patch(image, label, (16, 16, 16), rng, foreground_fraction=0.0)[1].any())
        for _ in range(300)
    )
    # a uniform 16³ corner catches the centre voxel with probability (16/45)² ≈ 0.13, the corner one ~never
    assert hits / 300 < 0.22


def test_the_default_is_a_third_and_draws_as_before() -> None:
    image, label = _small_target()
    assert FOREGROUND_FRACTION == 1 / 3
    for seed in range(30):
        default = random_patch(image, label, (16, 16, 16), np.random.default_rng(seed))
        explicit = random_patch(image, label, (16, 16, 16), np.random.default_rng(seed), None, 1 / 3)
        assert all(np.array_equal(a, b) for a, b in zip(default, explicit, strict=True))


def _config(**data: Any) -> dict[str, Any]:
    config = hippocampus_segmenter(HIPPOCAMPUS / "train", epochs=1, patch_size=(8, 8, 8))
    config["data"].update(data)
    return config


def test_the_config_key_reaches_the_training_patches(tmp_path: Path) -> None:
    default = parse_config(_config())
    assert default.data.foreground_fraction == 1 / 3
    config = parse_config(_config(foreground_fraction=1.0))
    assert parse_config(yaml.safe_load(dump_config(config))) == config  # saved with the run, read back
    data = task_for(config).build_data(Runtime(torch.device("cpu")), RunFolder(tmp_path / "run"))
    assert data.train.foreground_fraction == 1.0  # type: ignore[union-attr]
    for epoch in range(3):
        data.train.set_epoch(epoch)  # type: ignore[union-attr]
        for index in range(len(data.train)):
            assert data.train[index]["label"].any()  # 8³ patches of ~50×40×40 volumes, always on the target


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"foreground_fraction": 1.5}, "less than or equal to 1"),
        (
            {"foreground_fraction": 0.5, "patch_size": None},
            "needs data.task: segmentation and a data.patch_size",
        ),
    ],
)
def test_foreground_fraction_is_checked(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(MedvolError, match=problem):
        parse_config(_config(**data))


def test_a_classifier_refuses_foreground_fraction() -> None:
    config = {
        "data": {
            "task": "classification",
            "root": "cases.csv",
            "num_classes": 2,
            "input_shape": [16, 16, 16],
            "foreground_fraction": 0.5,
        },
        "model": {"name": "resnet10", "options": {"in_channels": 1, "num_classes": 2}},
        "loss": {"name": "cross_entropy"},
    }
    with pytest.raises(MedvolError, match=r"data\.foreground_fraction is the share of segmentation"):
        parse_config(config)
