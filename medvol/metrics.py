"""Metrics as pure functions on numpy arrays.

Conventions are explicit: Dice of a class that is absent from both the
prediction and the ground truth is ``empty_value`` (default NaN, so it is left
out of means rather than counted as a perfect 1.0; nnU-Net also excludes it).
AUC comes from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def dice_per_class(
    prediction: np.ndarray, target: np.ndarray, classes: Sequence[int], empty_value: float = float("nan")
) -> dict[int, float]:
    """Dice of each foreground class between two integer label maps of the same shape.

    Args:
        prediction: predicted labels, any shape (e.g. ``(X, Y, Z)``).
        target: ground-truth labels, same shape.
        classes: the class values to score (usually without background 0).
        empty_value: the score when a class is in neither map.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    scores = {}
    for value in classes:
        predicted, actual = prediction == value, target == value
        denominator = int(predicted.sum()) + int(actual.sum())
        overlap = int(np.logical_and(predicted, actual).sum())
        scores[int(value)] = empty_value if denominator == 0 else 2.0 * overlap / denominator
    return scores


def binary_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC for a binary target ``(N,)`` and the positive-class score ``(N,)``; NaN if one class."""
    if len(np.unique(targets)) < 2:
        return float("nan")
    return float(roc_auc_score(targets, scores))


def multiclass_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUC for targets ``(N,)`` and probabilities ``(N, K)``; binary uses class 1."""
    if probabilities.shape[1] == 2:
        return binary_auc(targets, probabilities[:, 1])
    if len(np.unique(targets)) < probabilities.shape[1]:
        return float("nan")
    return float(roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"))


def accuracy(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Accuracy; binary problems threshold the class-1 probability, others take the argmax."""
    if probabilities.shape[1] == 2:
        predicted = (probabilities[:, 1] >= threshold).astype(int)
    else:
        predicted = probabilities.argmax(axis=1)
    return float(np.mean(predicted == targets))
