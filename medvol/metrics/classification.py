"""Classification metrics of a set of cases (see ``medvol.metrics`` for the conventions).

``classification_metrics`` gives every metric at once through scikit-learn;
``classification_statistic`` gives one of them fast, from one confusion
matrix, for thousands of bootstrap resamples; ``roc_curves`` and
``calibration_bins`` give what the report plots.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np
from sklearn import metrics as skm
from sklearn.metrics import roc_auc_score

ROC_GRID_POINTS = 101

CLASSIFICATION_CI_METRICS = (
    "auc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "brier",
    "ece",
)
"""Classification metrics reported with a bootstrap CI (see :func:`classification_statistic`)."""


class ClassificationMetrics(TypedDict):
    """Metrics of a set of cases; see :func:`classification_metrics`."""

    n_cases: int
    n_classes: int
    averaging: str
    threshold: float | None
    auc: float
    accuracy: float
    balanced_accuracy: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    brier: float
    ece: float
    ece_bins: int
    confusion_matrix: list[list[int]]


def binary_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC for a binary target ``(N,)`` and the positive-class score ``(N,)``; NaN if one class."""
    if len(np.unique(targets)) < 2:
        return float("nan")
    return float(roc_auc_score(targets, scores))


def multiclass_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUC for targets ``(N,)`` and probabilities ``(N, K)``; binary uses class 1.

    NaN when a class is missing from the targets (one-vs-rest AUC is then undefined for it).
    """
    if probabilities.shape[1] == 2:
        return binary_auc(targets, probabilities[:, 1])
    if len(np.unique(targets)) < probabilities.shape[1]:
        return float("nan")
    return float(roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"))


def accuracy(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Accuracy; binary problems threshold the class-1 probability, others take the argmax."""
    return float(np.mean(_predicted_labels(probabilities, threshold) == targets))


