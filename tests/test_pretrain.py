"""``medvol pretrain``: restoration pretraining without labels, then ``model.init`` fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import medvol
from medvol import demo
from medvol.augment.restoration import bezier_intensity, distort, inpaint, outpaint, shuffle_boxes
from medvol.cli import main
from medvol.config import load_config
from medvol.engine.train import train
from medvol.errors import MedvolError
from tests.shared_samples import write_config, write_medmnist_subset


def smooth_image() -> np.ndarray:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 24, 16)), indexing="ij")
    return np.exp(-(x**2 + y**2 + z**2))[None].astype(np.float32)


def test_each_distortion_keeps_shape_and_range_and_changes_the_image() -> None:
    image, rng = smooth_image(), np.random.default_rng(0)
    low, high = float(image.min()), float(image.max())
    shuffled = shuffle_boxes(image, rng)
    assert sorted(shuffled.ravel()) == sorted(image.ravel()), "shuffling only moves voxels"
    for out in (shuffled, bezier_intensity(image, low, high, rng), inpaint(image, low, high, rng)):
        assert out.shape == image.shape and out.dtype == np.float32
        assert low - 1e-6 <= out.min() and out.max() <= high + 1e-6
        assert not np.array_equal(out, image)
    painted = outpaint(image, low, high, rng)
    kept = painted == image
    assert 0.02 < kept.mean() < 0.9, "some boxes kept, the rest noise"
    again = distort(image, np.random.default_rng(5))
    np.testing.assert_array_equal(again, distort(image, np.random.default_rng(5)))
    np.testing.assert_array_equal(image, smooth_image())  # the input is not changed


def test_pretrain_a_unet_then_fine_tune_from_it(tmp_path: Path) -> None:
    """A tiny UNet restores the bundled hippocampus training images for a few steps; a supervised
    run starts from those weights (all but the output layer) and says so."""
    root = demo.sample("hippocampus") / "train"
    config = demo.hippocampus_segmenter(
        root, epochs=2, output_dir=tmp_path / "runs", name="pre", batch_size=4
    )
    config["train"]["device"] = "cpu"
    path = write_config(tmp_path / "seg.yaml", config)
    assert main(["pretrain", str(path)]) == 0
    run = tmp_path / "runs" / "pre"
    saved = torch.load(run / "checkpoints" / "pretrained.pt", weights_only=True)
    history = json.loads((run / "pretrain.json").read_text())["history"]
    assert len(history) == 2 and all(np.isfinite(h["loss"]) and h["steps"] > 0 for h in history)
    left_out = saved["pretraining"]["left_out"]
    assert left_out and all(name not in saved["model"] for name in left_out)
    with pytest.raises(MedvolError, match="pretrained checkpoint already"):
        main(["pretrain", str(path), "--debug"])

    config["model"]["init"] = str(run / "checkpoints" / "pretrained.pt")
    config["train"]["epochs"] = 1
    config["optimizer"]["lr"] = 1e-12  # the start is what is checked
    config["tracking"]["name"] = "tuned"
    tuned = train(load_config(write_config(tmp_path / "tune.yaml", config)))
    record = json.loads((tuned / "environment.json").read_text())["initial_weights"]
    assert record["loaded"] == len(saved["model"]) and sorted(record["missing"]) == sorted(left_out)
    assert record["unexpected"] == [] and record["mismatched"] == []
    weights = torch.load(tuned / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, tensor in saved["model"].items():
        if tensor.is_floating_point() and "running" not in name:
            torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6)


def test_pretrain_a_resnet_encoder_for_a_classifier(tmp_path: Path) -> None:
    bundled = Path(medvol.__file__).parent / "samples" / "adrenalmnist3d.npz"
    small = write_medmnist_subset(bundled, tmp_path / "adrenal.npz", {"train": 32, "val": 8, "test": 4})
    config = demo.medmnist_classifier(small, epochs=1, output_dir=tmp_path / "runs", name="pre", widths=4)
    from medvol.engine.pretrain import pretrain

    run = pretrain(load_config(write_config(tmp_path / "cls.yaml", config)))
    saved = torch.load(run / "checkpoints" / "pretrained.pt", weights_only=True)
    assert sorted(saved["pretraining"]["left_out"]) == ["fc.bias", "fc.weight"]
    assert any(name.startswith("stem.") for name in saved["model"])
    assert not any(name.startswith("decoder") for name in saved["model"])
