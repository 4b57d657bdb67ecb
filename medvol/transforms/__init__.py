"""Transforms between loading and the model: preprocessing and intensity normalisation.

``preprocess``/``invert`` move a scan onto a canonical grid and predictions
back (``medvol.transforms.preprocess``); the normalisers learn intensity
statistics on training scans (``medvol.transforms.normalize``).
"""

from __future__ import annotations

from medvol.transforms.normalize import CTWindow, Normalizer, NotFittedError, PercentileClip, ZScore
from medvol.transforms.preprocess import (
    PreprocessConfig,
    PreprocessRecord,
    crop_or_pad,
    invert,
    preprocess,
)

__all__ = [
    "CTWindow",
    "Normalizer",
    "NotFittedError",
    "PercentileClip",
    "PreprocessConfig",
    "PreprocessRecord",
    "ZScore",
    "crop_or_pad",
    "invert",
    "preprocess",
]