def predicted_labels(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Predicted classes ``(N,)``: class 1 where its probability is ``>= threshold`` (binary), else argmax.

    Args:
        probabilities: ``(N, K)``, or ``(N,)`` the class-1 probability of a binary problem.
        threshold: decision threshold on the class-1 probability; unused when ``K > 2``.
    """
    return _predicted_labels(_as_probability_matrix(probabilities), threshold)


def confusion_matrix(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Confusion counts ``(K, K)``: row = true class, column = predicted class (scikit-learn order).

    Args:
        targets: true classes ``(N,)`` in ``0..K-1``.
        probabilities: ``(N, K)``, or ``(N,)`` the class-1 probability of a binary problem.
        threshold: decision threshold on the class-1 probability; unused when ``K > 2``.
    """
    targets, probabilities = _check_classification(targets, probabilities)
    labels = np.arange(probabilities.shape[1])
    predicted = _predicted_labels(probabilities, threshold)
    return np.asarray(skm.confusion_matrix(targets, predicted, labels=labels))


def balanced_accuracy(targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> float:
    """Mean recall over the classes present in ``targets`` ``(N,)`` (scikit-learn).

    Args:
        targets: true classes ``(N,)``.
        probabilities: ``(N, K)``, or ``(N,)`` the class-1 probability of a binary problem.
        threshold: decision threshold on the class-1 probability; unused when ``K > 2``.
    """
    targets, probabilities = _check_classification(targets, probabilities)
    predicted = _predicted_labels(probabilities, threshold)
    with warnings.catch_warnings():
        # Classes predicted but absent from the targets are left out on purpose (documented).
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(skm.balanced_accuracy_score(targets, predicted))


def brier_score(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Brier score (scikit-learn), lower is better.

    Binary: ``mean((p₁ − y)²)`` on the class-1 probability, in [0, 1]. Multi-class:
    ``mean(Σ_k (p_k − [y = k])²)``, in [0, 2].

    Args:
        targets: true classes ``(N,)``.
        probabilities: ``(N, K)``, or ``(N,)`` the class-1 probability of a binary problem.
    """
    targets, probabilities = _check_classification(targets, probabilities)
    classes = probabilities.shape[1]
    if classes == 2:
        return float(skm.brier_score_loss(targets, probabilities[:, 1], pos_label=1))
    return float(skm.brier_score_loss(targets, probabilities, labels=np.arange(classes)))


def expected_calibration_error(targets: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width probability bins.

    ``ECE = Σ_b (n_b / N) |observed_b − mean predicted_b|``. Binary problems bin the class-1
    probability and observe the class-1 frequency (the reliability diagram of the positive
    class). Multi-class problems bin the confidence (max probability) and observe the accuracy of
    the argmax. Bins are ``[i/B, (i+1)/B)``, the last one closed; bin edges are assigned as by
    ``sklearn.calibration.calibration_curve`` (``strategy="uniform"``).

    Args:
        targets: true classes ``(N,)``.
        probabilities: ``(N, K)``, or ``(N,)`` the class-1 probability of a binary problem.
        n_bins: number of bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    targets, probabilities = _check_classification(targets, probabilities)
    return _ece(targets, probabilities, n_bins)


def classification_metrics(
    targets: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5, n_bins: int = 10
) -> ClassificationMetrics:
    """All classification metrics of a set of cases.

    Binary problems (``K = 2``) predict class 1 when ``p₁ >= threshold`` and report sensitivity,
    specificity, PPV, NPV and F1 of class 1. Multi-class problems predict the argmax (the threshold
    is unused and recorded as None) and report macro averages over classes, one-vs-rest: sensitivity
    (equal to the balanced accuracy), specificity, PPV, NPV and F1. A rate whose denominator is 0 is
    NaN; macro averages leave those classes out (all NaN gives NaN).

    Args:
        targets: true classes ``(N,)`` in ``0..K-1``.
        probabilities: ``(N, K)`` rows summing to 1, or ``(N,)`` the class-1 probability.
        threshold: decision threshold on the class-1 probability (binary only).
        n_bins: number of equal-width bins of the expected calibration error.

    Returns:
        The metrics; ``auc`` is NaN when a class is missing from the targets.
    """
    targets, probabilities = _check_classification(targets, probabilities)
    classes = probabilities.shape[1]
    binary = classes == 2
    predicted = _predicted_labels(probabilities, threshold)
    counts = confusion_matrix(targets, probabilities, threshold)
    nan = np.nan
    if binary:
        rates = {
            "sensitivity": skm.recall_score(targets, predicted, pos_label=1, zero_division=nan),
            "specificity": skm.recall_score(targets, predicted, pos_label=0, zero_division=nan),
            "ppv": skm.precision_score(targets, predicted, pos_label=1, zero_division=nan),
            "npv": skm.precision_score(targets, predicted, pos_label=0, zero_division=nan),
            "f1": skm.f1_score(targets, predicted, pos_label=1, zero_division=nan),
        }
    else:
        labels = np.arange(classes)
        macro: dict[str, Any] = {"labels": labels, "average": "macro", "zero_division": nan}
        true_positive = np.diag(counts).astype(float)
        false_positive = counts.sum(axis=0) - true_positive
        false_negative = counts.sum(axis=1) - true_positive
        true_negative = counts.sum() - true_positive - false_positive - false_negative
        rates = {
            "sensitivity": skm.recall_score(targets, predicted, **macro),
            "specificity": _nanmean(_ratio(true_negative, true_negative + false_positive)),
            "ppv": skm.precision_score(targets, predicted, **macro),
            "npv": _nanmean(_ratio(true_negative, true_negative + false_negative)),
            "f1": skm.f1_score(targets, predicted, **macro),
        }
    return ClassificationMetrics(
        n_cases=int(targets.size),
        n_classes=int(classes),
        averaging="binary (class 1 positive)" if binary else "macro one-vs-rest",
        threshold=float(threshold) if binary else None,
        auc=multiclass_auc(targets, probabilities),
        accuracy=float(np.mean(predicted == targets)),
        balanced_accuracy=balanced_accuracy(targets, probabilities, threshold),
        sensitivity=float(rates["sensitivity"]),
        specificity=float(rates["specificity"]),
        ppv=float(rates["ppv"]),
        npv=float(rates["npv"]),
        f1=float(rates["f1"]),
        brier=brier_score(targets, probabilities),
        ece=expected_calibration_error(targets, probabilities, n_bins),
        ece_bins=int(n_bins),
        confusion_matrix=counts.tolist(),
    )


def _predicted_labels(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(int)
    return np.asarray(probabilities.argmax(axis=1))


def _as_probability_matrix(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim == 1:
        return np.stack([1.0 - probabilities, probabilities], axis=1)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, K) with K >= 2, or (N,), got {probabilities.shape}")
    return probabilities


def _check_classification(targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(N,)`` as int and probabilities as ``(N, K)`` float, or a clear ValueError."""
    probabilities = _as_probability_matrix(probabilities)
    targets = np.asarray(targets)
    count, classes = probabilities.shape
    if targets.shape != (count,):
        raise ValueError(f"targets {targets.shape} do not match probabilities {probabilities.shape}")
    if count == 0:
        raise ValueError("no cases to score")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1]")
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row of probabilities must sum to 1 (softmax output)")
    if not np.all(np.mod(targets, 1) == 0) or targets.min() < 0 or targets.max() >= classes:
        raise ValueError(f"targets must be class indices in 0..{classes - 1}")
    return targets.astype(int), probabilities


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    defined = values[np.isfinite(values)]
    return float(defined.mean()) if defined.size else math.nan


NO_BOOTSTRAP_CI = {
    "ece": "no CI: resampling cases inflates a binned calibration error, so its percentile "
    "bootstrap interval lies above the estimate and can exclude it",
}


def classification_statistic(name: str, threshold: float = 0.5, n_bins: int = 10) -> Callable[..., float]:
    """A fast ``statistic(targets (N,), probabilities (N, K)) -> float`` for :func:`bootstrap_ci`.

    It gives the value :func:`medvol.metrics.classification_metrics` gives (same definitions:
    binary rates of class 1 at ``threshold``; macro one-vs-rest averages over the classes where
    the rate is defined; NaN where undefined), from one confusion matrix instead of several
    scikit-learn calls, so that thousands of resamples stay quick. AUC uses scikit-learn.
    """
    if name not in CLASSIFICATION_CI_METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {CLASSIFICATION_CI_METRICS}")

    def statistic(targets: np.ndarray, probabilities: np.ndarray) -> float:
        if name == "auc":
            return multiclass_auc(targets, probabilities)
        classes = probabilities.shape[1]
        onehot = np.eye(classes)[targets]
        if name == "brier":
            if classes == 2:
                return float(np.mean((probabilities[:, 1] - onehot[:, 1]) ** 2))
            return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))
        if name == "ece":
            return _ece(targets, probabilities, n_bins)
        predicted = _predicted_labels(probabilities, threshold)
        counts = np.bincount(targets * classes + predicted, minlength=classes * classes).reshape(classes, -1)
        if name == "accuracy":
            return float(np.trace(counts) / counts.sum())
        true_positive = np.diag(counts).astype(float)
        false_positive = counts.sum(axis=0) - true_positive
        false_negative = counts.sum(axis=1) - true_positive
        true_negative = counts.sum() - true_positive - false_positive - false_negative
        recall = _ratio(true_positive, true_positive + false_negative)
        if name == "balanced_accuracy":
            return _nanmean(recall)
        per_class = {
            "sensitivity": recall,
            "specificity": _ratio(true_negative, true_negative + false_positive),
            "ppv": _ratio(true_positive, true_positive + false_positive),
            "npv": _ratio(true_negative, true_negative + false_negative),
            "f1": _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        }[name]
        return float(per_class[1]) if classes == 2 else _nanmean(per_class)

    return statistic


