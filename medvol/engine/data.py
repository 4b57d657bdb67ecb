"""The data of one run: the split, the fitted normaliser, and the two datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvol.augment import build_augmenter
from medvol.config import ExperimentConfig
from medvol.data.cache import VolumeCache
from medvol.data.cases import IndexReport
from medvol.data.cases import validate as validate_cases
from medvol.data.dataset import (
    ArrayClassificationDataset,
    FileClassificationDataset,
    SegmentationDataset,
    class_index,
    fit_normalizer,
)
from medvol.data.splits import Fold, grouped_folds, load_folds, nnunet_folds
from medvol.engine.distributed import Runtime
from medvol.errors import MedvolError
from medvol.io.medmnist import is_medmnist_file


@dataclass
class TaskData:
    """Training and validation datasets plus what a run records about them."""

    task: str
    train: SegmentationDataset | ArrayClassificationDataset | FileClassificationDataset
    val: SegmentationDataset | ArrayClassificationDataset | FileClassificationDataset
    split: dict[str, Any]
    fingerprint: dict[str, Any]
    normalizer_state: dict[str, Any] | None


def build_task_data(config: ExperimentConfig, runtime: Runtime, run_dir: Path) -> TaskData:
    """Datasets for the config's task; augmentation on the training side only."""
    augmenter = None if config.augment is None else build_augmenter(config.augment, seed=config.train.seed)
    if is_medmnist_file(config.data.root):
        return _medmnist(config, runtime, augmenter)
    if config.data.task == "classification":
        return _file_classification(config, runtime, run_dir, augmenter)
    return _segmentation(config, runtime, run_dir, augmenter)


def _medmnist(config: ExperimentConfig, runtime: Runtime, augmenter: Any) -> TaskData:
    from medvol.io.medmnist import load_medmnist

    if config.data.split.method != "official":
        raise MedvolError(
            config.data.root, "MedMNIST files come with their official split: use split.method: official"
        )
    splits = load_medmnist(config.data.root)
    train, val = splits["train"], splits["val"]
    seed = config.train.seed
    return TaskData(
        task="classification",
        train=ArrayClassificationDataset(train.images, train.labels, augmenter, seed, runtime.rank, "train"),
        val=ArrayClassificationDataset(val.images, val.labels, None, seed, runtime.rank, "val"),
        split={
            "method": "official",
            "train": len(train.labels),
            "val": len(val.labels),
            "test": "not used in training",
        },
        fingerprint={
            "cases": {name: len(s.labels) for name, s in splits.items()},
            "class_counts": {
                name: {str(v): int(c) for v, c in zip(*np.unique(s.labels, return_counts=True), strict=True)}
                for name, s in splits.items()
            },
            "shape": list(train.images.shape[1:]),
        },
        normalizer_state=None,
    )


def choose_fold(
    config: ExperimentConfig,
    case_ids: list[str],
    patients: list[str | None],
    labels: list[int] | None = None,
) -> Fold:
    """The configured fold of ``case_ids``; ``kfold`` keeps each patient in one fold and,
    given class ``labels`` (one per case), stratifies by class."""
    split = config.data.split
    if split.method == "nnunet":
        folds = nnunet_folds(case_ids, split.n_splits, split.seed)
    elif split.method == "kfold":
        groups = [p or c for p, c in zip(patients, case_ids, strict=True)]
        folds = grouped_folds(case_ids, groups, labels, split.n_splits, split.seed)
    elif split.method == "file" and split.file is not None:
        folds = load_folds(split.file)
    else:
        raise MedvolError(
            config.data.root, f"split.method {split.method!r} needs split.file or another method"
        )
    if split.fold >= len(folds):
        raise MedvolError(config.data.root, f"split.fold {split.fold} but only {len(folds)} folds")
    return folds[split.fold]


def _index_cases(config: ExperimentConfig, runtime: Runtime, classes: list[int] | None = None) -> IndexReport:
    """``medvol index``'s checks of the dataset; says how many cases are skipped, refuses none usable."""
    report = validate_cases(config.data.root, classes=classes)
    usable = report.usable
    if not usable:
        raise MedvolError(config.data.root, "no usable cases (see `medvol index`)")
    skipped = len(report.cases) - len(usable)
    if runtime.is_main and skipped:
        print(
            f"skipping {skipped} unusable case(s) of {len(report.cases)}; see `medvol index` for why",
            flush=True,
        )
    return report


