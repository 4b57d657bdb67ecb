"""Train/validation splits, saved to one JSON file that every later step reads.

``nnunet_folds`` reproduces the nnU-Net convention (sorted case ids, 5-fold
``KFold(shuffle=True, random_state=12345)``), so fold 0 here is fold 0 there.
``grouped_folds`` keeps every patient in one fold and stratifies by class when
a class label is given (scikit-learn's ``StratifiedGroupKFold``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path

Fold = dict[str, list[str]]  # {"train": [...case ids], "val": [...]}

NNUNET_SEED = 12345


def nnunet_folds(case_ids: Sequence[str], n_splits: int = 5, seed: int = NNUNET_SEED) -> list[Fold]:
    """Folds as nnU-Net makes them: sorted ids, shuffled ``KFold`` with seed 12345."""
    keys = np.array(sorted(case_ids))
    splitter = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [{"train": keys[train].tolist(), "val": keys[val].tolist()} for train, val in splitter.split(keys)]


def grouped_folds(
    case_ids: Sequence[str],
    patient_ids: Sequence[str],
    classes: Sequence[int] | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> list[Fold]:
    """Patient-level folds (no patient in two folds), stratified by class when given."""
    if len(set(case_ids)) != len(case_ids):
        raise MedvolError(None, "case ids must be unique to split them")
    keys = np.array(case_ids)
    groups = np.array(patient_ids)
    if classes is None:
        splits = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(keys, groups=groups)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = splitter.split(keys, np.array(classes), groups=groups)
    return [{"train": keys[train].tolist(), "val": keys[val].tolist()} for train, val in splits]


def save_folds(folds: list[Fold], path: str | Path) -> Path:
    """Write folds as JSON (a list of {"train", "val"}), atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(folds, indent=1))
    return path


def load_folds(path: str | Path) -> list[Fold]:
    """Read folds written by ``save_folds`` (or nnU-Net's ``splits_final.json``)."""
    path = Path(path)
    try:
        folds = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MedvolError(path, f"cannot read splits ({error})") from error
    if not isinstance(folds, list) or not all(
        isinstance(f, dict) and set(f) == {"train", "val"} for f in folds
    ):
        raise MedvolError(path, 'splits must be a list of {"train": [...], "val": [...]} objects')
    for number, fold in enumerate(folds):
        overlap = set(fold["train"]) & set(fold["val"])
        if overlap:
            raise MedvolError(path, f"fold {number} has cases in both train and val: {sorted(overlap)[:5]}")
    return folds
