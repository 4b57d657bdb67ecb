"""The model card: intended use, model, data, preprocessing, training, metrics and limitations.

Every statement is derived from the run's own files (:class:`RunFiles`); what a
run does not record is written as unknown, never guessed.
"""

from __future__ import annotations

from typing import Any

from medvol.metrics.intervals import MIN_CASES_FOR_CI
from medvol.report.read import RunFiles, parameter_count
from medvol.report.render import (
    Block,
    Bullets,
    Heading,
    Paragraph,
    Table,
    finite,
    fmt,
    interval,
    kv,
    mean_interval,
)

CLASSIFICATION_ROWS = (
    ("auc", "AUC"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity", "Sensitivity (recall)"),
    ("specificity", "Specificity"),
    ("ppv", "PPV (precision)"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("brier", "Brier score (lower is better)"),
    ("ece", "ECE (lower is better)"),
)
SEGMENTATION_ROWS = (
    ("dice", "Dice"),
    ("hd95_mm", "HD95 (mm)"),
    ("assd_mm", "ASSD (mm)"),
    ("volume_difference_ml", "Volume difference (mL)"),
    ("relative_volume_difference", "Relative volume difference"),
)
INTENDED_USE = (
    "Research use only: method development, benchmarking and teaching.",
    "Not a medical device. It has not been clinically validated and must not be used for "
    "diagnosis, treatment or any decision about a patient.",
    "Results hold for data like the evaluation data described here; any other use needs its own evaluation.",
)


def model_card(run: RunFiles) -> list[Block]:
    """The model-card section: intended use, model, data, preprocessing, training, metrics, limits."""
    return [
        Heading("Model card"),
        Heading("Intended use", 3),
        Bullets(INTENDED_USE),
        Heading("Model", 3),
        _model_table(run),
        Heading("Data and split", 3),
        _data_table(run),
        Heading("Preprocessing and normalisation", 3),
        _preprocessing_bullets(run),
        Heading("Training", 3),
        _training_table(run),
        Heading("Metrics", 3),
        *_metrics_blocks(run),
        Heading("Limitations", 3),
        Bullets(tuple(limitations(run))),
    ]


def _model_table(run: RunFiles) -> Table:
    model, loss, train = run.config.model, run.config.loss, run.config.train
    rows = (
        ("Task", run.task.kind),
        ("Architecture", f"`{model.name}`"),
        ("Options", kv(model.options)),
        ("Parameters", parameter_count(run.folder)),
        ("Loss", " ".join(filter(None, (f"`{loss.name}`", kv(loss.options))))),
        ("Checkpoint selection", f"best validation `{train.metric}` ({train.metric_mode})"),
    )
    return Table(("Item", "Value"), rows)


def _data_table(run: RunFiles) -> Table:
    rows = [
        ("Data", f"`{run.config.data.root}`"),
        *run.task.card_data(run.split or {}, run.fingerprint or {}),
    ]
    return Table(("Item", "Value"), tuple(rows))


def _preprocessing_bullets(run: RunFiles) -> Bullets:
    items = run.task.card_inputs(run.normalizer)
    written = run.config.model_dump(mode="json")
    augment = written["augment"]
    items.append(f"Augmentation: {kv(augment) if augment else 'defaults' if augment == {} else 'none'}.")
    return Bullets(tuple(items))


def _training_table(run: RunFiles) -> Table:
    train, optimizer, schedule = run.config.train, run.config.optimizer, run.config.schedule
    environment = run.environment or {}
    packages = environment.get("packages") or {}
    history = run.history
    seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    best = best_epoch(run)
    rows = (
        ("Epochs", f"{len(history)} done of {train.epochs} configured"),
        (
            "Best epoch",
            "none validated" if best is None else f"{best[0] + 1} (validation {train.metric} {fmt(best[1])})",
        ),
        ("Optimiser", f"{optimizer.name}, lr {optimizer.lr}, weight decay {optimizer.weight_decay}"),
        ("Schedule", f"{schedule.name}, warm-up {schedule.warmup_epochs} epoch(s)"),
        ("Batch size", str(train.batch_size)),
        ("Precision", str((environment.get("precision") or {}).get("amp", train.amp))),
        ("Seed", str(train.seed)),
        ("Device", f"{environment.get('device', '?')}, {environment.get('world_size', '?')} process(es)"),
        ("Training time", f"{seconds / 60:.1f} min" if history else "unknown"),
        (
            "Software",
            f"medvol {packages.get('medvol', '?')}, torch {packages.get('torch', '?')}, "
            f"commit {environment.get('git_commit') or 'unknown'}",
        ),
    )
    return Table(("Item", "Value"), rows)


def best_epoch(run: RunFiles) -> tuple[int, float] | None:
    """The 0-based epoch with the best validation metric (``train.metric``), and its value."""
    train = run.config.train
    key = f"val_{train.metric}"
    scored = [(int(r["epoch"]), float(r[key])) for r in run.history if finite(r.get(key))]
    if not scored:
        return None
    return (max if train.metric_mode == "max" else min)(scored, key=lambda pair: pair[1])


def _metrics_blocks(run: RunFiles) -> list[Block]:
    if not run.evaluations:
        return [
            Paragraph(
                f"Not evaluated yet — run `medvol evaluate {run.run_dir}` (and `--split test` once, "
                "for the final configuration). The validation values in the training curves below "
                "selected the checkpoint and are not an unbiased estimate."
            )
        ]
    blocks: list[Block] = [
        Paragraph(
            "Point estimates with case-level percentile-bootstrap confidence intervals, from the "
            "evaluation folders of this run."
        )
    ]
    for evaluation, summary in run.evaluations:
        blocks.append(Paragraph(f"`{evaluation.path.name}`: {evaluation_line(summary)}"))
        blocks.append(headline_table(summary))
    return blocks


def confidence(summary: dict[str, Any]) -> int:
    """The bootstrap confidence level of an evaluation, in percent."""
    return round(100 * float((summary.get("bootstrap") or {}).get("confidence", 0.95)))


def evaluation_line(summary: dict[str, Any]) -> str:
    """One sentence on what an evaluation scored and how."""
    bootstrap = summary.get("bootstrap") or {}
    errors = len(summary.get("errors") or [])
    text = (
        f"{summary.get('n_cases')} case(s) of {summary.get('cases_source')}, checkpoint "
        f"{summary.get('checkpoint')} (epoch {summary.get('epoch')}), {confidence(summary)}% CIs from "
        f"{bootstrap.get('n_resamples')} resamples (seed {bootstrap.get('seed')})"
    )
    if summary.get("threshold") is not None:
        text += f", threshold {summary['threshold']}"
    if summary.get("tta"):
        text += ", flip TTA"
    if errors:
        text += f"; {errors} case(s) could not be scored"
    return text + "."


def headline_table(summary: dict[str, Any]) -> Table:
    """The main metrics of an evaluation with their confidence intervals."""
    metrics = summary.get("metrics") or {}
    if summary.get("task") == "classification":
        rows = tuple(
            (
                label,
                interval(metrics[name].get("estimate"), metrics[name].get("low"), metrics[name].get("high")),
            )
            for name, label in CLASSIFICATION_ROWS
            if name in metrics
        )
        return Table(("Metric", f"Estimate [{confidence(summary)}% CI]"), rows)
    names = summary.get("class_names") or {}
    header = ("Metric", *(names.get(value, f"class {value}") for value in metrics))
    body = []
    for name, label in SEGMENTATION_ROWS[:3]:
        cells = [mean_interval(entry.get(name) or {}) for entry in metrics.values()]
        body.append((f"{label}, mean [{confidence(summary)}% CI]", *cells))
    return Table(header, tuple(body))


def limitations(run: RunFiles) -> list[str]:
    """Sentences on what the evidence does not cover, derived from the run's own files."""
    config = run.config
    split = run.split or {}
    notes: list[str] = []
    notes += run.task.card_provenance(split, run.fingerprint or {})
    notes.append(
        f"The validation cases selected the checkpoint (best `{config.train.metric}`), so validation "
        "numbers are optimistic; held-out test cases or external cases give the unbiased estimate."
    )
    notes.append(
        f"One training run (seed {config.train.seed}): the variation between seeds or "
        "folds is not measured here (see `medvol.evaluation.aggregate`)."
    )
    tested = [s for _, s in run.evaluations if s.get("split") in ("test", "cases")]
    if not run.evaluations:
        notes.append("No evaluation has been run: there are no metrics with confidence intervals yet.")
    elif not tested:
        notes.append("Only validation cases were evaluated; no held-out test result exists yet.")
    for evaluation, summary in run.evaluations:
        notes += _evaluation_limitations(evaluation.path.name, summary)
    epochs = config.train.epochs
    if len(run.history) < epochs:
        notes.append(
            f"Training stopped after {len(run.history)} of {epochs} epochs (early stopping or interrupted)."
        )
    return notes


def _evaluation_limitations(name: str, summary: dict[str, Any]) -> list[str]:
    """What one evaluation (folder ``name``) leaves uncertain."""
    notes = []
    number = summary.get("test_evaluation_number")
    if isinstance(number, int) and number > 1:
        notes.append(
            f"The test split was evaluated {number} times (`{name}`); only a configuration "
            "fixed before the first test evaluation gives an unbiased test estimate."
        )
    cases = summary.get("n_cases")
    if isinstance(cases, int) and cases < MIN_CASES_FOR_CI:
        notes.append(
            f"`{name}` has {cases} case(s): too few for a confidence interval, so none is given "
            f"(medvol gives intervals from {MIN_CASES_FOR_CI} cases up); its numbers describe these "
            "cases only."
        )
    elif isinstance(cases, int) and cases < 100:
        notes.append(
            f"`{name}` has {cases} case(s): its confidence intervals are wide and small "
            "differences between models are not meaningful."
        )
    errors = summary.get("errors") or []
    if errors:
        notes.append(f"`{name}`: {len(errors)} case(s) could not be scored and are not in its numbers.")
    if summary.get("checkpoint_requested") == "best" and summary.get("checkpoint") == "last":
        notes.append(f"`{name}` used the last checkpoint: the run never validated.")
    overlap = summary.get("overlap_with_training") or []
    if overlap:
        notes.append(f"`{name}` includes {len(overlap)} training case(s); those are not held out.")
    return notes
