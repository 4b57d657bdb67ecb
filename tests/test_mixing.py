"""``augment.mix``: CarveMix for segmentation, MixUp and CutMix (soft targets) for classification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medvol
from medvol.augment import AugmentConfig, worker_seed
from medvol.augment.mixing import BatchMixer, carve_region
from medvol.errors import MedvolError
from medvol.losses import create_loss

BATCH = 6


def constant_images(n: int = BATCH, shape: tuple[int, int, int] = (12, 10, 8)) -> torch.Tensor:
    """``(n, 1, *shape)``: sample ``i`` is the constant ``i + 1``, so every voxel says where it came from."""
    return torch.arange(1, n + 1, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(n, 1, *shape).clone()


def label_maps(n: int = BATCH, shape: tuple[int, int, int] = (12, 10, 8)) -> torch.Tensor:
    """``(n, 1, *shape)`` int64: each sample a box of class 1 and one of class 2, at its own place."""
    label = torch.zeros((n, 1, *shape), dtype=torch.int64)
    for i in range(n):
        label[i, 0, i : i + 3, 1:4, 2:5] = 1
        label[i, 0, 6:9, i % 5 : i % 5 + 3, 4:7] = 2
    label[0] = 0  # a sample without foreground gives nothing to paste
    return label


def test_carvemix_pastes_image_and_label_together() -> None:
    config = AugmentConfig(mix="carvemix", mix_prob=1.0, carve_margin_vox=(1.0, 2.0))
    mixer = BatchMixer(config, num_classes=3, seed=0)
    image, label = constant_images(), label_maps()
    out_image, out_label = mixer(image, label)
    assert mixer.last is not None
    partner, weight = mixer.last.partner, mixer.last.weight
    assert (partner >= 0).all() and (partner != np.arange(BATCH)).all()
    for i in range(BATCH):
        j = int(partner[i])
        source = out_image[i, 0]  # i + 1 where the sample kept its own voxels, j + 1 where pasted
        assert set(source.unique().tolist()) <= {i + 1.0, j + 1.0}
        pasted = source == j + 1
        # label and image come from the same case, voxel by voxel
        assert torch.equal(out_label[i, 0][pasted], label[j, 0][pasted])
        assert torch.equal(out_label[i, 0][~pasted], label[i, 0][~pasted])
        # the partner's whole structure came, and nothing beyond the largest margin (2 voxels)
        assert bool(pasted[label[j, 0] > 0].all())
        assert not bool((pasted & ~carve_region(label[j, 0] > 0, 2)).any())
        # the recorded weight is the share of the sample's own voxels; class counts follow it
        assert weight[i] == pytest.approx(1 - float(pasted.float().mean()))
        for k in (0, 1, 2):
            expected = int((label[i, 0][~pasted] == k).sum() + (label[j, 0][pasted] == k).sum())
            assert int((out_label[i, 0] == k).sum()) == expected
    assert weight[np.flatnonzero(partner == 0)].tolist() == [1.0] * int((partner == 0).sum())


def test_carve_region_is_the_dilated_foreground() -> None:
    foreground = torch.zeros((9, 9, 9), dtype=torch.bool)
    foreground[4, 4, 4] = True
    assert int(carve_region(foreground, 0).sum()) == 1
    assert int(carve_region(foreground, 2).sum()) == 5**3


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_soft_targets_carry_the_mixing_weights(mix: str) -> None:
    """The target's share of each class is the share of the image that came from each case."""
    config = AugmentConfig(mix=mix, mix_prob=0.7, mix_alpha=0.4)  # type: ignore[arg-type]
    mixer = BatchMixer(config, num_classes=3, seed=1)
    image, classes = constant_images(), torch.tensor([0, 1, 2, 0, 1, 2])
    out, target = mixer(image, classes[:, None])
    assert mixer.last is not None
    partner, weight = mixer.last.partner, mixer.last.weight
    assert target.shape == (BATCH, 3) and target.dtype == torch.float32
    torch.testing.assert_close(target.sum(1), torch.ones(BATCH))
    assert (partner < 0).any() and (partner >= 0).any(), "mix_prob 0.7 over 6 samples: some of each"
    for i in range(BATCH):
        if partner[i] < 0:
            assert torch.equal(out[i], image[i]) and torch.equal(target[i], F.one_hot(classes[i], 3).float())
            continue
        j = int(partner[i])
        if mix == "mixup":  # λ(i + 1) + (1 − λ)(j + 1), constant
            own = float((out[i].mean() - (j + 1)) / (i - j))
        else:  # voxels are i + 1 or j + 1
            assert set(out[i].unique().tolist()) <= {i + 1.0, j + 1.0}
            own = float((out[i] == i + 1).float().mean())
        assert own == pytest.approx(weight[i], abs=1e-5)
        expected = weight[i] * F.one_hot(classes[i], 3) + (1 - weight[i]) * F.one_hot(classes[j], 3)
        torch.testing.assert_close(target[i], expected.float())


