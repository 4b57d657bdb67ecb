"""Clips as 3D input: a ResNet that convolves along time learns what only the order of frames shows.

The clips (``medvol.synthetic_clips``) are blobs moving left or right; every
frame of either class is drawn from the same distribution, and the test split
holds each clip and its reversal. A ResNet-10 trained by ``medvol train`` with
3D kernels must classify the held-out clips; the same network with
``conv: "2d"`` (each frame on its own, then averaged) gives a clip and its
reversal the same output, so it scores exactly chance — the reason 3D CNNs
exist for clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medvol import demo
from medvol.cli import main
from medvol.synthetic_clips import moving_blob_clips, reversal_pairs, write_clip_file
from tests.shared_samples import write_config


def test_single_frames_do_not_tell_the_classes_apart() -> None:
    clips, labels = moving_blob_clips(400, seed=3)
    blob_x = clips.astype(float).mean(axis=2).argmax(axis=1)  # (N, T): the blob's X in each frame
    for cls in (0, 1):  # the blob is everywhere in either class, each frame on its own
        assert len(np.unique(blob_x[labels == cls, 0])) == 16
    assert abs(clips[labels == 0].mean() - clips[labels == 1].mean()) < 1.0
    paired, paired_labels = reversal_pairs(clips[:2], labels[:2])
    np.testing.assert_array_equal(paired[1], clips[0][..., ::-1])
    assert paired_labels.tolist() == [labels[0], 1 - labels[0], labels[1], 1 - labels[1]]


def train_and_test(root: Path, clips: Path, conv: str) -> float:
    """Test accuracy of a ResNet-10 (3×3×3 stem, no stride) trained 5 epochs; the last checkpoint."""
    config = demo.medmnist_classifier(
        clips, epochs=5, output_dir=root / "runs", name=conv, widths=4, batch_size=16, lr=0.003, conv=conv
    )
    config["model"]["options"].update(stem_kernel=[3, 3, 3], stem_stride=[1, 1, 1])
    assert main(["train", str(write_config(root / f"{conv}.yaml", config))]) == 0
    out = root / f"eval-{conv}"
    evaluate = ["evaluate", str(root / "runs" / conv), "--split", "test", "--checkpoint", "last"]
    assert main([*evaluate, "--out", str(out), "--n-resamples", "100"]) == 0
    return float(json.loads((out / "summary.json").read_text())["metrics"]["accuracy"]["estimate"])


def test_temporal_kernels_learn_the_direction_and_frame_by_frame_stays_at_chance(tmp_path: Path) -> None:
    clips = write_clip_file(tmp_path / "clips.npz", train=160, val=32, test=32, size=12, frames=6)
    assert train_and_test(tmp_path, clips, "3d") >= 0.95
    assert train_and_test(tmp_path, clips, "2d") == 0.5  # a clip and its reversal: the same output
