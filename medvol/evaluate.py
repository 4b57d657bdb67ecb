"""``medvol evaluate``: score a trained run on held-out cases, with confidence intervals.

``evaluate_run(run_dir, ...)`` loads a run's checkpoint and scores it on

- **segmentation**: the validation cases of ``split.json`` (``split="val"``), or the
  labelled cases of a manifest CSV (``cases=...``). Segmentation folders have no official
  test split; held-out test cases come as a manifest. Each scan is segmented on its own
  grid and compared with its label on that grid: Dice, HD95 and ASSD in mm (the label's
  spacing), volume difference in mL, per class and case (:mod:`medvol.metrics`).
- **classification**: a MedMNIST run on the ``val`` or ``test`` split of its ``.npz``; a run
  trained on scan files on the validation cases of ``split.json`` or the cases of a manifest
  CSV with a ``class`` column (each scan prepared as in training,
  :func:`medvol.engine.inference.classify_scan`). Every
  :func:`medvol.metrics.classification_metrics` value at the decision threshold,
  case-level bootstrap CIs, the ROC curve(s) with a bootstrap band and calibration bins.

It writes, atomically, into ``RUN_DIR/evaluation-SPLIT`` (or ``evaluation-<manifest stem>``):

- ``cases.csv``: segmentation one row per case × class; classification one row per case
  (case id, target, probabilities, predicted class). Case ids only, no patient data.
- ``summary.json``: the metrics with their CIs and everything needed to read them: split,
  checkpoint and epoch, number of cases, cases that could not be scored (``errors``), the
  bootstrap settings (resamples, seed, confidence), the empty-mask policy, medvol's version.
  Undefined values (NaN) are written as ``null``.
- ``predictions/CASE.nii.gz`` (segmentation): the predicted label map on the scan's grid.

The test split is meant to be evaluated once per configuration: evaluating it again is
allowed, counted (``test_evaluation_number``) and announced.

``aggregate(summaries)`` combines the summaries of several runs (seeds, folds) into a mean
with a Student-t interval per metric.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path, file_sha256, write_json
from medvol.metrics import (
    DEFAULT_EMPTY_POLICY,
    SEGMENTATION_VALUES,
    EmptyPolicy,
    SegmentationAccumulator,
    bootstrap_ci,
    classification_metrics,
    mean_ci,
    multiclass_auc,
)

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig
    from medvol.data.cases import Case
    from medvol.engine.inference import Checkpoint, TrainedModel
    from medvol.volume import Volume

EVALUATION_PREFIX = "evaluation-"
SUMMARY = "summary.json"
CASES_CSV = "cases.csv"
PREDICTIONS = "predictions"

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

ROC_GRID_POINTS = 101
CLASSIFY_CHUNK = 256
GRID_TOLERANCE_MM = 1e-3

Split = Literal["val", "test"]


@dataclass
class Evaluation:
    """What :func:`evaluate_run` wrote.

    Attributes:
        out: the output folder.
        summary: the content of ``summary.json`` (NaN already written as None).
        notices: sentences the user should read (e.g. the test split was evaluated before).
    """

    out: Path
    summary: dict[str, Any]
    notices: list[str] = field(default_factory=list)


def default_out(run_dir: str | Path, split: Split = "val", cases: str | Path | None = None) -> Path:
    """``RUN_DIR/evaluation-SPLIT``, or ``RUN_DIR/evaluation-<manifest stem>`` with ``cases``."""
    name = Path(cases).stem if cases is not None else split
    return Path(run_dir) / f"{EVALUATION_PREFIX}{name}"


def evaluate_run(
    run_dir: str | Path,
    *,
    split: Split = "val",
    cases: str | Path | None = None,
    checkpoint: Checkpoint = "best",
    out: str | Path | None = None,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    tta: bool = False,
    device: str = "auto",
    policy: EmptyPolicy = DEFAULT_EMPTY_POLICY,
) -> Evaluation:
    """Score a trained run and write ``cases.csv``, ``summary.json`` (and predictions).

    Args:
        run_dir: run folder written by ``medvol train``.
        split: ``"val"`` (the run's validation cases) or ``"test"`` (MedMNIST test split;
            runs on scan files only when ``split.json`` lists test cases).
        cases: a manifest CSV of labelled cases (column ``label`` for segmentation,
            ``class`` for a classifier trained on scan files); replaces ``split``.
        checkpoint: ``"best"`` (falls back to ``"last"`` when the run never validated) or
            ``"last"``.
        out: output folder; default :func:`default_out`.
        threshold: decision threshold on the class-1 probability (binary classification).
        n_resamples: bootstrap resamples of every CI.
        confidence: nominal coverage of every CI.
        seed: seed of the bootstrap resampling (recorded).
        tta: average the segmentation over the 8 axis-flip combinations.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        policy: values of segmentation metrics on empty masks (recorded).

    Raises:
        MedvolError: no run folder, config or checkpoint; a split the run does not have; a
            manifest without label maps (classes); a threshold outside [0, 1]. A case that cannot be
            scored (unreadable, label on another grid) does not raise: it is listed in the
            summary's ``errors`` and the other cases are scored.
    """
    from medvol.config import load_config
    from medvol.engine.inference import is_medmnist, load_trained

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedvolError(run_dir, "run folder not found")
    if not (run_dir / "config.yaml").is_file():
        raise MedvolError(run_dir, "not a medvol run folder: config.yaml is missing")
    if not 0.0 <= threshold <= 1.0:
        raise MedvolError(None, f"--threshold must be within [0, 1], got {threshold}")
    if n_resamples < 1:
        raise MedvolError(None, f"--bootstrap must be at least 1 resample, got {n_resamples}")
    if split not in ("val", "test"):
        raise MedvolError(None, f"split must be 'val' or 'test', got {split!r}")
    config = load_config(run_dir / "config.yaml")
    cases_path = None if cases is None else Path(cases)
    medmnist = is_medmnist(config)
    if medmnist and cases_path is not None:
        raise MedvolError(
            cases_path,
            "a MedMNIST classifier is evaluated on the splits of its .npz file: use --split val|test",
        )
    if not medmnist and cases_path is None and split == "test":
        _split_ids(run_dir, "test")  # raises before the model is loaded
    trained = load_trained(run_dir, checkpoint, device)
    out_dir = Path(out) if out is not None else default_out(run_dir, split, cases_path)
    notices: list[str] = []
    header = _header(trained, checkpoint, split if cases_path is None else "cases", n_resamples, seed)
    header["bootstrap"]["confidence"] = confidence
    if cases_path is None and split == "test":
        header["test_evaluation_number"] = _count_test_evaluations(run_dir, out_dir, notices) + 1
    if config.data.task == "segmentation":
        summary = _evaluate_segmentation(
            trained, run_dir, cases_path, split, out_dir, header, tta, policy, n_resamples, confidence, seed
        )
    else:
        summary = _evaluate_classification(
            trained, run_dir, cases_path, split, out_dir, header, threshold, n_resamples, confidence, seed
        )
    overlap = summary.get("overlap_with_training") or []
    if overlap:
        notices.append(
            f"{len(overlap)} evaluated case id(s) are also training cases of this run "
            f"(e.g. {', '.join(overlap[:3])}); their scores are not held-out results"
        )
    summary = _json_safe(summary)
    write_json(out_dir / SUMMARY, summary, allow_nan=False)
    return Evaluation(out_dir, summary, notices)


# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------


def _evaluate_segmentation(
    trained: TrainedModel,
    run_dir: Path,
    cases_path: Path | None,
    split: Split,
    out_dir: Path,
    header: dict[str, Any],
    tta: bool,
    policy: EmptyPolicy,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    from medvol.data.dataset import load_case
    from medvol.engine.inference import segment
    from medvol.engine.run_folder import EvaluationFolder
    from medvol.evaluation.overlays import OverlaySlices, overlay_slices, save_overlays
    from medvol.io import save
    from medvol.volume import Volume

    config = trained.config
    selected, errors, source, root = _run_cases(run_dir, config, cases_path, split)
    requested = len(selected) + len(errors)
    classes = list(range(1, config.data.num_classes))
    accumulator = SegmentationAccumulator(classes, policy)
    overlays: dict[str, OverlaySlices] = {}
    for case in tqdm(selected, desc="evaluate", disable=None, leave=False):
        try:
            image, label = load_case(case)
            if label is None:
                errors.append(_error(case.case_id, None, "no label map"))
                continue
            problem = grid_difference(image, label)
            if problem:
                errors.append(_error(case.case_id, case.label, f"label grid mismatch: {problem}"))
                continue
            predicted = segment(trained, image, flip_tta=tta).label
            accumulator.add(case.case_id, predicted.array[0], label.array[0], label.spacing)
            meta = {"source": "medvol evaluate", "checkpoint": trained.checkpoint}
            save(
                Volume(predicted.array, predicted.affine, meta),
                out_dir / PREDICTIONS / f"{case.case_id}.nii.gz",
            )
            overlays[case.case_id] = overlay_slices(image, label, predicted)
        except MedvolError as error:
            errors.append(_error(case.case_id, error.path, error.problem))
    _write_segmentation_csv(out_dir / CASES_CSV, accumulator)
    save_overlays(EvaluationFolder(out_dir), overlays)
    train_ids = set(_split_json(run_dir).get("train") or [])
    summary = {
        **header,
        "cases_source": source,
        "cases_root": str(root),
        "n_cases": len(accumulator.cases),
        "n_requested": requested,
        "errors": errors,
        "tta": tta,
        "empty_policy": policy.to_dict(),
        "class_names": _class_names(config),
        "predictions": f"{PREDICTIONS}/",
        "overlap_with_training": sorted(set(accumulator.cases) & train_ids) if cases_path else [],
    }
    if accumulator.cases:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="bootstrap_ci:", category=RuntimeWarning)
            metrics = accumulator.summary(confidence, n_resamples, seed)
            summary["metrics"] = {str(value): entry for value, entry in metrics["classes"].items()}
            summary["ci_method"] = metrics["ci_method"]
            summary["dice_mean_over_classes"] = _mean_dice_interval(
                accumulator, classes, n_resamples, confidence, seed
            )
    else:
        summary["metrics"] = {}
    return summary


def _run_cases(
    run_dir: Path, config: ExperimentConfig, cases_path: Path | None, split: Split
) -> tuple[list[Case], list[dict[str, Any]], str, Path]:
    """The cases to score, errors for those that cannot be, where they came from (text, path).

    Segmentation cases need a label map (column ``label``), classification cases a class
    (column ``class``); the run's ``data.classes`` check label-map values only.
    """
    from medvol.data.cases import validate

    segmentation = config.data.task == "segmentation"
    classes = config.data.classes if segmentation else None
    if cases_path is not None:
        column = "label" if segmentation else "class"
        if not cases_path.is_file():
            raise MedvolError(cases_path, "manifest not found")
        if cases_path.suffix.lower() != ".csv":
            raise MedvolError(
                cases_path, f"--cases expects a .csv manifest (case_id, image, {column} columns)"
            )
        report = validate(cases_path, classes=classes)
        found = [case.label if segmentation else case.target for case in report.cases]
        if not any(value is not None for value in found):
            what = "label map" if segmentation else "class"
            raise MedvolError(
                cases_path,
                f"no case has a {what} (column '{column}'): evaluation needs the ground truth of every case",
            )
        wanted = [case.case_id for case in report.cases]
        source = str(cases_path)
    else:
        ids = _split_ids(run_dir, split)
        report = validate(config.data.root, classes=classes)
        wanted = list(ids)
        source = f"split.json {split} ({config.data.root})"
    by_id = {case.case_id: case for case in report.usable}
    problems: dict[str, list[str]] = {}
    paths: dict[str, str | None] = {}
    for finding in report.findings:
        if finding.case_id is not None and finding.severity == "error":
            problems.setdefault(finding.case_id, []).append(f"{finding.kind}: {finding.message}")
            paths.setdefault(finding.case_id, finding.path)
    selected, errors = [], []
    for case_id in wanted:
        if case_id in by_id:
            selected.append(by_id[case_id])
        else:
            reason = "; ".join(problems.get(case_id, [])) or f"not found in {report.root}"
            errors.append(_error(case_id, paths.get(case_id), f"not usable: {reason}"))
    return selected, errors, source, report.root


def _split_ids(run_dir: Path, split: Split) -> list[str]:
    data = _split_json(run_dir)
    ids = data.get(split)
    if split == "test" and not isinstance(ids, list):
        raise MedvolError(
            run_dir / "split.json",
            "runs on scan folders have no official test split (split.json lists train and val only); "
            "evaluate held-out cases with --cases MANIFEST.csv",
        )
    if not isinstance(ids, list):
        raise MedvolError(run_dir / "split.json", f"no list of {split} case ids")
    return [str(case_id) for case_id in ids]


def _split_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "split.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MedvolError(path, "missing: the run folder is incomplete") from error
    except (OSError, ValueError) as error:
        raise MedvolError(path, f"cannot read the split ({error})") from error
    if not isinstance(data, dict):
        raise MedvolError(path, "expected a JSON object")
    return data


def grid_difference(image: Volume, label: Volume) -> str | None:
    """How the label's grid differs from the image's (shape, or affine beyond 0.001 mm), or None."""
    if image.shape != label.shape:
        return f"label shape {list(label.shape)}, image shape {list(image.shape)}"
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (
        np.array(image.shape) - 1
    )
    distance = float(np.abs(image.world_coordinates(corners) - label.world_coordinates(corners)).max())
    if distance > GRID_TOLERANCE_MM:
        return f"label affine differs from the image's by up to {distance:.3f} mm"
    return None


def _write_segmentation_csv(path: Path, accumulator: SegmentationAccumulator) -> None:
    columns = ("case_id", "class", *SEGMENTATION_VALUES, "prediction_empty", "target_empty")
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for case_id in sorted(accumulator.cases):
            for value, result in accumulator.cases[case_id].items():
                row: dict[str, Any] = dict(result)
                writer.writerow(
                    [case_id, value]
                    + [repr(float(row[name])) for name in SEGMENTATION_VALUES]
                    + [int(row["prediction_empty"]), int(row["target_empty"])]
                )


def _mean_dice_interval(
    accumulator: SegmentationAccumulator,
    classes: Sequence[int],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Per-case mean Dice over the foreground classes (NaN classes left out), its mean and CI."""
    per_case = []
    for result in accumulator.cases.values():
        values = np.array([result[c]["dice"] for c in classes], dtype=float)
        per_case.append(
            float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else math.nan
        )
    values = np.array(per_case)
    defined = values[np.isfinite(values)]
    if not defined.size:
        return {"mean": None, "low": None, "high": None, "n": 0, "n_undefined": int(values.size)}
    interval = bootstrap_ci(defined, np.mean, n_resamples, confidence, seed)
    return {
        "mean": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "n": int(defined.size),
        "n_undefined": int(values.size - defined.size),
    }


