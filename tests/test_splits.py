"""Splits: nnU-Net's convention, patient-level grouping, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.model_selection import KFold

from medvol.data.splits import grouped_folds, load_folds, nnunet_folds, save_folds
from medvol.errors import MedvolError


def test_nnunet_folds_match_the_reference_recipe() -> None:
    ids = [f"hippocampus_{i:03d}" for i in (7, 1, 4, 3, 19, 11, 8, 6, 14, 15, 17, 20)]
    folds = nnunet_folds(ids)
    keys = sorted(ids)
    for fold, (train, val) in zip(folds, KFold(5, shuffle=True, random_state=12345).split(keys), strict=True):
        assert fold["val"] == [keys[i] for i in val]
        assert fold["train"] == [keys[i] for i in train]
    assert sorted(case for f in folds for case in f["val"]) == keys  # every case validated once


def test_nnunet_fold_0_is_the_same_cases_as_always() -> None:
    """Fixed ids, fixed answer: a change of sorting, seed or splitter would move cases between folds.

    The expected lists were computed once with scikit-learn's
    ``KFold(n_splits, shuffle=True, random_state=12345)`` on the sorted ids, as nnU-Net builds its
    splits; a published fold-0 result is only comparable while they hold.
    """
    ids = [f"hippocampus_{i:03d}" for i in (7, 1, 4, 3, 19, 11, 8, 6, 14, 15, 17, 20)]
    folds = nnunet_folds(ids)
    assert folds[0]["val"] == ["hippocampus_001", "hippocampus_006", "hippocampus_015"]
    assert [fold["val"] for fold in folds[1:]] == [
        ["hippocampus_014", "hippocampus_019", "hippocampus_020"],
        ["hippocampus_011", "hippocampus_017"],
        ["hippocampus_003", "hippocampus_007"],
        ["hippocampus_004", "hippocampus_008"],
    ]
    assert nnunet_folds(list(reversed(ids))) == folds  # the order the ids are found in does not matter
    # the bundled hippocampus training cases, 4 folds as `medvol demo` splits them
    bundled = [f"hippocampus_{i:03d}" for i in (1, 4, 6, 7, 8, 11, 14, 15, 17, 19, 20, 23)]
    demo_fold = nnunet_folds(bundled, n_splits=4)[0]
    assert demo_fold["val"] == ["hippocampus_001", "hippocampus_007", "hippocampus_017"]
    assert demo_fold["train"] == sorted(set(bundled) - set(demo_fold["val"]))


def test_grouped_folds_keep_patients_together_and_stratify() -> None:
    cases = [f"c{i}" for i in range(40)]
    patients = [f"p{i // 2}" for i in range(40)]  # two scans per patient
    classes = [(i // 2) % 2 for i in range(40)]
    folds = grouped_folds(cases, patients, classes, n_splits=4, seed=1)
    patient_of = dict(zip(cases, patients, strict=True))
    for fold in folds:
        assert not {patient_of[c] for c in fold["train"]} & {patient_of[c] for c in fold["val"]}
        val_classes = [classes[cases.index(c)] for c in fold["val"]]
        assert 0 < sum(val_classes) < len(val_classes)  # both classes in every fold


def test_folds_round_trip_and_reject_leaks(tmp_path: Path) -> None:
    folds = nnunet_folds([f"c{i}" for i in range(10)])
    assert load_folds(save_folds(folds, tmp_path / "splits.json")) == folds
    (tmp_path / "leak.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["b"]}]))
    with pytest.raises(MedvolError, match="both train and val"):
        load_folds(tmp_path / "leak.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MedvolError, match=r"bad\.json"):
        load_folds(tmp_path / "bad.json")
