"""Classification scores: every metric at the decision threshold with case-level bootstrap CIs.

The run's task says which cases are scored and prepares each one as in
training (``Task.scored_cases``); this module computes and writes the
numbers, every one through ``medvol.metrics``.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_curve

from medvol.engine.run_folder import EvaluationFolder
from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path
from medvol.logs import get_logger, track
from medvol.metrics import (
    CLASSIFICATION_CI_METRICS,
    NO_BOOTSTRAP_CI,
    bootstrap_ci,
    calibration_bins,
    classification_metrics,
    classification_statistic,
    predicted_labels,
    roc_curves,
)

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel

CLASSIFY_CHUNK = 256  # prepared inputs held in memory at once

logger = get_logger(__name__)


def evaluate_classification(
    trained: TrainedModel,
    cases_path: Path | None,
    split: str,
    out_dir: Path,
    threshold: float,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Classify the task's scored cases and score them; returns the summary fields."""
    from medvol.tasks import ClassificationTask

    task = trained.task
    assert isinstance(task, ClassificationTask)
    scored = task.scored_cases(trained.recipe, trained.run, cases_path, split)
    case_ids, targets, probabilities = _classify_all(
        trained, track(scored.items, "evaluate", "case", logger, total=scored.details["n_requested"])
    )
    details = {**scored.details, "errors": scored.errors}
    if cases_path is not None:
        train_ids = set(trained.run.read_split().get("train") or [])
        details["overlap_with_training"] = sorted(set(case_ids) & train_ids)
    if not case_ids:
        raise MedvolError(
            details.get("cases_root"),
            f"no case of {details['cases_source']} could be scored: "
            + "; ".join(f"{e['case_id']}: {e['problem']}" for e in scored.errors[:3]),
        )
    scores = score_classification(
        case_ids, targets, probabilities, EvaluationFolder(out_dir), threshold, n_resamples, confidence, seed
    )
    return {**details, **scores}


