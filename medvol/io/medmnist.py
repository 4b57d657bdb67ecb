"""MedMNIST 3D ``.npz`` files (e.g. AdrenalMNIST3D) with their official split.

A file holds ``{split}_images`` of shape ``(N, D, H, W)`` (uint8) and
``{split}_labels`` of shape ``(N, 1)`` or ``(N, K)`` for the splits train, val
and test. The volumes carry no physical spacing; medvol treats them as 1 mm
isotropic grids and says so in ``meta``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvol.errors import UnreadableFileError

SPLITS = ("train", "val", "test")


def is_medmnist_file(path: str | Path) -> bool:
    """True for a path named like a MedMNIST file (``.npz``); its content is checked on loading."""
    return str(path).lower().endswith(".npz")


@dataclass(frozen=True)
class MedMNISTSplit:
    """One official split: ``images`` ``(N, D, H, W)`` uint8, ``labels`` ``(N,)`` int64."""

    images: np.ndarray
    labels: np.ndarray


def load_medmnist(path: str | Path) -> dict[str, MedMNISTSplit]:
    """Read and check a MedMNIST 3D file; returns its splits by name.

    Raises:
        UnreadableFileError: not an npz, a split missing, or shapes that disagree.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UnreadableFileError(path, f"not a readable .npz file ({error})") from error
    splits = {}
    for split in SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None or labels is None:
            raise UnreadableFileError(
                path, f"missing {split}_images or {split}_labels (keys: {sorted(arrays)})"
            )
        if images.ndim != 4:
            raise UnreadableFileError(path, f"{split}_images must be (N, D, H, W), got {images.shape}")
        if labels.shape[0] != images.shape[0] or labels.ndim not in (1, 2):
            raise UnreadableFileError(
                path, f"{split}: {images.shape[0]} images but labels of shape {labels.shape}"
            )
        flat = labels if labels.ndim == 2 else labels[:, np.newaxis]  # (N, 1) even for N = 0
        if flat.shape[1] != 1:
            raise UnreadableFileError(path, f"{split}: multi-label targets {labels.shape} are not supported")
        splits[split] = MedMNISTSplit(images=images, labels=flat[:, 0].astype(np.int64))
    return splits


def describe_medmnist(path: str | Path) -> dict[str, object]:
    """Cases and class counts per split, for ``medvol index``."""
    splits = load_medmnist(path)
    return {
        "path": str(path),
        "layout": "medmnist",
        "shape": list(splits["train"].images.shape[1:]),
        "splits": {
            name: {
                "cases": int(split.images.shape[0]),
                "class_counts": {
                    str(value): int(count)
                    for value, count in zip(*np.unique(split.labels, return_counts=True), strict=True)
                },
            }
            for name, split in splits.items()
        },
    }
