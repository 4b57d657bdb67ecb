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

from medvol.metrics.classification import (
    CLASSIFICATION_CI_METRICS,
    NO_BOOTSTRAP_CI,
    ClassificationMetrics,
    accuracy,
    balanced_accuracy,
    binary_auc,
    brier_score,
    calibration_bins,
    classification_metrics,
    classification_statistic,
    confusion_matrix,
    expected_calibration_error,
    multiclass_auc,
    predicted_labels,
    roc_curves,
)
from medvol.metrics.intervals import ConfidenceInterval, bootstrap_ci, mean_ci
from medvol.metrics.segmentation import (
    DEFAULT_EMPTY_POLICY,
    MM3_PER_ML,
    SEGMENTATION_VALUES,
    EmptyPolicy,
    SegmentationAccumulator,
    SegmentationClassMetrics,
    average_surface_distance_mm,
    dice_per_class,
    field_of_view_diagonal_mm,
    hausdorff_distance_mm,
    segmentation_case_metrics,
    surface_distances_mm,
    volume_difference,
    volume_ml,
)

__all__ = [
    "CLASSIFICATION_CI_METRICS",
    "DEFAULT_EMPTY_POLICY",
    "MM3_PER_ML",
    "NO_BOOTSTRAP_CI",
    "SEGMENTATION_VALUES",
    "ClassificationMetrics",
    "ConfidenceInterval",
    "EmptyPolicy",
    "SegmentationAccumulator",
    "SegmentationClassMetrics",
    "accuracy",
    "average_surface_distance_mm",
    "balanced_accuracy",
    "binary_auc",
    "bootstrap_ci",
    "brier_score",
    "calibration_bins",
    "classification_metrics",
    "classification_statistic",
    "confusion_matrix",
    "dice_per_class",
    "expected_calibration_error",
    "field_of_view_diagonal_mm",
    "hausdorff_distance_mm",
    "mean_ci",
    "multiclass_auc",
    "predicted_labels",
    "roc_curves",
    "segmentation_case_metrics",
    "surface_distances_mm",
    "volume_difference",
    "volume_ml",
]
