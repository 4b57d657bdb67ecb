"""Augmentation (one random draw for image and label) and label-to-image synthesis.

``build_augmenter(config, seed)`` returns a callable on numpy samples
``{"image": (C, X, Y, Z) float32, "label": (1, X, Y, Z) int}``;
``BatchAugmenter(config, seed)`` augments whole batches of tensors on their device;
``labels_to_image`` draws a SynthSeg-style image from a label map;
``synthesize_cases`` writes augmented or synthetic variants of labelled cases.

Names are imported lazily (PEP 562): ``AugmentConfig`` (``medvol.augment.config``)
is part of every experiment config, and reading a config (``medvol predict``
from a model package) must not import MONAI or torch, which the augmenters need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvol.augment.batched import BatchAugmenter
    from medvol.augment.config import AugmentConfig, augment_config_from_dict
    from medvol.augment.pipeline import Augmenter, build_augmenter, worker_seed
    from medvol.augment.synthesis import (
        SynthesisConfig,
        SynthesisReport,
        labels_to_image,
        synthesis_config_from_dict,
        synthesize_cases,
    )

# Exported name -> the submodule defining it.
_LAZY: dict[str, str] = {
    "AugmentConfig": "medvol.augment.config",
    "augment_config_from_dict": "medvol.augment.config",
    "Augmenter": "medvol.augment.pipeline",
    "build_augmenter": "medvol.augment.pipeline",
    "worker_seed": "medvol.augment.pipeline",
    "BatchAugmenter": "medvol.augment.batched",
    "SynthesisConfig": "medvol.augment.synthesis",
    "SynthesisReport": "medvol.augment.synthesis",
    "labels_to_image": "medvol.augment.synthesis",
    "synthesis_config_from_dict": "medvol.augment.synthesis",
    "synthesize_cases": "medvol.augment.synthesis",
}

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "BatchAugmenter",
    "SynthesisConfig",
    "SynthesisReport",
    "augment_config_from_dict",
    "build_augmenter",
    "labels_to_image",
    "synthesis_config_from_dict",
    "synthesize_cases",
    "worker_seed",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'medvol.augment' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
