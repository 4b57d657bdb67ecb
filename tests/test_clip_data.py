"""Clips as classification data: sampling in time, crops and jitter, datasets, index findings, training.

Clip frames are known arrays (a frame's value says which frame it is, or
``medvol.synthetic_clips`` moving blobs) written as lossless ffv1 videos and
colour DICOM cine files, so every chosen frame index and pixel is checked
exactly.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import medvol
from medvol.cli import main
from medvol.config import ClipConfig, parse_config
from medvol.data import validate
from medvol.engine.inference import classify, classify_scan, load_trained, prepare_input
from medvol.errors import GeometryError, MedvolError
from medvol.synthetic_clips import moving_blob_clips
from medvol.transforms import preprocess
from medvol.transforms.clips import (
    clip_starts,
    cut_clip,
    evaluation_clips,
    frame_indices,
    jitter_clip,
    resize_frames,
    training_clip,
)
from medvol.volume import Volume
from tests.test_dicom_colour import write_clip
from tests.video_factory import write_video


def numbered_video(frames: int = 20, x: int = 6, y: int = 4, channels: int = 1) -> np.ndarray:
    """``(C, X, Y, T)`` float32 whose every voxel holds its frame's index."""
    return np.broadcast_to(np.arange(frames, dtype=np.float32), (channels, x, y, frames)).copy()


def clip_config(**values: Any) -> ClipConfig:
    return ClipConfig(**{"frames": 3, "stride": 2, "size": (4, 4), **values})


# --- sampling in time ------------------------------------------------------------------------------


def test_clip_starts_and_frame_indices_are_exact() -> None:
    # 20 frames, clips of 3 frames every 2nd: a clip spans 5 frames, starts 0..15
    assert clip_config().span == 5
    assert clip_starts(20, 5, "centre") == [7]
    assert clip_starts(20, 5, "uniform", 1) == [7]
    assert clip_starts(20, 5, "uniform", 3) == [2, 7, 12]
    assert clip_starts(5, 5, "uniform", 4) == [0, 0, 0, 0]
    assert frame_indices(7, 3, 2).tolist() == [7, 9, 11]
    draws = [clip_starts(20, 5, "random", rng=np.random.default_rng(4))[0] for _ in range(2)]
    assert draws[0] == draws[1] == int(np.random.default_rng(4).integers(16))
    many = [
        clip_starts(20, 5, "random", rng=rng)[0] for rng in [np.random.default_rng(0)] for _ in range(400)
    ]
    assert min(many) == 0 and max(many) == 15
    with pytest.raises(ValueError, match="shorter than a clip's span of 5"):
        clip_starts(4, 5, "centre")


