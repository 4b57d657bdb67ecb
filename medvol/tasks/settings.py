"""The config's preprocessing, normalisation and augmentation sections as objects, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvol.augment import Augmenter
    from medvol.config import ExperimentConfig
    from medvol.transforms import Normalizer, PreprocessConfig


def preprocess_config(config: ExperimentConfig) -> PreprocessConfig:
    """The grid every case is put on (``preprocess``)."""
    from medvol.transforms import PreprocessConfig

    return PreprocessConfig.from_dict(config.preprocess)


def normalizer(config: ExperimentConfig) -> Normalizer:
    """The unfitted intensity normaliser (``normalize``; default: per-scan z-score)."""
    from medvol.transforms import Normalizer, ZScore

    return Normalizer.from_dict(config.normalize) if config.normalize else ZScore(per_scan=True)


def augmenter(config: ExperimentConfig) -> Augmenter | None:
    """The training augmenter (``augment``; ``null``: none), seeded with ``train.seed``."""
    from medvol.augment import augment_config_from_dict, build_augmenter

    if config.augment is None:
        return None
    return build_augmenter(augment_config_from_dict(config.augment), seed=config.train.seed)
