"""Metrics as pure functions on numpy arrays, plus a per-case accumulator for segmentation.

Every convention that changes a number is explicit here and recorded with results.

Segmentation (per case, per class; label maps ``(X, Y, Z)``, spacing in mm):

- **Dice** ``2|P∩G| / (|P| + |G|)``.
- **Surfaces** are the voxels of a mask with at least one face neighbour outside it
  (``mask & ~binary_erosion(mask)``, 6-connectivity; voxels on the image border are surface).
  Distances are Euclidean between voxel centres in millimetres, exact for anisotropic
  spacing (``scipy.ndimage.distance_transform_edt(..., sampling=spacing_mm)``). These are the
  conventions of MONAI 1.6.1's ``compute_hausdorff_distance`` / ``compute_average_surface_distance``
  (the tests check agreement); scipy is used directly so the metrics need no torch.
- **HD95** is ``max(P95(d(P→G)), P95(d(G→P)))``, the larger of the two directed 95th
  percentiles (MONAI, Metrics Reloaded), not the 95th percentile of the pooled distances
  (MedPy); ``percentile=100`` gives the classic Hausdorff distance.
- **ASSD** (average symmetric surface distance) is the mean of the pooled distances
  ``(Σ d(P→G) + Σ d(G→P)) / (|∂P| + |∂G|)``.
- **Volume difference** ``V(P) − V(G)`` in mL (1 mL = 1000 mm³, voxel volume = product of the
  spacing) and relative ``(V(P) − V(G)) / V(G)``, NaN when the ground truth is empty.
- **Empty masks** follow one :class:`EmptyPolicy`, written into result files with
  :meth:`EmptyPolicy.to_dict`. Default: every undefined value is NaN (left out of means, counted
  as undefined); a present/absent mismatch always has Dice 0.

Classification (targets ``(N,)`` in ``0..K-1``; probabilities ``(N, K)`` rows summing to 1, or
``(N,)`` the class-1 probability of a binary problem):

- Binary problems predict class 1 when its probability is ``>= threshold`` and score class 1 as
  positive; multi-class problems predict the argmax and report macro (one-vs-rest) averages.
- A rate with a zero denominator (sensitivity without positives, PPV without positive
  predictions...) is NaN, never 0 or 1; macro averages leave such classes out.
- AUC, balanced accuracy, confusion matrix, F1, precision/recall and Brier come from scikit-learn.

Uncertainty:

- :func:`bootstrap_ci`: case-level percentile bootstrap. Resamples on which the statistic is
  undefined (non-finite, e.g. AUC of a single-class resample) are skipped, counted and reported.
- :func:`mean_ci`: Student-t interval for a handful of values (seeds, folds).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias, TypedDict

import numpy as np
from scipy import ndimage, stats
from sklearn import metrics as skm
from sklearn.metrics import roc_auc_score

# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------

MM3_PER_ML = 1000.0

Spacing: TypeAlias = "Sequence[float] | np.ndarray"
"""Voxel size along each array axis in mm, e.g. ``(0.8, 0.8, 2.5)``."""


@dataclass(frozen=True)
class EmptyPolicy:
    """What a segmentation metric is when the prediction or the ground truth of a class is empty.

    When exactly one of the two is empty, Dice is always 0 (it is defined and maximally wrong).
    Every other case below has no natural value, so the choice is made here, once.

    Attributes:
        both_empty_dice: Dice when the class is in neither mask: NaN (default; undefined, left
            out of means, as nnU-Net does) or 1.0 (a correct "absent" call, as BraTS does).
        both_empty_distance_mm: HD95 and ASSD when the class is in neither mask: NaN (default)
            or 0.0.
        one_empty_distance_mm: HD95 and ASSD when exactly one mask is empty: NaN (default), a
            fixed worst case in mm (BraTS uses 373.13), or ``"diagonal"``: the diagonal of the
            field of view, ``sqrt(Σ (shape_i × spacing_i)²)`` mm, which bounds every distance
            inside the image. With NaN, read mean distances together with the count of
            undefined cases; a missed lesion is then penalised by Dice only.
    """

    both_empty_dice: float = math.nan
    both_empty_distance_mm: float = math.nan
    one_empty_distance_mm: float | Literal["diagonal"] = math.nan

    def __post_init__(self) -> None:
        if not (math.isnan(self.both_empty_dice) or 0.0 <= self.both_empty_dice <= 1.0):
            raise ValueError(f"both_empty_dice must be NaN or in [0, 1], got {self.both_empty_dice}")
        if not (math.isnan(self.both_empty_distance_mm) or self.both_empty_distance_mm >= 0.0):
            raise ValueError(f"both_empty_distance_mm must be NaN or >= 0, got {self.both_empty_distance_mm}")
        one = self.one_empty_distance_mm
        if isinstance(one, str):
            if one != "diagonal":
                raise ValueError(f"one_empty_distance_mm must be a number or 'diagonal', got {one!r}")
        elif not (math.isnan(one) or (math.isfinite(one) and one >= 0.0)):
            raise ValueError(f"one_empty_distance_mm must be NaN, 'diagonal' or a distance >= 0, got {one}")

    def to_dict(self) -> dict[str, float | str]:
        """The settings, for result files (NaN stays a float: ``json`` writes it as ``NaN``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmptyPolicy:
        """The policy recorded by :meth:`to_dict` (``None`` is read as NaN)."""
        values = {key: math.nan if value is None else value for key, value in data.items()}
        return cls(**values)

    def dice(self, prediction_empty: bool, target_empty: bool) -> float:
        """Dice of a case where at least one mask is empty."""
        return self.both_empty_dice if prediction_empty and target_empty else 0.0

    def distance_mm(
        self, prediction_empty: bool, target_empty: bool, shape: Sequence[int], spacing_mm: Spacing
    ) -> float:
        """HD95 / ASSD in mm of a case where at least one mask is empty, on a grid ``shape``."""
        if prediction_empty and target_empty:
            return float(self.both_empty_distance_mm)
        if self.one_empty_distance_mm == "diagonal":
            return field_of_view_diagonal_mm(shape, spacing_mm)
        return float(self.one_empty_distance_mm)


DEFAULT_EMPTY_POLICY = EmptyPolicy()


class SegmentationClassMetrics(TypedDict):
    """One class of one case; distances in mm, volumes in mL."""

    dice: float
    hd95_mm: float
    assd_mm: float
    volume_prediction_ml: float
    volume_target_ml: float
    volume_difference_ml: float
    relative_volume_difference: float
    prediction_empty: bool
    target_empty: bool


SEGMENTATION_VALUES = (
    "dice",
    "hd95_mm",
    "assd_mm",
    "volume_prediction_ml",
    "volume_target_ml",
    "volume_difference_ml",
    "relative_volume_difference",
)


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
        denominator = int(np.count_nonzero(predicted)) + int(np.count_nonzero(actual))
        overlap = int(np.count_nonzero(predicted & actual))
        scores[int(value)] = empty_value if denominator == 0 else 2.0 * overlap / denominator
    return scores


def field_of_view_diagonal_mm(shape: Sequence[int], spacing_mm: Spacing) -> float:
    """Diagonal of a grid's field of view, ``sqrt(Σ (shape_i × spacing_i)²)``, in mm."""
    spacing = _spacing(spacing_mm, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * spacing) ** 2)))