def roc_curves(
    targets: np.ndarray, probabilities: np.ndarray, n_resamples: int, confidence: float = 0.95, seed: int = 0
) -> list[dict[str, Any]]:
    """ROC curve(s) with a pointwise bootstrap band.

    Binary problems give one curve (class 1 positive); multi-class problems one per class,
    one-vs-rest. Each has scikit-learn's ``roc_curve`` points (``fpr``, ``tpr``, ``thresholds``;
    the first threshold is infinite, written as null), its ``auc``, and a band: the
    ``(1 ± confidence) / 2`` quantiles of the TPR at fixed FPR values ``band_fpr`` over case-level
    bootstrap resamples (vertical averaging; resamples holding one class are skipped). The band
    is pointwise, not a simultaneous confidence region.

    Args:
        targets: ``(N,)`` classes; probabilities ``(N, K)``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    classes = probabilities.shape[1]
    positives = [1] if classes == 2 else list(range(classes))
    grid = np.linspace(0.0, 1.0, ROC_GRID_POINTS)
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, targets.size, size=targets.size) for _ in range(n_resamples)]
    curves: list[dict[str, Any]] = []
    for positive in positives:
        truth = (targets == positive).astype(int)
        score = probabilities[:, positive]
        if truth.min() == truth.max():
            curves.append({"positive_class": positive, "auc": None, "fpr": [], "tpr": [], "thresholds": []})
            continue
        fpr, tpr, thresholds = roc_curve(truth, score)
        band = []
        for pick in picks:
            if truth[pick].min() == truth[pick].max():
                continue
            f, t, _ = roc_curve(truth[pick], score[pick])
            curve = np.interp(grid, f, t)
            curve[0] = 0.0
            band.append(curve)
        low = high = None
        if band:
            stacked = np.stack(band)
            low = np.quantile(stacked, (1 - confidence) / 2, axis=0).tolist()
            high = np.quantile(stacked, (1 + confidence) / 2, axis=0).tolist()
        curves.append(
            {
                "positive_class": positive,
                "auc": float(roc_auc_score(truth, score)),
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
                "thresholds": thresholds.tolist(),
                "band_fpr": grid.tolist(),
                "band_tpr_low": low,
                "band_tpr_high": high,
                "band_resamples": len(band),
                "confidence": confidence,
            }
        )
    return curves


def calibration_bins(targets: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram bins, the same bins as the ECE of :mod:`medvol.metrics`.

    Binary: the class-1 probability against the class-1 frequency. Multi-class: the confidence
    (max probability) against the accuracy of the argmax. Equal-width bins ``[i/B, (i+1)/B)``
    (the last closed); empty bins have ``mean_predicted`` and ``observed`` None.
    """
    predicted, observed = _calibration_pairs(targets, probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], predicted, side="right")
    count = np.bincount(bins, minlength=n_bins)
    predicted_sum = np.bincount(bins, weights=predicted, minlength=n_bins)
    observed_sum = np.bincount(bins, weights=observed, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, predicted_sum / np.maximum(count, 1), np.nan)
        frequency = np.where(count > 0, observed_sum / np.maximum(count, 1), np.nan)
    return {
        "quantity": "class-1 probability" if probabilities.shape[1] == 2 else "confidence (max probability)",
        "observed_as": "class-1 frequency" if probabilities.shape[1] == 2 else "accuracy",
        "edges": edges.tolist(),
        "count": count.tolist(),
        "mean_predicted": mean_predicted.tolist(),
        "observed": frequency.tolist(),
    }


def _calibration_pairs(targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if probabilities.shape[1] == 2:
        return probabilities[:, 1], (targets == 1).astype(float)
    return probabilities.max(axis=1), (probabilities.argmax(axis=1) == targets).astype(float)


def _ece(targets: np.ndarray, probabilities: np.ndarray, n_bins: int) -> float:
    predicted, observed = _calibration_pairs(targets, probabilities)
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], predicted, side="right")
    predicted_sum = np.bincount(bins, weights=predicted, minlength=n_bins)
    observed_sum = np.bincount(bins, weights=observed, minlength=n_bins)
    return float(np.abs(observed_sum - predicted_sum).sum() / targets.size)
