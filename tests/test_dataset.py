"""Training datasets: cache, patches, seeding across epochs and workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medvol.augment import AugmentConfig, build_augmenter
from medvol.data import validate
from medvol.data.cache import VolumeCache
from medvol.data.dataset import ArrayClassificationDataset, SegmentationDataset, random_patch, seed_worker
from medvol.transforms import PreprocessConfig, ZScore


@pytest.fixture()
def hippocampus_dataset(shared_data: Path, tmp_path: Path) -> SegmentationDataset:
    cases = validate(shared_data / "msd-hippocampus").usable[:3]
    return SegmentationDataset(
        cases,
        PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0)),
        ZScore(per_scan=True),
        VolumeCache(tmp_path / "cache"),
        patch_size=(24, 32, 24),
        augmenter=build_augmenter(AugmentConfig(), seed=0),
        seed=3,
    )


def test_samples_come_from_the_cache_after_first_use(hippocampus_dataset: SegmentationDataset) -> None:
    sample = hippocampus_dataset[0]
    assert sample["image"].shape == (1, 24, 32, 24) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (1, 24, 32, 24) and sample["label"].dtype == torch.int64
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2}
    entries = list(hippocampus_dataset.cache.root.iterdir())
    assert len(entries) == 1
    entry = hippocampus_dataset.entry(0)
    assert isinstance(entry.arrays["image"], np.memmap)
    # Whole-volume statistics: z-scored per scan on the preprocessed grid.
    assert abs(float(np.mean(entry.arrays["image"]))) < 1e-3
    assert entry.meta["record"]["source_shape"] == list(entry.arrays["label"].shape[1:])
    assert np.array_equal(entry.arrays["foreground"], np.argwhere(entry.arrays["label"][0] > 0))


def test_draws_repeat_per_epoch_and_differ_between_epochs(hippocampus_dataset: SegmentationDataset) -> None:
    hippocampus_dataset.set_epoch(0)
    first = hippocampus_dataset[1]["image"]
    hippocampus_dataset.set_epoch(0)
    again = hippocampus_dataset[1]["image"]
    hippocampus_dataset.set_epoch(1)
    other = hippocampus_dataset[1]["image"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_workers_do_not_repeat_each_other(hippocampus_dataset: SegmentationDataset) -> None:
    hippocampus_dataset.cases = hippocampus_dataset.cases[:1] * 4  # one case drawn four times
    hippocampus_dataset.set_epoch(0)
    loader = DataLoader(hippocampus_dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker)
    images = [batch["image"] for batch in loader]
    # Items 0, 2 go to worker 0 and 1, 3 to worker 1: the first draw of each worker differs.
    assert not torch.equal(images[0], images[1])


def test_random_patch_pads_and_oversamples_foreground() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((1, 10, 40, 40), np.float32)
    label = np.zeros((1, 10, 40, 40), np.int16)
    label[0, 5, 35, 35] = 1
    hits = 0
    for _ in range(300):
        patch_image, patch_label = random_patch(image, label, (16, 8, 8), rng)
        assert patch_image.shape == (1, 16, 8, 8)
        hits += int(patch_label.any())
    assert 0.25 < hits / 300 < 0.5  # a third centred on the voxel, a few more by chance
    known = np.argwhere(label[0] > 0)
    for seed in range(50):  # precomputed foreground indices give the same patches
        found = random_patch(image, label, (16, 8, 8), np.random.default_rng(seed))
        given = random_patch(image, label, (16, 8, 8), np.random.default_rng(seed), known)
        assert all(np.array_equal(a, b) for a, b in zip(found, given, strict=True))


def test_array_classification_dataset_scales_to_unit_range() -> None:
    images = np.full((3, 28, 28, 28), 255, np.uint8)
    dataset = ArrayClassificationDataset(images, np.array([0, 1, 0]), prefix="train")
    sample = dataset[1]
    assert sample["case_id"] == "train-00001"
    assert sample["image"].shape == (1, 28, 28, 28)
    assert float(sample["image"].max()) == 1.0
    assert int(sample["label"]) == 1
