"""Small datasets cut from ``../shared/data`` for the tests, and config files."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def write_adrenal_subset(shared_data: Path, path: Path, counts: Mapping[str, int]) -> Path:
    """An AdrenalMNIST3D 28³ ``.npz`` with the first ``counts[split] // 2`` cases of each class per split."""
    return write_medmnist_subset(shared_data / "adrenalmnist3d" / "adrenalmnist3d.npz", path, counts)


def write_medmnist_subset(source: Path, path: Path, counts: Mapping[str, int]) -> Path:
    """A two-class MedMNIST ``.npz`` with the first ``counts[split] // 2`` cases of each class per split."""
    arrays = dict(np.load(source))
    subset = {}
    for split, count in counts.items():
        labels = arrays[f"{split}_labels"][:, 0]
        chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[: count // 2] for c in (0, 1)]))
        subset[f"{split}_images"] = arrays[f"{split}_images"][chosen]
        subset[f"{split}_labels"] = arrays[f"{split}_labels"][chosen]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **subset)
    return path


def copy_hippocampus_pairs(shared_data: Path, folder: Path, cases: Iterable[str]) -> Path:
    """``folder/images`` and ``folder/labels`` with the given MSD hippocampus cases (``"001"`` ...)."""
    for case in cases:
        for kind in ("images", "labels"):
            target = folder / kind / f"hippocampus_{case}.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file():
                shutil.copy(shared_data / "msd-hippocampus" / kind / target.name, target)
    return folder


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path
