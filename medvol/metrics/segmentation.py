"""Segmentation metrics per case and class (see ``medvol.metrics`` for the conventions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias, TypedDict

import numpy as np
from scipy import ndimage

from medvol.metrics.intervals import bootstrap_ci

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