def volume_ml(mask: np.ndarray, spacing_mm: Spacing) -> float:
    """Volume of the nonzero voxels of ``mask`` ``(X, Y, Z)`` in mL, voxel size ``spacing_mm``."""
    spacing = _spacing(spacing_mm, mask.ndim)
    return float(np.count_nonzero(mask) * np.prod(spacing) / MM3_PER_ML)


def volume_difference(prediction: np.ndarray, target: np.ndarray, spacing_mm: Spacing) -> tuple[float, float]:
    """Volume error of a binary prediction ``(X, Y, Z)`` against the ground truth.

    Returns:
        ``V(P) − V(G)`` in mL (positive: over-segmentation) and the relative error
        ``(V(P) − V(G)) / V(G)``, NaN when the ground truth is empty.
    """
    _check_same_shape(prediction, target)
    predicted, actual = volume_ml(prediction, spacing_mm), volume_ml(target, spacing_mm)
    relative = (predicted - actual) / actual if actual > 0 else math.nan
    return predicted - actual, relative


def surface_distances_mm(
    prediction: np.ndarray, target: np.ndarray, spacing_mm: Spacing
) -> tuple[np.ndarray, np.ndarray]:
    """Distances between the surfaces of two non-empty binary masks ``(X, Y, Z)``.

    Args:
        prediction: predicted mask (nonzero is foreground).
        target: ground-truth mask, same shape.
        spacing_mm: voxel size along each array axis in mm.

    Returns:
        For each surface voxel of ``prediction``, its distance in mm to the nearest surface voxel of
        ``target`` ``(|∂P|,)``; and the same from ``target`` to ``prediction`` ``(|∂G|,)``.

    Raises:
        ValueError: a mask is empty (the policy for that lives in :class:`EmptyPolicy`), or the
            shapes or the spacing do not match.
    """
    _check_same_shape(prediction, target)
    spacing = _spacing(spacing_mm, prediction.ndim)
    predicted, actual = prediction.astype(bool), target.astype(bool)
    if not predicted.any() or not actual.any():
        raise ValueError("surface distances need two non-empty masks; see EmptyPolicy for empty ones")
    # Work in the bounding box of both masks grown by one voxel: every surface voxel lies inside,
    # and the margin keeps the erosion from inventing surface at the box's faces.
    box = _bounding_box(predicted | actual, margin=1)
    predicted, actual = predicted[box], actual[box]
    surface_p = predicted & ~ndimage.binary_erosion(predicted)
    surface_g = actual & ~ndimage.binary_erosion(actual)
    to_target = ndimage.distance_transform_edt(~surface_g, sampling=spacing)[surface_p]
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_g]
    return np.asarray(to_target, dtype=float), np.asarray(to_prediction, dtype=float)


