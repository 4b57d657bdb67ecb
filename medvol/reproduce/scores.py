"""One run's entry of ``results.json``: its metrics, a threshold chosen on validation; columns over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvol.engine.run_folder import EvaluationFolder, RunFolder
from medvol.errors import MedvolError
from medvol.evaluation.aggregate import over_runs
from medvol.reproduce.study import Study

THRESHOLD_RULE = "maximises balanced accuracy on the validation split (same checkpoint)"


#: Columns added for a binary classifier scored on its test split, and the metric each one is.
AT_VALIDATION_THRESHOLD = {
    "accuracy_at_val_threshold": "accuracy",
    "balanced_accuracy_at_val_threshold": "balanced_accuracy",
}


SEED_INTERVALS = (
    "mean over seeds with its Student-t interval, clipped to the metric's range (clipped: true, "
    "marked † in the table); min and max over seeds; each seed with a percentile bootstrap interval "
    "over cases"
)


def seed_entry(study: Study, seed: int, run: RunFolder, evaluation: EvaluationFolder) -> dict[str, Any]:
    """One seed's line of ``results.json``: its metrics, and its validation threshold if it has one."""
    summary = evaluation.read_summary()
    entry: dict[str, Any] = {
        "seed": seed,
        "run_dir": str(run.path),
        "folder": f"runs/{run.name}",
        "evaluations": [evaluation.path.name],
        "train_seconds": _train_seconds(run.path),
        "epoch": summary.get("epoch"),
        "cases": summary.get("n_cases"),
        "metrics": {m: _seed_metric(summary, m) for m in study.metrics},
    }
    if _chooses_threshold(study, summary):
        chosen = threshold_on_validation(run, summary, evaluation)
        entry["evaluations"].append(run.reproduction("val").path.name)
        entry["val_threshold"] = chosen["val_threshold"]
        entry["metrics"].update(chosen["metrics"])
    return entry


def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each column over the seeds (:func:`medvol.evaluation.aggregate.over_runs`)."""
    sources = [f"seed {run['seed']}" for run in runs]
    columns = [m for m in runs[0]["metrics"] if all(m in run["metrics"] for run in runs)]
    return {
        m: over_runs(
            [number_or_nan(run["metrics"][m]["estimate"]) for run in runs],
            sources,
            AT_VALIDATION_THRESHOLD.get(m, m),
        )
        for m in columns
    }


def _chooses_threshold(study: Study, summary: dict[str, Any]) -> bool:
    """A binary classifier scored on its test split: its threshold is chosen on validation."""
    return (
        study.split == "test"
        and study.cases is None
        and summary.get("task") == "classification"
        and summary.get("n_classes") == 2
    )


def threshold_on_validation(
    run: RunFolder, test_summary: dict[str, Any], test: EvaluationFolder
) -> dict[str, Any]:
    """Choose a threshold on the validation cases of the tested checkpoint; score the test cases at it.

    The validation split of the same checkpoint is evaluated once into ``reproduce-val``
    (a look at validation data, which chose the checkpoint already); the threshold that
    maximises its balanced accuracy is applied to the test probabilities in ``cases.csv``.

    Returns:
        ``{"val_threshold": {"threshold", "rule", "val_balanced_accuracy", "val_cases"},
        "metrics": {"accuracy_at_val_threshold": {...}, "balanced_accuracy_at_val_threshold": {...}}}``.

    Raises:
        MedvolError: the validation evaluation is of another epoch than the test evaluation.
    """
    from medvol.evaluation import evaluate_run
    from medvol.evaluation.classification import (
        choose_threshold,
        read_classification_cases,
        scores_at_threshold,
    )
    from medvol.metrics import classification_statistic

    validation = run.reproduction("val")
    if not validation.summary.is_file():
        print(f"[{run.name}] evaluating val ({test_summary['checkpoint']}) to choose a threshold", flush=True)
        evaluate_run(run.path, split="val", checkpoint=test_summary["checkpoint"], out=validation.path)
    val_summary = validation.read_summary()
    if val_summary.get("epoch") != test_summary.get("epoch"):
        raise MedvolError(
            validation.path,
            f"is of epoch {val_summary.get('epoch')}, the test evaluation of epoch "
            f"{test_summary.get('epoch')}; remove it to evaluate the tested checkpoint",
        )
    _, val_targets, val_probabilities = read_classification_cases(validation.cases)
    threshold = choose_threshold(val_targets, val_probabilities)
    _, targets, probabilities = read_classification_cases(test.cases)
    bootstrap = test_summary.get("bootstrap") or {}
    scores = scores_at_threshold(
        targets,
        probabilities,
        threshold,
        int(bootstrap.get("n_resamples", 2000)),
        float(bootstrap.get("confidence", 0.95)),
        int(bootstrap.get("seed", 0)),
    )
    val_balanced = classification_statistic("balanced_accuracy", threshold)(val_targets, val_probabilities)
    return {
        "val_threshold": {
            "threshold": threshold,
            "rule": THRESHOLD_RULE,
            "val_balanced_accuracy": val_balanced,
            "val_cases": int(val_targets.size),
        },
        "metrics": {f"{name}_at_val_threshold": value for name, value in scores.items()},
    }


def majority_baseline(run: RunFolder, first: dict[str, Any]) -> dict[str, Any] | None:
    """The majority-class row of a classification study (``None`` for segmentation)."""
    from medvol.evaluation.classification import majority_class_scores, read_classification_cases

    evaluation = run.path / first["evaluations"][0]
    summary = EvaluationFolder(evaluation).read_summary()
    if summary.get("task") != "classification":
        return None
    train_counts = (run.read_json(run.fingerprint).get("class_counts") or {}).get("train")
    if not train_counts:
        return None
    _, targets, _ = read_classification_cases(EvaluationFolder(evaluation).cases)
    baseline = majority_class_scores(train_counts, targets, int(summary["n_classes"]))
    return {**baseline, "method": "majority class of the training split, for every case (no model)"}


def _train_seconds(run_dir: Path) -> float:
    from medvol.engine.tracking import read_metrics

    return round(sum(float(record.get("seconds", 0.0)) for record in read_metrics(run_dir)), 1)


def _seed_metric(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """One seed's value of ``name`` with its case-level bootstrap CI."""
    metrics = summary.get("metrics") or {}
    if summary.get("task") == "classification":
        entry = metrics.get(name) or {}
        return {"estimate": entry.get("estimate"), "low": entry.get("low"), "high": entry.get("high")}
    metric, _, value = name.rpartition("_")
    entry = (metrics.get(value) or {}).get(metric) or {}
    return {"estimate": entry.get("mean"), "low": entry.get("low"), "high": entry.get("high")}


def number_or_nan(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")
