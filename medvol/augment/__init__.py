"""Augmentation (one random draw for image and label) and label-to-image synthesis.

``build_augmenter(config, seed)`` returns a callable on numpy samples
``{"image": (C, X, Y, Z) float32, "label": (1, X, Y, Z) int}``;
``BatchAugmenter(config, seed)`` augments whole batches of tensors on their device;
``labels_to_image`` draws a SynthSeg-style image from a label map;
``synthesize_cases`` writes augmented or synthetic variants of labelled cases.
"""

from medvol.augment.batched import BatchAugmenter
from medvol.augment.pipeline import (
    AugmentConfig,
    Augmenter,
    augment_config_from_dict,
    build_augmenter,
    worker_seed,
)
from medvol.augment.synthesis import (
    SynthesisConfig,
    SynthesisReport,
    labels_to_image,
    synthesis_config_from_dict,
    synthesize_cases,
)

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
