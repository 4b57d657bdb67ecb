"""``--folds``: which folds, whether a recipe can be cross-validated, the pooled cross-validation mean."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medvol.engine.run_folder import EvaluationFolder
from medvol.errors import MedvolError
from medvol.evaluation.aggregate import over_runs
from medvol.reproduce.scores import number_or_nan, over_seeds
from medvol.reproduce.study import Study

#: ``data.split.method`` values whose recipes train one fold of several (``data.split.fold``).
FOLD_METHODS = ("nnunet", "kfold", "file")


CROSS_VALIDATION_INTERVALS = (
    "per seed, the per-case values of every fold's validation cases pooled and averaged over "
    "cases (undefined cases left out), as nnU-Net's cross-validation summary; over_seeds: the mean "
    "of that over seeds with its Student-t interval over seeds, clipped to the metric's range, and "
    "min and max over seeds; over_folds: the same over the fold means (each fold's mean over its "
    "cases, averaged over seeds); each run with a percentile bootstrap interval over its cases"
)


def parse_folds(text: str) -> list[int]:
    """The folds of ``--folds``: ``0-4`` (both ends included), ``0,2`` or both (``0-2,4``), sorted.

    Raises:
        MedvolError: anything else (a negative number, a backwards range, a fold given twice).
    """
    folds: list[int] = []
    for part in text.split(","):
        first, dash, last = (piece.strip() for piece in part.partition("-"))
        if not first.isdigit() or (dash and not last.isdigit()):
            raise MedvolError(
                None, f"--folds {text!r}: give fold numbers from 0, e.g. 0-4 or 0,2 (not {part.strip()!r})"
            )
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise MedvolError(
                None, f"--folds {text!r}: the range {part.strip()} runs backwards ({high}-{low}?)"
            )
        folds += range(low, high + 1)
    twice = sorted({fold for fold in folds if folds.count(fold) > 1})
    if twice:
        raise MedvolError(None, f"--folds {text!r}: fold(s) {', '.join(map(str, twice))} given twice")
    return sorted(folds)


def check_folds(study: Study, budget: str, overrides: list[str], folds: list[int]) -> int:
    """Refuse ``--folds`` where it cannot be a cross-validation; the number of folds of the recipe's split.

    The budget's recipe must train one fold of several (``data.split.method`` nnunet, kfold
    or file), the study must score a segmentation's validation cases (each fold's own), and
    every fold must exist.

    Raises:
        MedvolError: naming the recipe or study file and what is wrong, in one line.
    """
    from medvol.config import load_config
    from medvol.data.splits import load_folds

    recipe = study.budgets[budget]
    config = load_config(recipe, overrides)
    split = config.data.split
    if split.method not in FOLD_METHODS:
        raise MedvolError(
            recipe,
            f"--folds needs a recipe split into folds (data.split.method {', '.join(FOLD_METHODS)}); "
            f"this one uses split.method {split.method!r}: run it without --folds",
        )
    if config.data.task != "segmentation" or study.split != "val" or study.cases is not None:
        raise MedvolError(
            study.path,
            "--folds pools each fold's validation cases of a segmentation study; this study scores "
            f"the {'cases of ' + str(study.cases) if study.cases else study.split + ' split'} of a "
            f"{config.data.task} task: run it without --folds",
        )
    if any(override.partition("=")[0].strip() == "data.split.fold" for override in overrides):
        raise MedvolError(None, "--folds sets data.split.fold of each run: remove --set data.split.fold")
    count = len(load_folds(split.file)) if split.method == "file" and split.file else split.n_splits
    outside = [fold for fold in folds if fold >= count]
    if outside:
        raise MedvolError(
            recipe,
            f"--folds names fold(s) {', '.join(map(str, outside))}, but the split has {count} folds "
            f"(0-{count - 1})",
        )
    return count


def cross_validation(metrics: list[str], runs: list[dict[str, Any]], n_folds: int) -> dict[str, Any]:
    """Each column over the folds and seeds of a cross-validation, as nnU-Net summarises one.

    Per seed, the per-case values of every fold's evaluation (``cases.csv``) are pooled and
    averaged over cases, NaN (undefined) cases left out: nnU-Net's cross-validation mean
    (its validation predictions of all folds gathered and scored as one folder).

    Args:
        metrics: the study's columns, ``METRIC_CLASS`` (``dice_1``).
        runs: ``results.json`` entries with ``fold``, ``seed``, ``run_dir`` and ``evaluations``.
        n_folds: the number of folds of the split (5 for nnU-Net's).

    Returns:
        ``{"folds", "n_folds", "cases", "method", "per_seed": [{"seed", "cases", "metrics"}],
        "over_seeds": {metric: over_runs of the per-seed pooled means}, "per_fold": [{"fold",
        "cases", "over_seeds"}], "over_folds": {metric: over_runs of the fold means}}``.

    Raises:
        MedvolError: a case scored in two folds (the folds' validation cases overlap).
    """
    folds = sorted({int(run["fold"]) for run in runs})
    seeds = sorted({int(run["seed"]) for run in runs})
    per_seed = [_pooled(metrics, [run for run in runs if run["seed"] == seed]) for seed in seeds]
    per_fold = []
    for fold in folds:
        of_fold = [run for run in runs if run["fold"] == fold]
        per_fold.append(
            {
                "fold": fold,
                "cases": of_fold[0]["cases"],
                "over_seeds": over_seeds(of_fold),
            }
        )
    sources = [f"fold {fold}" for fold in folds]
    return {
        "folds": folds,
        "n_folds": n_folds,
        "cases": per_seed[0]["cases"],
        "method": CROSS_VALIDATION_INTERVALS,
        "per_seed": per_seed,
        "over_seeds": {
            m: over_runs([entry["metrics"][m] for entry in per_seed], [f"seed {s}" for s in seeds], m)
            for m in metrics
        },
        "per_fold": per_fold,
        "over_folds": {
            m: over_runs(
                [number_or_nan(entry["over_seeds"].get(m, {}).get("mean")) for entry in per_fold], sources, m
            )
            for m in metrics
        },
    }


def _pooled(metrics: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One seed's per-case values of every fold pooled: ``{"seed", "cases", "metrics": {metric: mean}}``."""
    from medvol.report.read import read_segmentation_cases

    scored: dict[str, int] = {}
    values: dict[str, list[float]] = {m: [] for m in metrics}
    for run in runs:
        evaluation = EvaluationFolder(Path(run["run_dir"]) / run["evaluations"][0])
        for case_id, classes in read_segmentation_cases(evaluation).items():
            if case_id in scored:
                raise MedvolError(
                    evaluation.cases,
                    f"case {case_id} is scored in folds {scored[case_id]} and {run['fold']}: the folds' "
                    "validation cases overlap, so they cannot be pooled",
                )
            scored[case_id] = run["fold"]
            for m in metrics:
                metric, _, value = m.rpartition("_")
                values[m].append((classes.get(value) or {}).get(metric, math.nan))
    return {
        "seed": runs[0]["seed"],
        "cases": len(scored),
        "metrics": {m: _nanmean(v) for m, v in values.items()},
    }


def _nanmean(values: list[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    return float(np.mean(array[np.isfinite(array)])) if np.isfinite(array).any() else math.nan
