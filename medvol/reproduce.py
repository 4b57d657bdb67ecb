"""``medvol reproduce NAME``: a published table, re-run end to end with seeds and confidence intervals.

A study is a YAML file in ``medvol/studies/`` (shipped with medvol; or any
path given as NAME)::

    name: adrenalmnist3d
    description: one line
    budgets: {cpu: recipes/adrenalmnist3d-resnet18-cpu.yaml, full: recipes/adrenalmnist3d-resnet18.yaml}
    data:                                       # medvol.fetch: where the recipes' data comes from
      - {path: adrenalmnist3d/adrenalmnist3d.npz, url: https://..., md5: bbd3...}
    evaluate: {split: test, checkpoint: best}   # what is scored once, after training
    metrics: [auc, accuracy, balanced_accuracy] # the columns of the table
    published:
      sources: {medmnist: paper, table and year of the published figures}
      rows: [{method: ResNet-18+3D, auc: 0.827, accuracy: 0.721, source: medmnist}, ...]

A recipe's relative ``data.root`` names a path in the data folder
(``medvol.fetch.data_folder``); the study's data there is downloaded and
verified first (``medvol.fetch``). A ``data.root`` given with ``--set`` is used
as given, and nothing is downloaded.

For each seed ``0 .. K-1`` the budget's experiment config is trained with
``train.seed`` set (model selection uses validation data only, as the config
says), then evaluated once as ``evaluate`` says, with a case-level bootstrap
CI. The table gives, per metric, the mean over seeds with its 95% t-interval
clipped to the metric's range, the lowest and highest seed
(``medvol.evaluation.aggregate.over_runs``), each seed's value with its
bootstrap CI, and the published figures with their sources. A finished seed is
not trained or evaluated again, so an interrupted reproduction continues where
it stopped and the test split is scored once per run.

A binary classifier scored on its test split also gets, per seed, the
validation cases of the same checkpoint scored (``reproduce-val``) to choose a
decision threshold (``medvol.evaluation.classification.choose_threshold``),
and accuracy and balanced accuracy on the test cases at that threshold, beside
those at 0.5; and the table gets a majority-class row (the class most frequent
in the training split). Every test evaluation found in the output folder is
kept in ``test-evaluations.json`` (which runs, which recipe, when), so the
table states how many times the test split was scored and for which recipes.
``--publish DIR`` copies ``results.json``, that record, each seed's config and
each evaluation's ``summary.json`` and ``cases.csv`` to ``DIR``: the small
files every figure of the table can be derived from again.

``--folds 0-4`` (a segmentation study scored on validation cases, whose recipe
is split into folds) runs every seed on each fold given, one run folder per
fold and seed, and heads the table with nnU-Net's cross-validation mean: per
seed, the per-case values of all the folds' validation cases pooled and
averaged (:func:`cross_validation`), then over seeds; with the spread over
folds and seeds and a row per fold.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medvol.engine.run_folder import EvaluationFolder, RunFolder
from medvol.errors import MedvolError
from medvol.evaluation.aggregate import over_runs
from medvol.evaluation.summary import format_interval
from medvol.fetch import Fetched, Source, data_folder, fetch, parse_sources
from medvol.io.atomic import atomic_path, json_safe, write_json
from medvol.logs import get_logger, track

logger = get_logger(__name__)

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
TEST_LEDGER = "test-evaluations.json"
THRESHOLD_RULE = "maximises balanced accuracy on the validation split (same checkpoint)"
SPLIT_NAMES = {"val": "validation", "train": "training"}  # how a split is named in a table
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
#: ``data.split.method`` values whose recipes train one fold of several (``data.split.fold``).
FOLD_METHODS = ("nnunet", "kfold", "file")
CROSS_VALIDATION_INTERVALS = (
    "per seed, the per-case values of every fold's validation cases pooled and averaged over "
    "cases (undefined cases left out), as nnU-Net's cross-validation summary; over_seeds: the mean "
    "of that over seeds with its Student-t interval over seeds, clipped to the metric's range, and "
    "min and max over seeds; over_folds: the same over the fold means (each fold's mean over its "
    "cases, averaged over seeds); each run with a percentile bootstrap interval over its cases"
)
CROSS_VALIDATION_NOTE = (
    "Cross-validation mean as nnU-Net's cross-validation summary computes it: the validation cases "
    "of the folds run, each segmented by the model of its fold (which did not train on it), pooled; "
    "per seed, each column is the mean over the pooled cases (a case where the value is undefined "
    "left out), and the table gives its mean over seeds with the 95% Student-t interval over seeds, "
    "clipped to the metric's range (none with one seed). Spread over folds: the lowest and highest "
    "fold mean (each fold's mean over its cases, averaged over seeds); results.json also gives the "
    "t-interval over folds (cross_validation.over_folds)."
)
COLUMN_NAMES = {
    "auc": "AUC",
    "accuracy": "ACC at 0.5",
    "balanced_accuracy": "balanced ACC at 0.5",
    "accuracy_at_val_threshold": "ACC at val. threshold",
    "balanced_accuracy_at_val_threshold": "balanced ACC at val. threshold",
    "dice_1": "Dice 1",
    "dice_2": "Dice 2",
}


@dataclass(frozen=True)
class Study:
    """A study file, loaded and checked."""

    name: str
    path: Path
    description: str
    budgets: dict[str, Path]
    split: str
    cases: Path | None
    checkpoint: str
    metrics: list[str]
    published: dict[str, Any]
    data: list[Source]
    labels: dict[str, str]


def available_studies() -> list[str]:
    """Names of the studies shipped with medvol (``medvol/studies/``)."""
    return sorted(path.stem for path in STUDIES_DIR.glob("*.yaml"))


def load_study(name_or_path: str | Path) -> Study:
    """A study by name (``medvol/studies/NAME.yaml``) or by path.

    Raises:
        MedvolError: unknown name, unreadable file, or missing keys.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = STUDIES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise MedvolError(
                None, f"unknown study {name_or_path!r}; available: {', '.join(available_studies()) or 'none'}"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MedvolError(path, f"cannot read the study file ({error})") from error
    if not isinstance(data, dict):
        raise MedvolError(
            path, "a study file must be a mapping (name, budgets, evaluate, metrics, published)"
        )
    missing = [key for key in ("name", "budgets", "evaluate", "metrics", "published") if key not in data]
    if missing:
        raise MedvolError(path, f"study file lacks {', '.join(missing)}")
    evaluate = data["evaluate"]
    _check_published(path, data["published"], [str(m) for m in data["metrics"]])
    return Study(
        name=str(data["name"]),
        path=path,
        description=str(data.get("description", "")),
        budgets={str(k): (path.parent / v).resolve() for k, v in data["budgets"].items()},
        split=str(evaluate.get("split", "test")),
        cases=None if evaluate.get("cases") is None else (path.parent / evaluate["cases"]).resolve(),
        checkpoint=str(evaluate.get("checkpoint", "best")),
        metrics=[str(m) for m in data["metrics"]],
        published=dict(data["published"]),
        data=parse_sources(data.get("data"), path),
        labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
    )


def _check_published(path: Path, published: Any, metrics: list[str]) -> None:
    """Every published row names its method, a figure of a table column, and its source.

    A row's ``source`` is a key of ``published.sources`` (paper, table and year); a study
    whose rows all come from one place may give ``published.source`` instead.
    """
    if not isinstance(published, dict) or not isinstance(published.get("rows"), list):
        raise MedvolError(path, "published must be a mapping with rows: [{method, METRIC: value, source}]")
    sources = published.get("sources") or {}
    for number, row in enumerate(published["rows"], start=1):
        if not isinstance(row, dict) or "method" not in row:
            raise MedvolError(path, f"published row {number} has no method")
        if not any(metric in row for metric in metrics):
            raise MedvolError(path, f"published row {number} ({row['method']}) gives none of {metrics}")
        if row.get("source") not in sources and not published.get("source"):
            raise MedvolError(
                path,
                f"published row {number} ({row['method']}) cites no source: give source: KEY of "
                f"published.sources ({', '.join(map(str, sources)) or 'none'}): paper, table and year",
            )


def reproduce(
    study: Study,
    budget: str,
    seeds: int,
    out: Path,
    overrides: list[str] | None = None,
    data_dir: Path | None = None,
    publish: Path | None = None,
    folds: list[int] | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``seeds`` runs of a study's budget; write ``results.json`` and ``results.md``.

    Args:
        study: from ``load_study``.
        budget: a key of ``study.budgets`` (``cpu``, ``full``).
        seeds: number of seeds, ``0 .. seeds-1``.
        out: folder for the runs and the table.
        overrides: ``KEY=VALUE`` config overrides applied to every run; the
            table says that the protocol was changed.
        data_dir: the data folder (default ``medvol.fetch.data_folder()``).
        publish: a folder to copy the results and each evaluation's files to
            (:func:`publish_results`).
        folds: cross-validation folds to run (:func:`parse_folds`), each with every seed, and
            pooled (:func:`cross_validation`); ``None``: the recipe's own fold, one run per seed.

    Returns:
        The content of ``results.json``.
    """
    if budget not in study.budgets:
        raise MedvolError(study.path, f"no budget {budget!r}; this study has {sorted(study.budgets)}")
    if seeds < 1:
        raise MedvolError(None, f"--seeds must be at least 1, got {seeds}")
    overrides = list(overrides or [])
    n_folds = None if folds is None else check_folds(study, budget, overrides, folds)
    data_root, fetched = prepare_data(study, budget, overrides, data_folder(data_dir))
    runs: list[dict[str, Any]] = []
    folders: list[tuple[int, RunFolder]] = []
    each_fold: list[int | None] = [None] if folds is None else list(folds)
    plan = [(fold, seed) for fold in each_fold for seed in range(seeds)]
    unit = "seed" if folds is None else "run"
    for fold, seed in track(plan, f"reproduce {study.name}", unit, logger):
        entry, run = _reproduce_run(study, budget, fold, seed, out, overrides, data_root)
        runs.append(entry)
        folders.append((seed, run))
    cv = None if n_folds is None else cross_validation(study.metrics, runs, n_folds)
    results: dict[str, Any] = {
        "study": study.name,
        "description": study.description,
        "budget": budget,
        "config": str(study.budgets[budget]),
        "recipe": study.budgets[budget].name,
        "overrides": overrides,
        "protocol_changed": bool(overrides),
        "evaluated": {
            "split": study.split,
            "cases": None if study.cases is None else str(study.cases),
            "checkpoint": study.checkpoint,
        },
        "data": [_data_entry(item) for item in fetched],
        "seeds": list(range(seeds)),
        "runs": runs,
        "over_seeds": _over_seeds(runs) if cv is None else cv.pop("over_seeds"),
        "intervals": SEED_INTERVALS if cv is None else CROSS_VALIDATION_INTERVALS,
        "baseline": _majority_baseline(folders[0][1], runs[0]),
        "test_evaluations": record_test_evaluations(out, folders, study.budgets[budget].name),
        "published": study.published,
        "labels": study.labels,
        "environment": _environment(Path(runs[0]["run_dir"])),
    }
    if cv is not None:
        results["cross_validation"] = cv
    results = json_safe(results)  # the table from what results.json holds: None, not NaN, where undefined
    write_json(out / "results.json", results, allow_nan=False)
    with atomic_path(out / "results.md") as temporary:
        temporary.write_text(format_results(results))
    if publish is not None:
        publish_results(out, results, publish)
    return results


def _reproduce_run(
    study: Study,
    budget: str,
    fold: int | None,
    seed: int,
    out: Path,
    overrides: list[str],
    data_root: Path | None,
) -> tuple[dict[str, Any], RunFolder]:
    """Train (unless finished) and evaluate (unless evaluated) one run; its ``results.json`` entry.

    The run folder is ``OUT/runs/STUDY-BUDGET-seedS``, or ``STUDY-BUDGET-foldF-seedS`` for a
    fold named by ``--folds`` (``fold`` not ``None``: ``data.split.fold`` is set to it).
    """
    from medvol.config import dump_config, load_config
    from medvol.engine.train import train
    from medvol.evaluation import evaluate_run

    name = (
        f"{study.name}-{budget}-seed{seed}"
        if fold is None
        else f"{study.name}-{budget}-fold{fold}-seed{seed}"
    )
    label = f"[{study.name} seed {seed}]" if fold is None else f"[{study.name} fold {fold} seed {seed}]"
    config = load_config(
        study.budgets[budget],
        [
            *overrides,
            *([] if fold is None else [f"data.split.fold={fold}"]),
            f"train.seed={seed}",
            f"tracking.output_dir={out / 'runs'}",
            f"tracking.name={name}",
        ],
    )
    if data_root is not None:
        config = _with_data_root(config, data_root)
    run = RunFolder(out / "runs" / name)
    _check_same_recipe(run, dump_config(config))
    evaluation = run.reproduction(study.split if study.cases is None else "cases")
    started = time.perf_counter()
    if not evaluation.summary.is_file():
        if not _finished(run, config.train.epochs, config.train.early_stop_patience):
            print(f"{label} training {run.path}", flush=True)
            train(config, resume=run.checkpoint("last").is_file())
        print(f"{label} evaluating ({study.split}, {study.checkpoint})", flush=True)
        evaluate_run(
            run.path,
            split="val" if study.split == "val" else "test",
            cases=study.cases,
            checkpoint="last" if study.checkpoint == "last" else "best",
            out=evaluation.path,
        )
    else:
        print(f"{label} already evaluated: {evaluation.path}", flush=True)
    entry = _seed_entry(study, seed, run, evaluation)
    if fold is not None:
        entry = {"fold": fold, **entry}
    entry["session_seconds"] = round(time.perf_counter() - started, 1)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "configs" / f"{name}.yaml").write_text(dump_config(config))
    return entry, run


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
                "over_seeds": _over_seeds(of_fold),
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
                [_number(entry["over_seeds"].get(m, {}).get("mean")) for entry in per_fold], sources, m
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


def _seed_entry(study: Study, seed: int, run: RunFolder, evaluation: EvaluationFolder) -> dict[str, Any]:
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


def _over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each column over the seeds (:func:`medvol.evaluation.aggregate.over_runs`)."""
    sources = [f"seed {run['seed']}" for run in runs]
    columns = [m for m in runs[0]["metrics"] if all(m in run["metrics"] for run in runs)]
    return {
        m: over_runs(
            [_number(run["metrics"][m]["estimate"]) for run in runs],
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


def _majority_baseline(run: RunFolder, first: dict[str, Any]) -> dict[str, Any] | None:
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


def recipe_fingerprint(config: ExperimentConfig) -> str:
    """12 hex digits naming a recipe: its resolved config without the seed, output and data location."""
    from medvol.config import dump_config

    recipe = yaml.safe_load(dump_config(config))
    recipe.pop("tracking", None)
    recipe.get("train", {}).pop("seed", None)
    recipe.get("data", {}).pop("root", None)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def record_test_evaluations(out: Path, runs: list[tuple[int, RunFolder]], recipe: str) -> dict[str, Any]:
    """Add the runs' test evaluations to ``OUT/test-evaluations.json``; the record and a summary of it.

    Every ``summary.json`` of a test evaluation in a run folder (``reproduce-test``, and
    ``evaluation-test`` from ``medvol evaluate``) is one entry, found by run, folder and
    creation time; an entry is never removed, so the count survives a run that is removed
    and trained again. ``test_evaluation_number`` is ``medvol evaluate``'s own count for the run.

    Returns:
        ``{"count", "record": TEST_LEDGER, "by_recipe": [{"recipe", "fingerprint", "seeds"}]}``,
        ``seeds`` listing one seed per evaluation.
    """
    path = out / TEST_LEDGER
    entries = _read_test_evaluations(path)
    seen = {(e["run"], e["folder"], e["created"]) for e in entries}
    for seed, run in runs:
        for folder in (run.reproduction("test"), run.evaluation("test")):
            if not folder.summary.is_file():
                continue
            summary = folder.read_summary()
            key = (run.name, folder.path.name, summary.get("created"))
            if key in seen:
                continue
            seen.add(key)
            entries.append(
                {
                    "run": run.name,
                    "folder": folder.path.name,
                    "created": summary.get("created"),
                    "seed": seed,
                    "recipe": recipe,
                    "fingerprint": recipe_fingerprint(run.read_config()),
                    "checkpoint": summary.get("checkpoint"),
                    "epoch": summary.get("epoch"),
                    "test_evaluation_number": summary.get("test_evaluation_number", 1),
                    "medvol_version": summary.get("medvol_version"),
                }
            )
    if entries:
        write_json(path, {"split": "test", "evaluations": entries})
    groups: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        groups.setdefault((entry["recipe"], entry["fingerprint"]), []).append(int(entry["seed"]))
    return {
        "count": len(entries),
        "record": TEST_LEDGER,
        "by_recipe": [{"recipe": r, "fingerprint": f, "seeds": sorted(s)} for (r, f), s in groups.items()],
    }


def _read_test_evaluations(path: Path) -> list[dict[str, Any]]:
    """The entries of ``test-evaluations.json`` (none when it does not exist yet)."""
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["evaluations"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedvolError(
            path, f"cannot read the record of test evaluations ({error}); restore it"
        ) from error
    if not isinstance(entries, list):
        raise MedvolError(path, "the record of test evaluations must list them under 'evaluations'")
    return entries


def publish_results(out: Path, results: dict[str, Any], target: Path) -> list[Path]:
    """Copy what every figure of ``results.json`` comes from into ``target``, in the same layout.

    ``results.json``, ``test-evaluations.json``, ``configs/RUN.yaml`` and, for each run,
    ``runs/RUN/EVALUATION/summary.json`` and ``cases.csv`` (kilobytes; no checkpoint, no
    prediction).

    Returns:
        The files written.
    """
    relative = [Path("results.json"), Path(TEST_LEDGER)]
    for run in results["runs"]:
        relative.append(Path("configs") / f"{Path(run['folder']).name}.yaml")
        for evaluation in run["evaluations"]:
            relative += [
                Path(run["folder"]) / evaluation / "summary.json",
                Path(run["folder"]) / evaluation / "cases.csv",
            ]
    written = []
    for path in relative:
        if not (out / path).is_file():
            continue
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target / path) as temporary:
            shutil.copyfile(out / path, temporary)
        written.append(target / path)
    return written


def prepare_data(
    study: Study, budget: str, overrides: list[str], data_dir: Path
) -> tuple[Path | None, list[Fetched]]:
    """The budget recipe's data in ``data_dir``, fetched and verified.

    Returns:
        The ``data.root`` to train on (``None``: the recipe's own, absolute or
        set with ``--set``), and the study's data entries it uses.
    """
    from medvol.config import load_config

    if any(override.partition("=")[0].strip() == "data.root" for override in overrides):
        return None, []
    root = load_config(study.budgets[budget], overrides).data.root
    if root.is_absolute():
        return None, []
    used = [source for source in study.data if Path(source.path) in (root, *root.parents)]
    return data_dir / root, [fetch(source, data_dir) for source in used]


def _with_data_root(config: ExperimentConfig, root: Path) -> ExperimentConfig:
    return config.model_copy(update={"data": config.data.model_copy(update={"root": root})})


def _data_entry(item: Fetched) -> dict[str, Any]:
    source = item.source
    return {
        "path": source.path,
        "url": source.url,
        "md5": source.md5,
        "archive": source.archive,
        "location": str(item.location),
        "verified": item.verified,
    }


def _check_same_recipe(run: RunFolder, config_text: str) -> None:
    """Refuse to continue or reuse a run trained with another recipe (study config or ``--set`` changed).

    ``tracking`` (where the run is written) is not part of the recipe. The run's
    config is read with the typed loader, so a run folder of an earlier medvol
    compares by what it means, not by how it was spelt.
    """
    from medvol.config import dump_config

    if not run.config.is_file():
        return
    before = yaml.safe_load(dump_config(run.read_config()))
    now = yaml.safe_load(config_text)
    changed = sorted(k for k in (before.keys() | now.keys()) - {"tracking"} if before.get(k) != now.get(k))
    if changed:
        raise MedvolError(
            run.path,
            f"was trained with another recipe (changed since: {', '.join(changed)}); reproduce into "
            "another --out folder, or remove this run",
        )


def _finished(run: RunFolder, epochs: int, patience: int | None) -> bool:
    """Whether the run's last checkpoint holds its final epoch or its early stop."""
    last = run.checkpoint("last")
    if not last.is_file():
        return False
    from medvol.engine.checkpoint import load_checkpoint

    progress = load_checkpoint(last)["progress"]
    stopped_early = patience is not None and int(progress["stale_validations"]) >= patience
    return int(progress["epoch"]) >= epochs or stopped_early


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


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _environment(run_dir: Path) -> dict[str, Any]:
    from medvol.engine.run_folder import RunFolder

    run = RunFolder(run_dir)
    return run.read_json(run.environment) if run.environment.is_file() else {}


def format_results(results: dict[str, Any], title: bool = True) -> str:
    """The comparison table in Markdown and what was scored how often; ``title=False``: no heading."""
    metrics = list(results["over_seeds"])
    labels = {**COLUMN_NAMES, **(results.get("labels") or {})}
    lines = [f"# {results['study']} ({results['budget']} budget)", ""] if title else []
    lines += [results["description"], "", _scored_line(results), ""]
    if results["protocol_changed"]:
        lines += [f"**Protocol changed by overrides {results['overrides']}: not the study's numbers.**", ""]
    thresholds = [run["val_threshold"]["threshold"] for run in results["runs"] if "val_threshold" in run]
    if thresholds:
        lines += [
            "ACC and balanced ACC *at 0.5* threshold the class-1 probability at 0.5; *at val. threshold*, "
            f"at the threshold that {THRESHOLD_RULE}, chosen per seed: "
            + ", ".join(f"{t:.4f}" for t in thresholds)
            + ".",
            "",
        ]
    lines += ["| | " + " | ".join(labels.get(m, m) for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    over = results["over_seeds"]
    if results.get("cross_validation"):
        lines += _cross_validation_rows(results, metrics)
    else:
        lines += _seed_rows(results, metrics)
    baseline = results.get("baseline")
    if baseline:
        counts = baseline["train_counts"]
        cells = [_plain(baseline["metrics"].get(m)) for m in metrics]
        lines.append(
            f"| majority class (class {baseline['class']}: {counts[str(baseline['class'])]} of "
            f"{sum(counts.values())} training cases), no model | " + " | ".join(cells) + " |"
        )
    published = results["published"]
    keys = _source_keys(published)
    for row in published.get("rows", []):
        values = [_plain(row.get(m)) for m in metrics]
        lines.append(
            f"| {row['method']} (published [{keys.index(_row_source(row, published)) + 1}]) | "
            + " | ".join(values)
            + " |"
        )
    lines.append("")
    if any((over.get(m) or {}).get("clipped") for m in metrics):
        lines += ["† The t-interval reached outside the metric's range and was clipped to it.", ""]
    if results.get("cross_validation"):
        lines += [CROSS_VALIDATION_NOTE, ""]
    for number, key in enumerate(keys, start=1):
        lines += [f"[{number}] {(published.get('sources') or {}).get(key, key)}", ""]
    for data in results.get("data", []):
        checked = "verified" if data["verified"] else "not verified: extracted without medvol"
        what = f"archive {data['archive']}" if data["archive"] else data["path"]
        lines += [f"Data: `{data['path']}` in the data folder ({what}, MD5 {data['md5']}, {checked}).", ""]
    times = ", ".join(f"{_run_label(r)}: {r['train_seconds'] / 60:.1f} min" for r in results["runs"])
    epochs = ", ".join(f"{_run_label(r)}: {r['epoch']}" for r in results["runs"])
    lines += [f"Training time (sum of epoch times): {times}. Evaluated epochs: {epochs}.", ""]
    return "\n".join(lines)


def _seed_rows(results: dict[str, Any], metrics: list[str]) -> list[str]:
    """The mean over seeds, the lowest and highest seed, and each seed's row."""
    count = len(results["seeds"])
    over = results["over_seeds"]
    lines = [
        f"| medvol, mean over {_count(count, 'seed')} [95% t-interval] | "
        + " | ".join(_mean_cell(over.get(m) or {}) for m in metrics)
        + " |"
    ]
    if count > 1:
        lines.append(
            f"| medvol, lowest – highest of {count} seeds | "
            + " | ".join(_range_cell(over.get(m) or {}) for m in metrics)
            + " |"
        )
    for run in results["runs"]:
        lines.append(
            f"| seed {run['seed']} [95% bootstrap interval over cases] | {_run_cells(run, metrics)} |"
        )
    return lines


def _cross_validation_rows(results: dict[str, Any], metrics: list[str]) -> list[str]:
    """The pooled mean of the folds run (how many of how many in its label), its spread, each fold."""
    cv = results["cross_validation"]
    folds, n_folds, count = cv["folds"], cv["n_folds"], len(results["seeds"])
    listed = ", ".join(map(str, folds))
    what = (
        f"{n_folds}-fold cross-validation (folds {listed})"
        if len(folds) == n_folds
        else f"{len(folds)} of {n_folds} folds (folds {listed}; not a {n_folds}-fold mean)"
    )
    over, spread = results["over_seeds"], cv["over_folds"]
    lines = [
        f"| medvol, {what}: per-case mean over the {cv['cases']} pooled validation cases, mean over "
        f"{_count(count, 'seed')} [95% t-interval over seeds] | "
        + " | ".join(_mean_cell(over.get(m) or {}) for m in metrics)
        + " |"
    ]
    if len(folds) > 1:
        lines.append(
            f"| medvol, lowest – highest of the {len(folds)} folds (fold means over seeds) | "
            + " | ".join(_range_cell(spread.get(m) or {}) for m in metrics)
            + " |"
        )
    if count > 1:
        lines.append(
            f"| medvol, lowest – highest of {count} seeds (pooled means) | "
            + " | ".join(_range_cell(over.get(m) or {}) for m in metrics)
            + " |"
        )
    for fold in cv["per_fold"]:
        name = f"fold {fold['fold']} ({fold['cases']} case{'' if fold['cases'] == 1 else 's'})"
        if count == 1:
            run = next(r for r in results["runs"] if r["fold"] == fold["fold"])
            cells = _run_cells(run, metrics)
            lines.append(f"| {name} [95% bootstrap interval over cases] | {cells} |")
            continue
        cells = " | ".join(_fold_cell(fold["over_seeds"].get(m) or {}) for m in metrics)
        lines.append(f"| {name}, mean over {count} seeds (lowest – highest seed) | {cells} |")
    return lines


def _run_cells(run: dict[str, Any], metrics: list[str]) -> str:
    """One run's value of each metric with its bootstrap interval over cases."""
    return " | ".join(
        format_interval(*(run["metrics"][m].get(k) for k in ("estimate", "low", "high"))) for m in metrics
    )


def _fold_cell(entry: dict[str, Any]) -> str:
    if entry.get("mean") is None:
        return "undefined"
    return f"{entry['mean']:.4f} ({_range_cell(entry)})"


def _run_label(run: dict[str, Any]) -> str:
    return f"seed {run['seed']}" if run.get("fold") is None else f"fold {run['fold']} seed {run['seed']}"


def _scored_line(results: dict[str, Any]) -> str:
    """How many times the held-out cases were scored, and for which recipes."""
    evaluated = results["evaluated"]
    seeds = len(results["seeds"])
    cv = results.get("cross_validation")
    if cv:
        return (
            "**Scored: the validation cases of each fold, once per fold and seed "
            f"({_count(len(cv['folds']), 'fold')} × {_count(seeds, 'seed')}), "
            f"checkpoint {evaluated['checkpoint']}.** "
            "The study has no test split."
        )
    if evaluated["split"] != "test" or evaluated["cases"]:
        return (
            f"**Scored: the {evaluated['cases'] or SPLIT_NAMES.get(evaluated['split'], evaluated['split'])} "
            f"cases, once per seed ({_count(seeds, 'seed')}), checkpoint {evaluated['checkpoint']}.** "
            "The study has no test split."
        )
    record = results.get("test_evaluations") or {"count": 0, "by_recipe": []}
    recipes = "; ".join(
        f"recipe `{group['recipe']}` ({group['fingerprint']}), seeds {', '.join(map(str, group['seeds']))}"
        for group in record["by_recipe"]
    )
    return (
        f"**Test split scored {_times(record['count'])} from this output folder** "
        f"(`{record.get('record', TEST_LEDGER)}`): {recipes}. Checkpoint {evaluated['checkpoint']}, "
        "chosen on validation data only."
    )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _mean_cell(entry: dict[str, Any]) -> str:
    cell = format_interval(entry.get("mean"), entry.get("low"), entry.get("high"))
    return f"**{cell}**†" if entry.get("clipped") else f"**{cell}**"


def _range_cell(entry: dict[str, Any]) -> str:
    if entry.get("min") is None or entry.get("max") is None:
        return "undefined"
    return f"{entry['min']:.4f} – {entry['max']:.4f}"


def _plain(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def _row_source(row: dict[str, Any], published: dict[str, Any]) -> str:
    return str(row.get("source") or published.get("source"))


def _source_keys(published: dict[str, Any]) -> list[str]:
    """The sources the rows cite, in order of first use."""
    return list(dict.fromkeys(_row_source(row, published) for row in published.get("rows", [])))