def _segmentation(config: ExperimentConfig, runtime: Runtime, run_dir: Path, augmenter: Any) -> TaskData:
    report = _index_cases(config, runtime, classes=config.data.classes)
    usable = report.usable
    by_id = {case.case_id: case for case in usable}
    fold = choose_fold(config, sorted(by_id), [by_id[c].patient_id for c in sorted(by_id)])
    missing = [c for c in fold["train"] + fold["val"] if c not in by_id]
    if missing:
        raise MedvolError(config.data.root, f"the split names cases that are not usable: {missing[:5]}")
    preprocess = config.preprocess
    normalizer = config.normalizer()
    train_cases = [by_id[c] for c in fold["train"]]
    normalizer = fit_normalizer(normalizer, train_cases, preprocess)
    cache = VolumeCache(config.data.cache_dir or run_dir / "cache")
    seed = config.train.seed
    return TaskData(
        task="segmentation",
        train=SegmentationDataset(
            train_cases, preprocess, normalizer, cache, config.data.patch_size, augmenter, seed, runtime.rank
        ),
        val=SegmentationDataset(
            [by_id[c] for c in fold["val"]], preprocess, normalizer, cache, None, None, seed, runtime.rank
        ),
        split={
            "method": config.data.split.method,
            "fold": config.data.split.fold,
            **fold,
            "skipped": sorted(report.unusable_ids),
        },
        fingerprint=report.summary(),
        normalizer_state=normalizer.to_dict(),
    )


def _file_classification(
    config: ExperimentConfig, runtime: Runtime, run_dir: Path, augmenter: Any
) -> TaskData:
    """Scan files with a ``class`` per case (a CSV manifest): split, normaliser, datasets."""
    shape = config.data.patch_size
    if shape is None:
        raise MedvolError(
            config.data.root,
            "classification from scan files needs data.patch_size, the model's input shape "
            "[X, Y, Z] in voxels (every case is centre-cropped/padded to it)",
        )
    preprocess = config.preprocess
    if preprocess.crop == "foreground" and preprocess.foreground_from == "label":
        raise MedvolError(
            config.data.root,
            "preprocess.foreground_from: label cannot be used by a classifier (inference has no label "
            "map); use foreground_from: image",
        )
    report = _index_cases(config, runtime)
    usable = report.usable
    without_class = [case.case_id for case in usable if case.target is None]
    if without_class:
        raise MedvolError(
            config.data.root,
            f"{len(without_class)} case(s) have no class (column 'class'), e.g. {without_class[:5]}",
        )
    num_classes = config.data.num_classes
    by_id = {case.case_id: case for case in usable}
    targets = {case_id: class_index(case, num_classes) for case_id, case in by_id.items()}
    ids = sorted(by_id)
    fold = choose_fold(config, ids, [by_id[c].patient_id for c in ids], [targets[c] for c in ids])
    missing = [c for c in fold["train"] + fold["val"] if c not in by_id]
    if missing:
        raise MedvolError(config.data.root, f"the split names cases that are not usable: {missing[:5]}")
    normalizer = config.normalizer()
    train_cases = [by_id[c] for c in fold["train"]]
    val_cases = [by_id[c] for c in fold["val"]]
    normalizer = fit_normalizer(normalizer, train_cases, preprocess, use_labels=False)
    cache = VolumeCache(config.data.cache_dir or run_dir / "cache")
    seed = config.train.seed

    def dataset(cases: list[Any], augment: Any) -> FileClassificationDataset:
        return FileClassificationDataset(
            cases,
            [targets[case.case_id] for case in cases],
            preprocess,
            normalizer,
            cache,
            shape,
            augment,
            seed,
            runtime.rank,
        )

    def counts(case_ids: list[str]) -> dict[str, int]:
        values = [targets[c] for c in case_ids]
        return {str(k): values.count(k) for k in range(num_classes)}

    return TaskData(
        task="classification",
        train=dataset(train_cases, augmenter),
        val=dataset(val_cases, None),
        split={
            "method": config.data.split.method,
            "fold": config.data.split.fold,
            **fold,
            "skipped": sorted(report.unusable_ids),
        },
        fingerprint={
            **report.summary(),
            "input": "scan files",
            "shape": list(shape),
            "class_counts": {"all": counts(ids), "train": counts(fold["train"]), "val": counts(fold["val"])},
        },
        normalizer_state=normalizer.to_dict(),
    )
