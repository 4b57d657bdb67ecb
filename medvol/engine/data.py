"""The data of one run: the split, the fitted normaliser, and the two datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvol.augment import augment_config_from_dict, build_augmenter
from medvol.config import ExperimentConfig
from medvol.data.cache import VolumeCache
from medvol.data.cases import validate as validate_cases
from medvol.data.dataset import ArrayClassificationDataset, SegmentationDataset, fit_normalizer
from medvol.data.splits import Fold, grouped_folds, load_folds, nnunet_folds
from medvol.engine.distributed import Runtime
from medvol.errors import MedvolError
from medvol.transforms import Normalizer, PreprocessConfig, ZScore


@dataclass
class TaskData:
    """Training and validation datasets plus what a run records about them."""

    task: str
    train: SegmentationDataset | ArrayClassificationDataset
    val: SegmentationDataset | ArrayClassificationDataset
    split: dict[str, Any]
    fingerprint: dict[str, Any]
    normalizer_state: dict[str, Any] | None


def build_task_data(config: ExperimentConfig, runtime: Runtime, run_dir: Path) -> TaskData:
    """Datasets for the config's task; augmentation on the training side only."""
    augmenter = (
        None
        if config.augment is None
        else build_augmenter(augment_config_from_dict(config.augment), seed=config.train.seed)
    )
    if str(config.data.root).lower().endswith(".npz"):
        return _medmnist(config, runtime, augmenter)
    if config.data.task != "segmentation":
        raise MedvolError(
            config.data.root, "classification from files is not supported yet; use a MedMNIST .npz"
        )
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


def choose_fold(config: ExperimentConfig, case_ids: list[str], patients: list[str | None]) -> Fold:
    split = config.data.split
    if split.method == "nnunet":
        folds = nnunet_folds(case_ids, split.n_splits, split.seed)
    elif split.method == "kfold":
        groups = [p or c for p, c in zip(patients, case_ids, strict=True)]
        folds = grouped_folds(case_ids, groups, None, split.n_splits, split.seed)
    elif split.method == "file" and split.file is not None:
        folds = load_folds(split.file)
    else:
        raise MedvolError(
            config.data.root, f"split.method {split.method!r} needs split.file or another method"
        )
    if split.fold >= len(folds):
        raise MedvolError(config.data.root, f"split.fold {split.fold} but only {len(folds)} folds")
    return folds[split.fold]


def _segmentation(config: ExperimentConfig, runtime: Runtime, run_dir: Path, augmenter: Any) -> TaskData:
    report = validate_cases(config.data.root, classes=config.data.classes)
    usable = report.usable
    if not usable:
        raise MedvolError(config.data.root, "no usable cases (see `medvol index`)")
    skipped = len(report.cases) - len(usable)
    if runtime.is_main and skipped:
        print(
            f"skipping {skipped} unusable case(s) of {len(report.cases)}; see `medvol index` for why",
            flush=True,
        )
    by_id = {case.case_id: case for case in usable}
    fold = choose_fold(config, sorted(by_id), [by_id[c].patient_id for c in sorted(by_id)])
    missing = [c for c in fold["train"] + fold["val"] if c not in by_id]
    if missing:
        raise MedvolError(config.data.root, f"the split names cases that are not usable: {missing[:5]}")
    preprocess = PreprocessConfig.from_dict(config.preprocess)
    normalizer = Normalizer.from_dict(config.normalize) if config.normalize else ZScore(per_scan=True)
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
