"""Train and evaluate each seed (and fold) of a study's budget; write ``results.json`` and ``results.md``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medvol.engine.run_folder import EvaluationFolder, RunFolder
from medvol.errors import MedvolError
from medvol.fetch import Fetched, data_folder, fetch
from medvol.io.atomic import atomic_path, json_safe, write_json
from medvol.logs import get_logger, track
from medvol.reproduce.folds import CROSS_VALIDATION_INTERVALS, check_folds, cross_validation
from medvol.reproduce.ledger import (
    TEST_LEDGER,
    copy_with_machine_paths,
    publish_results,
    record_test_evaluations,
    restore_run,
)
from medvol.reproduce.scores import SEED_INTERVALS, majority_baseline, over_seeds, seed_entry
from medvol.reproduce.study import STUDIES_DIR, Study
from medvol.reproduce.tables import format_results

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig


logger = get_logger(__name__)


def reproduce(
    study: Study,
    budget: str,
    seeds: int,
    out: Path,
    overrides: list[str] | None = None,
    data_dir: Path | None = None,
    publish: Path | None = None,
    folds: list[int] | None = None,
    reuse: Path | None = None,
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
        reuse: a folder written by ``publish`` (e.g. ``docs/results/NAME-BUDGET``): each run
            it holds that ``out`` does not is copied from it (:func:`restore_run`) and counted
            as evaluated, not trained again, when it was trained with the same recipe.

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
    places = {"OUT": out, "DATA": data_folder(data_dir), "MEDVOL": STUDIES_DIR.parent}
    if reuse is not None:
        _reuse_test_record(reuse, out, places)
    runs: list[dict[str, Any]] = []
    folders: list[tuple[int, RunFolder]] = []
    each_fold: list[int | None] = [None] if folds is None else list(folds)
    plan = [(fold, seed) for fold in each_fold for seed in range(seeds)]
    unit = "seed" if folds is None else "run"
    for fold, seed in track(plan, f"reproduce {study.name}", unit, logger):
        config = _run_config(study, budget, fold, seed, out, overrides, data_root)
        entry, run = _reproduce_run(study, config, fold, out, reuse, places)
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
            "flip_tta": study.flip_tta,
            "largest_component": study.largest_component,
        },
        "data": [_data_entry(item) for item in fetched],
        "seeds": list(range(seeds)),
        "runs": runs,
        "over_seeds": over_seeds(runs) if cv is None else cv.pop("over_seeds"),
        "intervals": SEED_INTERVALS if cv is None else CROSS_VALIDATION_INTERVALS,
        "baseline": majority_baseline(folders[0][1], runs[0]),
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
        publish_results(out, results, publish, places)
    return results


def _reproduce_run(
    study: Study,
    config: ExperimentConfig,
    fold: int | None,
    out: Path,
    reuse: Path | None,
    places: dict[str, Path],
) -> tuple[dict[str, Any], RunFolder]:
    """Train (unless finished) and evaluate (unless evaluated) one run (:func:`_run_config`);
    its ``results.json`` entry. A run that ``out`` lacks and ``reuse`` holds is copied from
    there (:func:`_reuse_run`).
    """
    from medvol.config import dump_config

    seed, config_text = config.train.seed, dump_config(config)
    run = RunFolder(out / "runs" / config.tracking.name)
    published = None
    if reuse is not None and not run.path.exists():
        published = _reuse_run(reuse, run, config_text, places)
    _check_same_recipe(run, config_text)
    evaluation = run.reproduction(study.split if study.cases is None else "cases")
    label = f"[{study.name} seed {seed}]" if fold is None else f"[{study.name} fold {fold} seed {seed}]"
    started = time.perf_counter()
    if evaluation.summary.is_file():
        print(f"{label} already evaluated: {evaluation.path}", flush=True)
        _check_same_evaluation(study, evaluation)
    else:
        _train_and_evaluate(study, config, run, evaluation, label)
    entry = seed_entry(study, seed, run, evaluation)
    if published is not None:
        entry["reused_from"] = str(reuse)
        if not run.metrics.is_file():  # published before its per-epoch record was
            entry["train_seconds"] = published.get("train_seconds")
    if fold is not None:
        entry = {"fold": fold, **entry}
    entry["session_seconds"] = round(time.perf_counter() - started, 1)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    # The config the run was trained with: the same recipe, and the data.prefetch it used.
    trained = run.config.read_text() if run.config.is_file() else config_text
    (out / "configs" / f"{run.name}.yaml").write_text(trained)
    return entry, run


def _run_config(
    study: Study,
    budget: str,
    fold: int | None,
    seed: int,
    out: Path,
    overrides: list[str],
    data_root: Path | None,
) -> ExperimentConfig:
    """The budget's recipe for one run, written to ``OUT/runs/STUDY-BUDGET-seedS``, or
    ``STUDY-BUDGET-foldF-seedS`` for a fold named by ``--folds`` (``data.split.fold`` set to it)."""
    from medvol.config import load_config

    name = (
        f"{study.name}-{budget}-seed{seed}"
        if fold is None
        else f"{study.name}-{budget}-fold{fold}-seed{seed}"
    )
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
    return config if data_root is None else _with_data_root(config, data_root)


def _train_and_evaluate(
    study: Study, config: ExperimentConfig, run: RunFolder, evaluation: EvaluationFolder, label: str
) -> None:
    """Train the run unless it is finished (resuming an interrupted one), then score it once."""
    from medvol.engine.train import train
    from medvol.evaluation import evaluate_run

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
        flip_tta=study.flip_tta,
        largest_component=study.largest_component,
    )


def _check_same_evaluation(study: Study, evaluation: EvaluationFolder) -> None:
    """An evaluation found in the output folder was made as the study's ``evaluate`` asks.

    Raises:
        MedvolError: it was made with another flip TTA or largest-component setting
            (summaries written before ``largest_component`` was recorded count as without).
    """
    summary = evaluation.read_summary()
    settings = (
        ("flip_tta", "flip TTA", study.flip_tta, summary.get("tta", False)),
        (
            "largest_component",
            "the largest component kept",
            study.largest_component,
            summary.get("largest_component", False),
        ),
    )
    for key, words, asked, found in settings:
        if bool(found) != asked:
            raise MedvolError(
                evaluation.summary,
                f"evaluated {'with' if found else 'without'} {words}, and the study's "
                f"evaluate.{key} is {asked}; remove {evaluation.path} to evaluate it again",
            )


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


def _reuse_run(
    reuse: Path, run: RunFolder, config_text: str, places: dict[str, Path]
) -> dict[str, Any] | None:
    """Copy the run from the published folder ``reuse`` when it holds it and trained the same recipe.

    Returns:
        The run's published entry; ``None`` when ``reuse`` does not hold it (it is trained).

    Raises:
        MedvolError: the published run was trained with another recipe (nothing copied is left).
    """
    published = restore_run(reuse, run, places)
    if published is None:
        return None
    changed = _recipe_changes(run, config_text)
    if changed:
        shutil.rmtree(run.path)
        raise MedvolError(
            reuse / "configs" / f"{run.name}.yaml",
            f"the published run was trained with another recipe (changed since: {', '.join(changed)}); "
            "reproduce without --reuse, or with the recipe it was published with",
        )
    print(f"[{run.name}] taken from {reuse} (not trained again)", flush=True)
    return published


def _reuse_test_record(reuse: Path, out: Path, places: dict[str, Path]) -> None:
    """Start ``out``'s record of test evaluations from the published one: the count goes on."""
    published, record = reuse / TEST_LEDGER, out / TEST_LEDGER
    if published.is_file() and not record.exists():
        copy_with_machine_paths(published, record, places)