def _classify_all(trained: TrainedModel, items: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Case ids, targets ``(N,)`` and probabilities ``(N, K)``, classifying ``CLASSIFY_CHUNK`` at a time."""
    from medvol.engine.inference import classify

    case_ids: list[str] = []
    targets: list[int] = []
    rows: list[np.ndarray] = []
    chunk: list[np.ndarray] = []
    for case_id, target, prepared in items:
        case_ids.append(case_id)
        targets.append(target)
        chunk.append(prepared)
        if len(chunk) == CLASSIFY_CHUNK:
            rows.append(classify(trained, np.stack(chunk)))
            chunk = []
    if chunk:
        rows.append(classify(trained, np.stack(chunk)))
    probabilities = np.concatenate(rows) if rows else np.zeros((0, trained.num_classes), dtype=np.float32)
    return case_ids, np.array(targets, dtype=int), probabilities


def score_classification(
    case_ids: list[str],
    targets: np.ndarray,
    probabilities: np.ndarray,
    evaluation: EvaluationFolder,
    threshold: float,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Write ``cases.csv`` and return the metric fields of a classification summary.

    Args:
        case_ids: one per case, in ``cases.csv`` order.
        targets: ``(N,)`` class indices.
        probabilities: ``(N, K)`` softmax outputs (renormalised here in float64).
        evaluation: where ``cases.csv`` goes.

    Returns:
        ``n_cases``, ``threshold``, class counts, confusion matrix, every metric of
        :data:`CLASSIFICATION_CI_METRICS` with its bootstrap CI, ROC curves and calibration bins.

    Raises:
        MedvolError: the metrics are undefined for these targets (e.g. a class outside K).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)  # float32 softmax rounding
    targets = np.asarray(targets, dtype=int)
    try:
        point = classification_metrics(targets, probabilities, threshold)
    except ValueError as error:
        raise MedvolError(None, f"the {len(case_ids)} case(s) cannot be scored: {error}") from error
    predicted = predicted_labels(probabilities, threshold)
    _write_classification_csv(evaluation.cases, case_ids, targets, probabilities, predicted)
    intervals: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="bootstrap_ci:", category=RuntimeWarning)
        for name in CLASSIFICATION_CI_METRICS:
            if name in NO_BOOTSTRAP_CI:
                intervals[name] = {
                    "estimate": float(point[name]),  # type: ignore[literal-required]
                    "low": None,
                    "high": None,
                    "note": NO_BOOTSTRAP_CI[name],
                }
                continue
            statistic = classification_statistic(name, threshold, int(point["ece_bins"]))
            interval = bootstrap_ci((targets, probabilities), statistic, n_resamples, confidence, seed)
            intervals[name] = {
                "estimate": float(point[name]),  # type: ignore[literal-required]
                "low": interval.low,
                "high": interval.high,
                "n_undefined": interval.n_undefined,
            }
    classes, counts = np.unique(targets, return_counts=True)
    return {
        "n_cases": int(targets.size),
        "threshold": point["threshold"],
        "class_counts": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "n_classes": point["n_classes"],
        "averaging": point["averaging"],
        "ece_bins": point["ece_bins"],
        "confusion_matrix": point["confusion_matrix"],
        "ci_method": "percentile bootstrap over cases",
        "metrics": intervals,
        "roc": roc_curves(targets, probabilities, n_resamples, confidence, seed),
        "calibration": calibration_bins(targets, probabilities, int(point["ece_bins"])),
    }


def _write_classification_csv(
    path: Path, case_ids: list[str], targets: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray
) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["case_id", "target", *(f"probability_{k}" for k in range(probabilities.shape[1])), "predicted"]
        )
        for case_id, target, row, guess in zip(case_ids, targets, probabilities, predicted, strict=True):
            writer.writerow([case_id, int(target), *(repr(float(p)) for p in row), int(guess)])


def read_classification_cases(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Case ids, targets ``(N,)`` and probabilities ``(N, K)`` from a classification ``cases.csv``.

    Raises:
        MedvolError: the file is missing, unreadable, or not a classification ``cases.csv``.
    """
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise MedvolError(path, f"cannot read the evaluated cases ({error.strerror or error})") from error
    columns = sorted((c for c in (rows[0] if rows else {}) if c.startswith("probability_")), key=_class_of)
    if not rows or not columns or "target" not in rows[0]:
        raise MedvolError(path, "is not a classification cases.csv (columns case_id, target, probability_K)")
    try:
        targets = np.array([int(row["target"]) for row in rows], dtype=int)
        probabilities = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MedvolError(path, f"has a target or probability that is not a number ({error})") from error
    return [row["case_id"] for row in rows], targets, probabilities


def _class_of(column: str) -> int:
    return int(column.rpartition("_")[2])


def choose_threshold(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """The decision threshold on the class-1 probability that maximises balanced accuracy.

    Meant for validation cases: the threshold is then applied, unchanged, to the test cases.
    The candidates are the cases' class-1 probabilities (class 1 is predicted where the
    probability is ``>=`` the threshold), i.e. the thresholds of scikit-learn's ROC curve.
    Balanced accuracy is ``(TPR + 1 − FPR) / 2``, so the choice is the ROC point with the
    largest Youden index ``TPR − FPR``. Ties go to the highest threshold.

    Args:
        targets: ``(N,)`` classes 0 and 1, both present.
        probabilities: ``(N, 2)``, or ``(N,)`` the class-1 probability.

    Raises:
        ValueError: not a binary problem, or one class only.
    """
    targets = np.asarray(targets, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2:
        if probabilities.shape[1] != 2:
            raise ValueError(f"a threshold is chosen for two classes only, got {probabilities.shape[1]}")
        probabilities = probabilities[:, 1]
    if set(np.unique(targets).tolist()) != {0, 1}:
        raise ValueError(
            f"choosing a threshold needs cases of both classes 0 and 1, got {np.unique(targets)}"
        )
    false_positive_rate, true_positive_rate, thresholds = roc_curve(
        targets, probabilities, drop_intermediate=False
    )
    youden = (true_positive_rate - false_positive_rate)[1:]  # the first threshold (inf) predicts no case
    best = np.flatnonzero(np.isclose(youden, youden.max(), rtol=0.0, atol=1e-12))  # ties up to rounding
    return float(thresholds[1:][best[0]])


def scores_at_threshold(
    targets: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Accuracy and balanced accuracy at ``threshold``, each with its case-level bootstrap CI.

    Args:
        targets: ``(N,)`` classes.
        probabilities: ``(N, K)`` as in ``cases.csv``.
        threshold: decision threshold on the class-1 probability (binary problems).

    Returns:
        ``{"accuracy": {"estimate", "low", "high"}, "balanced_accuracy": {...}}``.
    """
    scores: dict[str, dict[str, Any]] = {}
    for name in ("accuracy", "balanced_accuracy"):
        interval = bootstrap_ci(
            (targets, probabilities), classification_statistic(name, threshold), n_resamples, confidence, seed
        )
        scores[name] = {"estimate": interval.estimate, "low": interval.low, "high": interval.high}
    return scores


def majority_class_scores(
    train_counts: dict[str, int], targets: np.ndarray, n_classes: int
) -> dict[str, Any]:
    """The scores of always predicting the class most frequent in the training split.

    The baseline any classifier must beat: its accuracy is the share of that class among
    ``targets``; its balanced accuracy is ``1 / K``; its AUC is 0.5 (one score for every case).

    Args:
        train_counts: cases per class in the training split, ``{"0": 929, "1": 259}``
            (ties go to the lowest class).
        targets: ``(N,)`` classes of the scored cases.
        n_classes: ``K``.

    Returns:
        ``{"class", "train_counts", "metrics": {"auc", "accuracy", "balanced_accuracy"}}``.
    """
    counts = {int(k): int(v) for k, v in train_counts.items()}
    majority = max(sorted(counts), key=lambda k: counts[k])
    probabilities = np.zeros((len(targets), n_classes))
    probabilities[:, majority] = 1.0
    targets = np.asarray(targets, dtype=int)
    return {
        "class": majority,
        "train_counts": {str(k): v for k, v in sorted(counts.items())},
        "metrics": {
            "auc": classification_statistic("auc")(targets, probabilities),
            "accuracy": classification_statistic("accuracy")(targets, probabilities),
            "balanced_accuracy": classification_statistic("balanced_accuracy")(targets, probabilities),
        },
    }