def hausdorff_distance_mm(
    prediction: np.ndarray,
    target: np.ndarray,
    spacing_mm: Spacing,
    percentile: float = 95.0,
    policy: EmptyPolicy = DEFAULT_EMPTY_POLICY,
) -> float:
    """Percentile Hausdorff distance (HD95 by default) between two binary masks ``(X, Y, Z)``, in mm.

    ``max(P(d(P→G)), P(d(G→P)))`` with ``P`` the ``percentile`` (linear interpolation); 100 gives
    the maximum. Empty masks follow ``policy``.
    """
    empty = _emptiness(prediction, target)
    if empty is not None:
        return policy.distance_mm(*empty, prediction.shape, spacing_mm)
    return _percentile_hausdorff(*surface_distances_mm(prediction, target, spacing_mm), percentile)


def average_surface_distance_mm(
    prediction: np.ndarray,
    target: np.ndarray,
    spacing_mm: Spacing,
    policy: EmptyPolicy = DEFAULT_EMPTY_POLICY,
) -> float:
    """Average symmetric surface distance (ASSD) between two binary masks ``(X, Y, Z)``, in mm.

    The mean of both directed distance sets pooled; empty masks follow ``policy``.
    """
    empty = _emptiness(prediction, target)
    if empty is not None:
        return policy.distance_mm(*empty, prediction.shape, spacing_mm)
    return _pooled_mean(*surface_distances_mm(prediction, target, spacing_mm))


def segmentation_case_metrics(
    prediction: np.ndarray,
    target: np.ndarray,
    classes: Sequence[int],
    spacing_mm: Spacing,
    policy: EmptyPolicy = DEFAULT_EMPTY_POLICY,
) -> dict[int, SegmentationClassMetrics]:
    """Dice, HD95, ASSD and volume errors of each class of one case.

    Args:
        prediction: predicted integer label map ``(X, Y, Z)``.
        target: ground-truth label map, same shape and grid.
        classes: the label values to score (usually without background 0).
        spacing_mm: voxel size along each array axis in mm.
        policy: values for empty predictions or ground truths.

    Returns:
        ``{class: metrics}``; distances in mm, volumes in mL, and whether each mask was empty.
    """
    _check_same_shape(prediction, target)
    spacing = _spacing(spacing_mm, prediction.ndim)
    results: dict[int, SegmentationClassMetrics] = {}
    for value in classes:
        predicted, actual = prediction == value, target == value
        size_p, size_g = int(np.count_nonzero(predicted)), int(np.count_nonzero(actual))
        dice: float
        if size_p and size_g:
            to_target, to_prediction = surface_distances_mm(predicted, actual, spacing)
            dice = 2.0 * int(np.count_nonzero(predicted & actual)) / (size_p + size_g)
            hd95 = _percentile_hausdorff(to_target, to_prediction, 95.0)
            assd = _pooled_mean(to_target, to_prediction)
        else:
            dice = policy.dice(size_p == 0, size_g == 0)
            hd95 = assd = policy.distance_mm(size_p == 0, size_g == 0, prediction.shape, spacing)
        difference_ml, relative = volume_difference(predicted, actual, spacing)
        results[int(value)] = SegmentationClassMetrics(
            dice=float(dice),
            hd95_mm=float(hd95),
            assd_mm=float(assd),
            volume_prediction_ml=volume_ml(predicted, spacing),
            volume_target_ml=volume_ml(actual, spacing),
            volume_difference_ml=difference_ml,
            relative_volume_difference=relative,
            prediction_empty=size_p == 0,
            target_empty=size_g == 0,
        )
    return results