def test_cut_clip_takes_the_frames_and_crops_centre_or_at_a_corner() -> None:
    video = numbered_video(x=8, y=6)
    video[:, :, :, :] += np.arange(8)[None, :, None, None] * 100  # x in the hundreds
    config = clip_config(size=(4, 4))
    centre = cut_clip(video, 7, config)
    assert centre.shape == (1, 4, 4, 3)
    assert (centre[0, :, 0, :] % 100).tolist() == [[7, 9, 11]] * 4  # frames 7, 9, 11
    assert (centre[0, :, 0, 0] // 100).tolist() == [2, 3, 4, 5]  # x 2..5 of 0..7
    corner = cut_clip(video, 0, config, corner=(4, 2))
    assert (corner[0, :, 0, 0] // 100).tolist() == [4, 5, 6, 7]


def test_small_frames_are_padded_with_the_clip_minimum() -> None:
    video = numbered_video(x=2, y=4) + 10
    clip = cut_clip(video, 0, clip_config(size=(4, 4)))
    assert clip.shape == (1, 4, 4, 3)
    assert clip[0, :, 0, 0].tolist() == [10, 10, 10, 10]  # x 0 and 3 padded, x 1 and 2 the frames
    assert clip[0, 0, 0].tolist() == [10, 10, 10] and clip[0, 1, 0].tolist() == [10, 12, 14]


def test_training_clips_are_reproducible_per_seed_and_spread() -> None:
    video = numbered_video(x=8, y=8)
    config = clip_config(size=(4, 4), brightness=0.2)
    first = [training_clip(video, config, rng) for rng in [np.random.default_rng(1)] for _ in range(5)]
    again = [training_clip(video, config, rng) for rng in [np.random.default_rng(1)] for _ in range(5)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = [training_clip(video, config, rng) for rng in [np.random.default_rng(2)] for _ in range(5)]
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    centre = clip_config(size=(4, 4), sampling="centre", crop="centre")
    np.testing.assert_array_equal(
        training_clip(video, centre, np.random.default_rng(3)), cut_clip(video, 7, centre)
    )


def test_jitter_draws_one_factor_per_clip_and_reverses_only_when_declared() -> None:
    clip = np.random.default_rng(0).uniform(1, 2, (3, 4, 4, 3)).astype(np.float32)
    factors = np.random.default_rng(5).uniform(-1.0, 1.0, size=3)
    bright = jitter_clip(clip, clip_config(brightness=0.5), np.random.default_rng(5))
    np.testing.assert_allclose(bright, clip * (1 + 0.5 * factors[0]), rtol=1e-6)
    grey = clip.mean(axis=0, keepdims=True)
    saturated = jitter_clip(clip, clip_config(saturation=0.5), np.random.default_rng(5))
    np.testing.assert_allclose(saturated, grey + (clip - grey) * (1 + 0.5 * factors[2]), rtol=1e-5)
    declared = clip_config(reverse_prob=1.0, reverse_preserves_label=True)
    np.testing.assert_array_equal(jitter_clip(clip, declared, np.random.default_rng(0)), clip[..., ::-1])
    np.testing.assert_array_equal(jitter_clip(clip, clip_config(), np.random.default_rng(0)), clip)
    with pytest.raises(ValueError, match="reverse_preserves_label: true"):
        clip_config(reverse_prob=0.5)


def test_resizing_acts_on_frames_only() -> None:
    video = numbered_video(frames=5, x=16, y=12, channels=3)
    resized = resize_frames(video, (8, 6))
    assert resized.shape == (3, 8, 6, 5) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, numbered_video(frames=5, x=8, y=6, channels=3), atol=1e-5)


def test_evaluation_clips_are_uniform_and_centre_cropped() -> None:
    video = numbered_video(x=6, y=6)
    clips = evaluation_clips(video, clip_config(eval_clips=3))
    assert clips.shape == (3, 1, 4, 4, 3)
    assert [c[0, 0, 0].tolist() for c in clips] == [[2, 4, 6], [7, 9, 11], [12, 14, 16]]


# --- geometry never acts along time -----------------------------------------------------------------


def test_scan_preprocessing_refuses_clips(tmp_path: Path) -> None:
    video = medvol.load(write_video(tmp_path / "clip.mkv", np.zeros((4, 8, 8, 3), np.uint8)))
    with pytest.raises(GeometryError, match=r"clip\.mkv: is a clip \(frames in time"):
        preprocess(video)
    scan = Volume(np.zeros((1, 4, 4, 4), np.float32), np.eye(4))
    preprocess(scan)  # a scan is fine


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"preprocess": {"spacing_mm": [1, 1, 1]}}, "preprocess: reorients and resamples scans in mm"),
        ({"augment": {}}, "augment: its stages act on 3D scans"),
        ({"data": {"input_shape": [8, 8, 4]}}, "remove data.input_shape"),
        ({"data": {"task": "segmentation"}}, "data.clip is for classification of clips"),
    ],
)
def test_config_refuses_what_would_act_along_time(
    tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    config = clip_run_config(tmp_path)
    for key, values in section.items():
        config[key] = {**config.get(key, {}), **values}
    with pytest.raises(MedvolError, match=message):
        parse_config(config)


# --- datasets and their index -----------------------------------------------------------------------


def blob_videos(root: Path, count: int = 16, frames: int = 8, size: int = 12, seed: int = 1) -> Path:
    """``root/left/`` and ``root/right/`` of moving-blob videos (ffv1, lossless, grey as RGB)."""
    clips, labels = moving_blob_clips(count, size=size, frames=frames, seed=seed)
    for index, (clip, label) in enumerate(zip(clips, labels, strict=True)):
        folder = root / ("left", "right")[label]
        folder.mkdir(parents=True, exist_ok=True)
        rgb = np.repeat(clip.transpose(2, 1, 0)[..., np.newaxis], 3, axis=-1)  # (T, rows, columns, 3)
        write_video(folder / f"clip{index:02d}.mkv", np.ascontiguousarray(rgb))
    return root


def clip_run_config(root: Path, **clip: Any) -> dict[str, Any]:
    return {
        "data": {
            "task": "classification",
            "root": str(root),
            "num_classes": 2,
            "split": {"method": "kfold", "n_splits": 4, "fold": 0, "seed": 0},
            "clip": {"frames": 6, "size": [12, 12], **clip},
        },
        "model": {
            "name": "resnet10",
            "options": {
                "in_channels": 3,
                "num_classes": 2,
                "widths": 4,
                "stem_kernel": 3,
                "stem_stride": 1,
                "stem_pool": False,
            },
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 8, "amp": "none", "device": "cpu"},
        "tracking": {"output_dir": str(root.parent / "runs"), "name": "clips", "tensorboard": False},
    }


def test_index_a_folder_per_class_of_videos_and_dicom_clips(tmp_path: Path) -> None:
    root = blob_videos(tmp_path / "clips", count=6)
    rgb = np.repeat(
        moving_blob_clips(1, size=12, frames=8, seed=9)[0][0].transpose(2, 1, 0)[..., None], 3, -1
    )
    write_clip(root / "left" / "cine.dcm", np.ascontiguousarray(rgb))  # a DICOM cine loop among videos
    write_video(root / "right" / "short.mkv", np.zeros((3, 12, 12, 3), np.uint8))
    write_video(root / "right" / "wide.mkv", np.zeros((9, 12, 20, 3), np.uint8))
    shutil.copy(next((root / "left").glob("clip*.mkv")), root / "right" / "copy.mkv")
    (root / "left" / "broken.mp4").write_text("not a video")
    report = validate(root, min_frames=6)
    assert report.layout == "classes" and report.summary()["class_names"] == {"0": "left", "1": "right"}
    kinds = {(f.kind, f.case_id) for f in report.findings}
    assert ("too_short", "short") in kinds and ("unreadable", "broken") in kinds
    assert ("duplicate_case", "copy") in kinds
    assert any(f.kind == "mixed_frame_sizes" and "2 frame sizes" in f.message for f in report.findings)
    usable = {case.case_id: case.target for case in report.usable}
    assert usable["cine"] == "0" and usable["wide"] == "1" and len(usable) == 8
    assert medvol.load(root / "left" / "cine.dcm").meta["axes"] == "XYT"
    out = tmp_path / "index.csv"
    assert main(["index", str(root), "--out", str(out), "--min-frames", "6"]) == 1  # errors found
    assert main(["index", str(root), "--out", str(out), "--min-frames", "2", "--json"]) == 1  # broken, copy


def test_clip_manifest_with_patients_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    root = blob_videos(tmp_path / "clips", count=16)
    rows = [
        {"clip": str(path), "label": str(int(path.parent.name == "right")), "patient_id": f"p{i // 2}"}
        for i, path in enumerate(sorted(root.rglob("*.mkv")))
    ]
    manifest = tmp_path / "clips.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["clip", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    report = validate(manifest)
    assert report.layout == "manifest" and len(report.usable) == 16
    assert all(case.label is None and case.target in ("0", "1") for case in report.cases)
    from medvol.engine.distributed import Runtime
    from medvol.engine.run_folder import RunFolder
    from medvol.tasks import task_for

    data = task_for(parse_config(clip_run_config(manifest))).build_data(
        Runtime(torch.device("cpu")), RunFolder(tmp_path / "run")
    )
    patient = {case.case_id: case.patient_id for case in report.cases}
    assert not {patient[c] for c in data.split["train"]} & {patient[c] for c in data.split["val"]}
    sample = data.train[0]
    assert sample["image"].shape == (3, 12, 12, 6) and sample["label"].dtype == torch.int64


# --- training, evaluation and prediction --------------------------------------------------------------


def test_train_evaluate_and_predict_average_logits_over_clips(tmp_path: Path) -> None:
    root = blob_videos(tmp_path / "clips", count=16, frames=10)
    config = clip_run_config(root, eval_clips=3, brightness=0.1)
    path = tmp_path / "clips.yaml"
    path.write_text(json.dumps(config))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "clips"
    trained = load_trained(run, device="cpu")
    scan = medvol.load(next((root / "left").glob("*.mkv")))
    prepared = prepare_input(trained, scan).array
    assert prepared.shape == (3, 3, 12, 12, 6)  # 3 clips of (C, X, Y, frames)
    logits = trained.network(prepared).mean(axis=0)  # the 3 clips' logits, averaged
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(classify_scan(trained, scan), expected, atol=1e-5)
    assert classify(trained, prepared[np.newaxis]).shape == (1, 2)
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--split", "val", "--out", str(out), "--n-resamples", "20"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 4
    assert main(["predict", str(run), str(root / "left"), str(tmp_path / "pred"), "--device", "cpu"]) == 0
    how = json.loads((tmp_path / "pred" / "predict.json").read_text())["classifier_input"]
    assert how["shape"] == [12, 12, 6] and "averaged over 3" in how["how"]
    with pytest.raises(MedvolError, match="is not a clip"):
        prepare_input(trained, Volume(np.zeros((3, 12, 12, 12), np.float32), np.eye(4)))
