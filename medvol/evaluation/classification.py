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