@dataclass
class SegmentationAccumulator:
    """Collects per-case segmentation metrics and summarises them with bootstrap CIs.

    A case added twice under the same id replaces the first (e.g. results gathered from ranks).

    Attributes:
        classes: the label values scored.
        policy: empty-mask policy used for every case.
        cases: ``{case_id: {class: metrics}}`` collected so far.
    """

    classes: Sequence[int]
    policy: EmptyPolicy = DEFAULT_EMPTY_POLICY
    cases: dict[str, dict[int, SegmentationClassMetrics]] = field(default_factory=dict)

    def add(
        self, case_id: str, prediction: np.ndarray, target: np.ndarray, spacing_mm: Spacing
    ) -> dict[int, SegmentationClassMetrics]:
        """Score one case (label maps ``(X, Y, Z)``, spacing in mm) and keep its metrics."""
        result = segmentation_case_metrics(prediction, target, self.classes, spacing_mm, self.policy)
        self.cases[case_id] = result
        return result

    def summary(self, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
        """Mean over cases of each metric and class, with a case-level bootstrap CI of the mean.

        NaN values (undefined under the policy) are left out of the mean and counted in
        ``n_undefined``; ``n`` is the number of cases that entered the mean.

        Returns:
            ``{"cases", "policy", "confidence", "ci_method", "classes": {class: {metric:
            {"mean", "low", "high", "n", "n_undefined"}, "n_prediction_empty", "n_target_empty"}}}``.
        """
        classes: dict[int, dict[str, Any]] = {}
        for value in self.classes:
            rows: list[dict[str, Any]] = [dict(case[int(value)]) for case in self.cases.values()]
            entry: dict[str, Any] = {
                "n_prediction_empty": sum(row["prediction_empty"] for row in rows),
                "n_target_empty": sum(row["target_empty"] for row in rows),
            }
            for name in SEGMENTATION_VALUES:
                values = np.array([row[name] for row in rows], dtype=float)
                defined = values[np.isfinite(values)]
                if defined.size:
                    interval = bootstrap_ci(defined, np.mean, n_resamples, confidence, seed)
                    low, high = interval.low, interval.high
                    mean = interval.estimate
                else:
                    mean = low = high = math.nan
                entry[name] = {
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "n": int(defined.size),
                    "n_undefined": int(values.size - defined.size),
                }
            classes[int(value)] = entry
        return {
            "cases": len(self.cases),
            "policy": self.policy.to_dict(),
            "confidence": confidence,
            "ci_method": "percentile bootstrap over cases",
            "classes": classes,
        }


def _emptiness(prediction: np.ndarray, target: np.ndarray) -> tuple[bool, bool] | None:
    """``(prediction_empty, target_empty)`` if either mask is empty, else None."""
    _check_same_shape(prediction, target)
    prediction_empty, target_empty = not np.any(prediction), not np.any(target)
    return (prediction_empty, target_empty) if prediction_empty or target_empty else None


def _percentile_hausdorff(to_target: np.ndarray, to_prediction: np.ndarray, percentile: float) -> float:
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(max(np.percentile(to_target, percentile), np.percentile(to_prediction, percentile)))


def _pooled_mean(to_target: np.ndarray, to_prediction: np.ndarray) -> float:
    return float((to_target.sum() + to_prediction.sum()) / (to_target.size + to_prediction.size))


def _check_same_shape(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")


def _spacing(spacing_mm: Spacing, ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (ndim,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be {ndim} positive numbers (mm per voxel), got {spacing_mm}")
    return spacing


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(present[0]) - margin, 0), int(present[-1]) + margin + 1))
    return tuple(box)


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


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
    if probabilities.shape[1] == 2:
        predicted, observed = probabilities[:, 1], (targets == 1).astype(float)
    else:
        predicted = probabilities.max(axis=1)
        observed = (probabilities.argmax(axis=1) == targets).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], predicted, side="right")
    predicted_sum = np.bincount(bins, weights=predicted, minlength=n_bins)
    observed_sum = np.bincount(bins, weights=observed, minlength=n_bins)
    return float(np.abs(observed_sum - predicted_sum).sum() / targets.size)


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


# ----------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its confidence interval; unpacks as ``estimate, low, high = ci``.

    Attributes:
        estimate: the statistic on all the data (bootstrap) or the mean (Student t).
        low: lower bound (NaN when it cannot be computed).
        high: upper bound.
        confidence: the nominal coverage, e.g. 0.95.
        method: ``"percentile bootstrap"`` or ``"student t"``.
        n: number of cases (bootstrap) or values (Student t).
        n_resamples: bootstrap resamples drawn (0 for Student t).
        n_undefined: resamples skipped because the statistic was not finite on them.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: str
    n: int
    n_resamples: int = 0
    n_undefined: int = 0

    def __iter__(self) -> Iterator[float]:
        return iter((self.estimate, self.low, self.high))

    def to_dict(self) -> dict[str, float | int | str]:
        """All fields, for result files."""
        return asdict(self)