def _check_same_recipe(run: RunFolder, config_text: str) -> None:
    """Refuse to continue or reuse a run trained with another recipe (study config or ``--set`` changed)."""
    changed = _recipe_changes(run, config_text)
    if changed:
        raise MedvolError(
            run.path,
            f"was trained with another recipe (changed since: {', '.join(changed)}); reproduce into "
            "another --out folder, or remove this run",
        )


def _recipe_changes(run: RunFolder, config_text: str) -> list[str]:
    """The top-level config sections in which ``run``'s config differs from ``config_text``.

    ``tracking`` (where the run is written) and ``data.prefetch`` (the same batches and
    weights with and without it, ``tests/test_prefetch.py``) are not part of the recipe.
    The run's config is read with the typed loader, so a run folder of an earlier medvol
    compares by what it means, not by how it was spelt. None when the run has no config yet.
    """
    from medvol.config import dump_config

    if not run.config.is_file():
        return []
    before = yaml.safe_load(dump_config(run.read_config()))
    now = yaml.safe_load(config_text)
    for config in (before, now):
        config.get("data", {}).pop("prefetch", None)
    return sorted(k for k in (before.keys() | now.keys()) - {"tracking"} if before.get(k) != now.get(k))


def _finished(run: RunFolder, epochs: int, patience: int | None) -> bool:
    """Whether the run's last checkpoint holds its final epoch or its early stop."""
    last = run.checkpoint("last")
    if not last.is_file():
        return False
    from medvol.engine.checkpoint import load_checkpoint

    progress = load_checkpoint(last)["progress"]
    stopped_early = patience is not None and int(progress["stale_validations"]) >= patience
    return int(progress["epoch"]) >= epochs or stopped_early


def _environment(run_dir: Path) -> dict[str, Any]:
    from medvol.engine.run_folder import RunFolder

    run = RunFolder(run_dir)
    return run.read_json(run.environment) if run.environment.is_file() else {}
