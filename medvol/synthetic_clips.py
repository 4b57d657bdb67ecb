"""Generated clips in which only the order of the frames carries the label.

Each clip is a bright Gaussian blob on a noisy background, moving one pixel
per frame along X, to +X (class 1) or to −X (class 0), on a torus (it leaves
one edge and comes back at the other). The start is uniform, so every single
frame of either class is a blob at a uniform random place: no frame, and no
set of frames, tells the classes apart, only their order does. A clip
played backwards is a clip of the other class, so a test split holding each
clip and its reversal (:func:`reversal_pairs`) is scored at exactly 50% by
any model that sees frames one at a time and averages them (a ResNet with
``conv: "2d"``), whatever it learned.

``write_clip_file`` stores the clips as a MedMNIST-style ``.npz`` (time on
the last axis: ``(N, X, Y, T)`` uint8), which ``medvol train`` reads with
``data.task: medmnist-classification`` and its official split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvol.io.atomic import atomic_path

SIGMA_PX = 1.5
NOISE = 0.15


def moving_blob_clips(
    count: int, size: int = 16, frames: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` clips ``(N, size, size, frames)`` uint8 and their classes ``(N,)`` (balanced, shuffled)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 2)
    grid = np.arange(size)
    clips = np.empty((count, size, size, frames), dtype=np.uint8)
    for index, label in enumerate(labels):
        start_x, y = rng.uniform(0, size, 2)
        step = 1 if label == 1 else -1
        for t in range(frames):
            x = (start_x + step * t) % size
            dx = np.minimum(abs(grid - x), size - abs(grid - x))  # distance on the torus
            dy = np.minimum(abs(grid - y), size - abs(grid - y))
            blob = np.exp(-(dx[:, None] ** 2 + dy[None, :] ** 2) / (2 * SIGMA_PX**2))
            frame = blob + rng.normal(0.0, NOISE, (size, size))
            clips[index, :, :, t] = np.clip(frame * 200 + 30, 0, 255).astype(np.uint8)
    return clips, labels.astype(np.int64)


def reversal_pairs(clips: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each clip followed by itself played backwards, labelled with the other class: ``(2N, ...)``."""
    reversed_clips = clips[..., ::-1]
    paired = np.stack([clips, reversed_clips], axis=1).reshape(-1, *clips.shape[1:])
    return np.ascontiguousarray(paired), np.stack([labels, 1 - labels], axis=1).reshape(-1)


def write_clip_file(
    path: str | Path,
    train: int = 256,
    val: int = 64,
    test: int = 64,
    size: int = 16,
    frames: int = 8,
    seed: int = 0,
) -> Path:
    """Write train/val/test moving-blob clips as a MedMNIST-style ``.npz``; the test split holds
    ``test`` clips and their reversals. Returns ``path``."""
    splits = {}
    for offset, (name, count) in enumerate({"train": train, "val": val, "test": test}.items()):
        clips, labels = moving_blob_clips(count, size, frames, seed * 3 + offset)
        if name == "test":
            clips, labels = reversal_pairs(clips, labels)
        splits[f"{name}_images"], splits[f"{name}_labels"] = clips, labels[:, np.newaxis]
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, allow_pickle=False, **splits)
    return path