def bootstrap_ci(
    data: np.ndarray | Sequence[float] | tuple[np.ndarray, ...],
    statistic: Callable[..., float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Case-level percentile-bootstrap confidence interval of a statistic.

    Cases (rows along axis 0) are drawn with replacement ``n_resamples`` times; with several arrays
    the same rows are drawn from each (paired: a case's target stays with its probability). The
    interval is the ``(1 ± confidence) / 2`` quantiles of the statistic over the resamples.

    A resample on which the statistic is not finite (e.g. AUC of a resample holding one class; the
    medvol metrics return NaN there) is skipped and counted in ``n_undefined``, and a
    ``RuntimeWarning`` says how many; the interval is then conditional on the statistic being
    defined. A statistic that raises is not caught. ``scipy.stats.bootstrap`` (BCa, ``paired=True``)
    is not used because one undefined resample turns its whole interval into NaN.

    Args:
        data: per-case values ``(N,)`` (or ``(N, ...)``), or a tuple of arrays with ``N`` rows
            each, resampled together, e.g. ``(targets (N,), probabilities (N, K))``.
        statistic: called as ``statistic(values)`` or ``statistic(*arrays)``; returns a float,
            NaN where undefined. Use ``np.nanmean`` rather than ``np.mean`` to leave NaN cases out.
        n_resamples: number of bootstrap resamples.
        confidence: nominal coverage in (0, 1).
        seed: seed of the resampling (same seed and data, same interval).

    Returns:
        The statistic on all cases with its interval; the estimate is not re-centred. When the
        estimate itself is undefined, the estimate and bounds are NaN, no resample is drawn and
        ``n_undefined`` equals ``n_resamples``.
    """
    single = not isinstance(data, tuple)
    arrays = [np.asarray(data)] if single else [np.asarray(a) for a in data]
    rows = [a.shape[0] if a.ndim else 0 for a in arrays]
    if not rows or min(rows) == 0 or len(set(rows)) > 1:
        raise ValueError(f"bootstrap_ci needs >= 1 case and equal numbers of rows in every array, got {rows}")
    count = rows[0]
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")

    def evaluate(picks: np.ndarray | slice) -> float:
        picked = [a[picks] for a in arrays]
        return float(statistic(picked[0]) if single else statistic(*picked))

    estimate = evaluate(slice(None))
    if not math.isfinite(estimate):
        return ConfidenceInterval(
            math.nan, math.nan, math.nan, confidence, "percentile bootstrap", count, n_resamples, n_resamples
        )
    rng = np.random.default_rng(seed)
    values = np.array([evaluate(rng.integers(0, count, size=count)) for _ in range(n_resamples)])
    defined = values[np.isfinite(values)]
    undefined = int(values.size - defined.size)
    if undefined:
        warnings.warn(
            f"bootstrap_ci: the statistic was undefined on {undefined} of {n_resamples} resamples "
            f"({undefined / n_resamples:.1%}); they were skipped",
            RuntimeWarning,
            stacklevel=2,
        )
    if defined.size:
        low, high = np.quantile(defined, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    else:
        low = high = math.nan
    return ConfidenceInterval(
        estimate, float(low), float(high), confidence, "percentile bootstrap", count, n_resamples, undefined
    )


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> ConfidenceInterval:
    """Mean of a few values (seeds, folds) with a Student-t confidence interval.

    ``mean ± t_{(1 + confidence) / 2, n − 1} × s / √n`` with ``s`` the sample standard deviation
    (``ddof=1``). It assumes roughly normal values; with 3–10 seeds it is wide, honestly so.
    One value gives ``(value, NaN, NaN)``.

    Raises:
        ValueError: no values, a non-finite value (a failed seed must not vanish from the mean), or
            a confidence outside (0, 1).
    """
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"mean_ci got non-finite values: {array.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(array.mean())
    if array.size == 1:
        return ConfidenceInterval(mean, math.nan, math.nan, confidence, "student t", 1)
    half_width = float(stats.t.ppf((1.0 + confidence) / 2, df=array.size - 1) * stats.sem(array))
    return ConfidenceInterval(mean, mean - half_width, mean + half_width, confidence, "student t", array.size)