@pytest.mark.parametrize("mix", ["carvemix", "mixup", "cutmix"])
def test_mixing_is_reproducible_per_seed(mix: str) -> None:
    config = AugmentConfig(mix=mix, mix_prob=0.8)  # type: ignore[arg-type]
    target = label_maps() if mix == "carvemix" else torch.tensor([0, 1, 2, 0, 1, 2])
    image = constant_images() + torch.rand(
        constant_images().shape, generator=torch.Generator().manual_seed(0)
    )
    given = image.clone()

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return BatchMixer(config, num_classes=3, seed=worker_seed(seed, 0, 0, 2))(image, target)

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert torch.equal(image, given), "the input batch is not changed"


def test_cross_entropy_takes_soft_targets() -> None:
    loss = create_loss("cross_entropy")
    logits, classes = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(loss(logits, F.one_hot(classes, 3).float()), loss(logits, classes))
    lam = 0.3
    soft = lam * F.one_hot(classes, 3).float() + (1 - lam) * F.one_hot(classes.flip(0), 3).float()
    expected = lam * loss(logits, classes) + (1 - lam) * loss(logits, classes.flip(0))
    torch.testing.assert_close(loss(logits, soft), expected)
    with pytest.raises(ValueError, match="summing to 1"):
        loss(logits, torch.full((4, 3), 0.5))


def test_mixing_must_fit_the_task() -> None:
    from medvol import demo
    from medvol.config import parse_config

    segmenter = demo.hippocampus_segmenter("cases", epochs=1)
    with pytest.raises(MedvolError, match=r"augment\.mix: mixup is for classification.*carvemix"):
        parse_config({**segmenter, "augment": {"mix": "mixup"}})
    classifier = demo.medmnist_classifier("a.npz", epochs=1)
    with pytest.raises(MedvolError, match=r"augment\.mix: carvemix is for segmentation"):
        parse_config({**classifier, "augment": {"mix": "carvemix"}})
    with pytest.raises(MedvolError, match="mix_alpha must be > 0"):
        parse_config({**classifier, "augment": {"mix": "mixup", "mix_alpha": 0}})
    assert parse_config({**classifier, "augment": {"mix": "cutmix"}}).augment is not None


@pytest.mark.parametrize("mix", ["mixup", "carvemix"])
def test_a_run_trains_with_mixing(tmp_path: Path, mix: str) -> None:
    """One short real epoch per task with mixing on: the trainer feeds the mixed batch to the loss."""
    from medvol import demo
    from medvol.config import load_config
    from medvol.engine.train import train
    from tests.shared_samples import write_config, write_medmnist_subset

    if mix == "mixup":
        bundled = Path(medvol.__file__).parent / "samples" / "adrenalmnist3d.npz"
        small = write_medmnist_subset(bundled, tmp_path / "adrenal.npz", {"train": 32, "val": 16, "test": 8})
        config = demo.medmnist_classifier(small, epochs=1, output_dir=tmp_path / "runs", widths=4)
    else:
        root = demo.sample("hippocampus") / "train"
        config = demo.hippocampus_segmenter(root, epochs=1, output_dir=tmp_path / "runs", batch_size=2)
    config["augment"] = {"mix": mix, "mix_prob": 1.0, "where": "sample"}
    config["train"]["device"] = "cpu"
    run_dir = train(load_config(write_config(tmp_path / "mix.yaml", config)))
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["train_loss"]) and record["train_loss"] > 0