def _class_names(config: ExperimentConfig) -> dict[str, str]:
    """Names of the foreground classes from the data's ``dataset.json``, else ``class N``."""
    names = {str(v): f"class {v}" for v in range(1, config.data.num_classes)}
    path = Path(config.data.root) / "dataset.json"
    if path.is_file():
        try:
            labels = json.loads(path.read_text()).get("labels", {})
        except (OSError, ValueError):
            return names
        for key, value in labels.items():
            number, name = (key, value) if str(key).isdigit() else (value, key)
            if str(number) in names:
                names[str(number)] = str(name)
    return names


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def _evaluate_classification(
    trained: TrainedModel,
    run_dir: Path,
    cases_path: Path | None,
    split: Split,
    out_dir: Path,
    header: dict[str, Any],
    threshold: float,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """A MedMNIST run on a split of its ``.npz``; a file-trained run on split.json ids or a manifest."""
    if trained.medmnist:
        case_ids, targets, probabilities, details = _medmnist_predictions(trained, split)
    else:
        case_ids, targets, probabilities, details = _file_predictions(trained, run_dir, cases_path, split)
    if not case_ids:
        raise MedvolError(
            details.get("cases_root"),
            f"no case of {details['cases_source']} could be scored: "
            + "; ".join(f"{e['case_id']}: {e['problem']}" for e in details.get("errors", [])[:3]),
        )
    scores = score_classification(
        case_ids, targets, probabilities, out_dir, threshold, n_resamples, confidence, seed
    )
    return {**header, **details, **scores}


def _medmnist_predictions(
    trained: TrainedModel, split: Split
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """Case ids, targets ``(N,)``, probabilities ``(N, K)`` and summary fields for a MedMNIST split."""
    from medvol.engine.inference import classify
    from medvol.io.medmnist import load_medmnist

    root = Path(trained.config.data.root)
    data = load_medmnist(root)[split]
    if len(data.labels) == 0:
        raise MedvolError(root, f"the {split} split is empty")
    expected = _fingerprint(trained.run_dir).get("shape")
    if expected is not None and list(expected) != list(data.images.shape[1:]):
        raise MedvolError(
            root, f"volumes are {list(data.images.shape[1:])} but the run was trained on {list(expected)}"
        )
    chunks = [
        classify(trained, data.images[start : start + CLASSIFY_CHUNK, np.newaxis].astype(np.float32) / 255.0)
        for start in range(0, len(data.labels), CLASSIFY_CHUNK)
    ]
    targets = data.labels.astype(int).reshape(-1)
    case_ids = [f"{split}-{index:05d}" for index in range(len(targets))]
    details = {
        "cases_source": f"{root} ({split}_images, {split}_labels)",
        "data_sha256": file_sha256(root),
        "n_requested": int(targets.size),
        "errors": [],
    }
    return case_ids, targets, np.concatenate(chunks), details


def _file_predictions(
    trained: TrainedModel, run_dir: Path, cases_path: Path | None, split: Split
) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """The same for a classifier trained on scan files: split.json ids, or a manifest's cases.

    A case that cannot be scored (unreadable, no class, class outside the run's classes) is
    listed in ``errors`` and left out.
    """
    from tqdm import tqdm

    from medvol.data.dataset import class_index, load_images
    from medvol.engine.inference import classify_scan

    config = trained.config
    selected, errors, source, root = _run_cases(run_dir, config, cases_path, split)
    requested = len(selected) + len(errors)
    case_ids: list[str] = []
    targets: list[int] = []
    rows: list[np.ndarray] = []
    for case in tqdm(selected, desc="evaluate", disable=None, leave=False):
        try:
            target = class_index(case, config.data.num_classes)
            probabilities = classify_scan(trained, load_images(case))
        except MedvolError as error:
            errors.append(_error(case.case_id, error.path, error.problem))
            continue
        case_ids.append(case.case_id)
        targets.append(target)
        rows.append(probabilities)
    train_ids = set(_split_json(run_dir).get("train") or [])
    details = {
        "cases_source": source,
        "cases_root": str(root),
        "n_requested": requested,
        "errors": errors,
        "overlap_with_training": sorted(set(case_ids) & train_ids) if cases_path else [],
    }
    probabilities = np.stack(rows) if rows else np.zeros((0, config.data.num_classes), dtype=np.float32)
    return case_ids, np.array(targets, dtype=int), probabilities, details


def score_classification(
    case_ids: list[str],
    targets: np.ndarray,
    probabilities: np.ndarray,
    out_dir: Path,
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
        out_dir: where ``cases.csv`` goes.

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
    predicted = _predicted(probabilities, threshold)
    _write_classification_csv(out_dir / CASES_CSV, case_ids, targets, probabilities, predicted)
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
        predicted = _predicted(probabilities, threshold)
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


def _predicted(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(int)
    return np.asarray(probabilities.argmax(axis=1), dtype=int)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    defined = values[np.isfinite(values)]
    return float(defined.mean()) if defined.size else math.nan


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


def _fingerprint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "fingerprint.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------
# Shared
# ----------------------------------------------------------------------------------------------


def _header(trained: TrainedModel, requested: str, split: str, n_resamples: int, seed: int) -> dict[str, Any]:
    from medvol.version import __version__

    return {
        "medvol_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": trained.task,
        "run": trained.run_dir.name,
        "split": split,
        "checkpoint": trained.checkpoint,
        "checkpoint_requested": requested,
        "epoch": trained.epoch,
        "model": trained.config.model.name,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "method": "percentile, case level"},
    }


def _count_test_evaluations(run_dir: Path, out_dir: Path, notices: list[str]) -> int:
    """How often the test split was evaluated before (from earlier summaries); adds a notice."""
    earlier = 0
    for folder in dict.fromkeys((default_out(run_dir, "test"), out_dir)):
        path = folder / SUMMARY
        if not path.is_file():
            continue
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
        number = previous.get("test_evaluation_number", 1) if isinstance(previous, dict) else 1
        earlier = max(earlier, int(number) if isinstance(number, int) else 1)
        when = previous.get("created", "earlier") if isinstance(previous, dict) else "earlier"
        notices.append(
            f"the test split of this run was already evaluated ({path}, {when}); "
            "evaluate the test split once per configuration and never choose models or settings on it"
        )
    return earlier


def _error(case_id: str, path: str | Path | None, problem: str) -> dict[str, Any]:
    return {"case_id": case_id, "path": None if path is None else str(path), "problem": problem}


def _json_safe(value: Any) -> Any:
    """NaN and infinities as None, numpy scalars as Python numbers, keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_summary(path: str | Path) -> dict[str, Any]:
    """A ``summary.json``, or the one inside an evaluation folder.

    Raises:
        MedvolError: missing or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MedvolError(path, "no evaluation summary here (run medvol evaluate)") from error
    except (OSError, ValueError) as error:
        raise MedvolError(path, f"cannot read the evaluation summary ({error})") from error
    if not isinstance(data, dict) or "task" not in data:
        raise MedvolError(path, "not a medvol evaluation summary")
    return data


# ----------------------------------------------------------------------------------------------
# Aggregation over runs
# ----------------------------------------------------------------------------------------------


def point_estimates(summary: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of one evaluation summary, by flat name (None/NaN as NaN).

    Classification: ``auc``, ``accuracy``, ... (:data:`CLASSIFICATION_CI_METRICS`).
    Segmentation: ``dice_1``, ``hd95_mm_1``, ... (metric, underscore, class value) for every
    metric of :data:`medvol.metrics.SEGMENTATION_VALUES`, and ``dice_mean`` (per-case mean Dice
    over the foreground classes, averaged over cases).
    """
    values: dict[str, float] = {}
    metrics = summary.get("metrics") or {}
    if summary.get("task") == "classification":
        for name, entry in metrics.items():
            values[name] = _number(entry.get("estimate"))
        return values
    for value, entry in metrics.items():
        for name in SEGMENTATION_VALUES:
            if isinstance(entry.get(name), Mapping):
                values[f"{name}_{value}"] = _number(entry[name].get("mean"))
    mean_dice = summary.get("dice_mean_over_classes")
    if isinstance(mean_dice, Mapping):
        values["dice_mean"] = _number(mean_dice.get("mean"))
    return values


def aggregate(
    summaries: Sequence[Mapping[str, Any] | str | Path], confidence: float = 0.95
) -> dict[str, Any]:
    """Mean and Student-t interval over runs (seeds or folds) of every headline metric.

    Each run contributes one number per metric, its point estimate on its own evaluation
    (:func:`point_estimates`); the interval is :func:`medvol.metrics.mean_ci`:
    ``mean ± t_{(1+confidence)/2, n−1} · s/√n``, which describes the spread between runs (the
    variation of training with the seed, or of the folds), not the case-level uncertainty
    inside one run. Use it for "k seeds" or "5-fold cross-validation" figures.

    A metric that is undefined (None/NaN) in any run gets no mean (``mean`` None) and lists
    the runs in ``undefined_in``: a failed run must not silently vanish from the average.

    Args:
        summaries: ``summary.json`` contents, or paths to them (or to evaluation folders),
            all of the same task and split.
        confidence: nominal coverage of the intervals.

    Returns:
        ``{"task", "split", "n_runs", "confidence", "method", "sources", "metrics": {name:
        {"mean", "low", "high", "n", "values", "undefined_in"}}}``; with one run ``low`` and
        ``high`` are None.

    Raises:
        MedvolError: no summaries, or summaries of different tasks or splits.
    """
    loaded: list[Mapping[str, Any]] = []
    sources: list[str] = []
    for number, item in enumerate(summaries):
        if isinstance(item, Mapping):
            loaded.append(item)
            sources.append(str(item.get("run", f"run {number}")))
        else:
            loaded.append(read_summary(item))
            sources.append(str(item))
    if not loaded:
        raise MedvolError(None, "aggregate needs at least one evaluation summary")
    for key in ("task", "split"):
        kinds = sorted({str(s.get(key)) for s in loaded})
        if len(kinds) > 1:
            raise MedvolError(None, f"cannot aggregate evaluations of different {key}s: {kinds}")
    estimates = [point_estimates(s) for s in loaded]
    names = [name for name in estimates[0] if all(name in e for e in estimates)]
    metrics: dict[str, Any] = {}
    for name in names:
        values = [e[name] for e in estimates]
        undefined = [sources[i] for i, v in enumerate(values) if not math.isfinite(v)]
        entry: dict[str, Any] = {"values": values, "undefined_in": undefined, "n": len(values)}
        if undefined:
            entry.update(mean=None, low=None, high=None)
        else:
            interval = mean_ci(values, confidence)
            entry.update(mean=interval.estimate, low=interval.low, high=interval.high)
        metrics[name] = entry
    return _json_safe(
        {
            "task": loaded[0].get("task"),
            "split": loaded[0].get("split"),
            "n_runs": len(loaded),
            "confidence": confidence,
            "method": "student t over runs (mean of per-run point estimates)",
            "sources": sources,
            "metrics": metrics,
        }
    )


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def run_cli(args: argparse.Namespace) -> int:
    """``medvol evaluate``; exit code 1 when some case could not be scored (listed in the summary)."""
    evaluation = evaluate_run(
        args.run_dir,
        split=args.split,
        cases=args.cases,
        checkpoint=args.checkpoint,
        out=args.out,
        threshold=args.threshold,
        n_resamples=args.bootstrap,
        tta=args.tta,
        device=args.device,
    )
    for notice in evaluation.notices:
        print(f"notice: {notice}")
    print(format_summary(evaluation.summary))
    errors = evaluation.summary.get("errors") or []
    for error in errors:
        where = f" ({error['path']})" if error.get("path") else ""
        print(f"  not scored: {error['case_id']}{where}: {error['problem']}")
    written = "cases.csv, summary.json" + (
        ", predictions/" if evaluation.summary["task"] == "segmentation" else ""
    )
    print(f"wrote {evaluation.out} ({written})")
    return 1 if errors else 0


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few plain-text lines: what was evaluated, each headline metric with its CI."""
    level = f"{round(100 * summary['bootstrap'].get('confidence', 0.95))}% CI"
    failed = len(summary.get("errors") or [])
    lines = [
        f"{summary['run']}: {summary['task']}, checkpoint {summary['checkpoint']} "
        f"(epoch {summary['epoch']}), split {summary['split']}: {summary['n_cases']} case(s) scored, "
        f"{failed} not"
    ]
    metrics = summary.get("metrics") or {}
    if summary["task"] == "classification":
        for name, entry in metrics.items():
            which = level if entry.get("low") is not None else "no CI, see summary.json"
            lines.append(
                f"  {name:<18} {_interval(entry['estimate'], entry['low'], entry['high'])}  ({which})"
            )
        return "\n".join(lines)
    names = summary.get("class_names") or {}
    for value, entry in metrics.items():
        parts = [
            f"{label} {_interval(entry[key]['mean'], entry[key]['low'], entry[key]['high'])}"
            for key, label in (("dice", "Dice"), ("hd95_mm", "HD95 mm"), ("assd_mm", "ASSD mm"))
        ]
        lines.append(f"  {names.get(value, value):<12} " + "  ".join(parts) + f"  ({level})")
    return "\n".join(lines)


def _interval(estimate: Any, low: Any, high: Any) -> str:
    if estimate is None:
        return "undefined"
    if low is None or high is None:
        return f"{estimate:.4f}"
    return f"{estimate:.4f} [{low:.4f}, {high:.4f}]"
