"""The report's sections after the model card: training curves, and one per evaluation folder.

Each section writes its figures into the report folder and returns the blocks that
show them. Segmentation overlays are drawn from the slices ``medvol evaluate`` saved
(``overlays.npz``); the data the run was trained on is never read.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medvol.engine.run_folder import EvaluationFolder
from medvol.errors import MedvolError
from medvol.report.card import SEGMENTATION_ROWS, best_epoch, confidence, evaluation_line, headline_table
from medvol.report.figures import (
    calibration_figure,
    confusion_figure,
    dice_distribution_figure,
    learning_curves_figure,
    overlay_figure,
    roc_figure,
    save_figure,
)
from medvol.report.read import CaseRows, RunFiles, read_segmentation_cases
from medvol.report.render import Block, Heading, Image, Paragraph, Table, fmt, mean_interval


def training_section(run: RunFiles, out_dir: Path) -> list[Block]:
    """Training curves from ``metrics.jsonl``, or a note that none were recorded."""
    blocks: list[Block] = [Heading("Training curves")]
    if not run.history:
        missing = f"`{run.folder.metrics.name}` is missing, empty, or holds no readable epoch line"
        return [*blocks, Paragraph(f"No epochs recorded: {missing}.")]
    name = "learning_curves.png"
    save_figure(learning_curves_figure(run.history, best_epoch(run)), out_dir / name)
    blocks.append(
        Image(name, "Training loss and validation metrics per epoch; the dashed line marks the best epoch.")
    )
    return blocks


def evaluation_section(evaluation: EvaluationFolder, summary: dict[str, Any], out_dir: Path) -> list[Block]:
    """One evaluation folder: its metrics, figures and the cases it could not score."""
    blocks: list[Block] = [
        Heading(f"Evaluation: {evaluation.path.name}"),
        Paragraph(evaluation_line(summary)),
        Paragraph(
            f"Evaluated {summary.get('created', '?')} with medvol {summary.get('medvol_version', '?')}."
        ),
    ]
    if summary.get("task") == "classification":
        blocks += _classification_blocks(evaluation, summary, out_dir)
    else:
        blocks += _segmentation_blocks(evaluation, summary, out_dir)
    errors = summary.get("errors") or []
    if errors:
        blocks.append(Paragraph("Cases that could not be scored (not in any number above):"))
        blocks.append(
            Table(
                ("Case", "File", "Problem"),
                tuple((e.get("case_id", ""), e.get("path") or "", e.get("problem", "")) for e in errors),
            )
        )
    return blocks


def _tag(evaluation: EvaluationFolder) -> str:
    """The evaluation's name made safe for figure file names."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", evaluation.name) or "evaluation"


def _classification_blocks(
    evaluation: EvaluationFolder, summary: dict[str, Any], out_dir: Path
) -> list[Block]:
    tag = _tag(evaluation)
    counts = summary.get("class_counts") or {}
    blocks: list[Block] = [
        headline_table(summary),
        Paragraph(
            "Cases per class: "
            + ", ".join(f"class {k}: {v}" for k, v in counts.items())
            + f". Averaging: {summary.get('averaging')}."
        ),
    ]
    roc = [c for c in summary.get("roc") or [] if c.get("fpr")]
    if roc:
        name = f"roc-{tag}.png"
        save_figure(roc_figure(roc, summary), out_dir / name)
        caption = (
            f"ROC curve; shaded: pointwise {confidence(summary)}% bootstrap band of the true-positive "
            "rate at fixed false-positive rates."
        )
        blocks.append(Image(name, caption))
    calibration = summary.get("calibration")
    if calibration:
        name = f"calibration-{tag}.png"
        save_figure(calibration_figure(calibration, summary), out_dir / name)
        caption = f"Calibration: {calibration.get('quantity')} against the {calibration.get('observed_as')}."
        blocks.append(Image(name, caption))
    matrix = summary.get("confusion_matrix")
    if matrix:
        name = f"confusion-{tag}.png"
        save_figure(confusion_figure(matrix, summary.get("threshold")), out_dir / name)
        blocks.append(Image(name, "Confusion matrix: rows true class, columns predicted class."))
    return blocks


def _segmentation_blocks(evaluation: EvaluationFolder, summary: dict[str, Any], out_dir: Path) -> list[Block]:
    tag = _tag(evaluation)
    names = summary.get("class_names") or {}
    blocks = _segmentation_metrics_blocks(summary)
    rows_by_case = read_segmentation_cases(evaluation)
    if not rows_by_case:
        blocks.append(Paragraph(f"No case was scored (`{evaluation.cases.name}` is empty or missing)."))
        return blocks
    classes = sorted({c for case in rows_by_case.values() for c in case}, key=int)
    name = f"dice-{tag}.png"
    save_figure(dice_distribution_figure(rows_by_case, classes, names), out_dir / name)
    blocks.append(Image(name, "Dice per case and class: box plot with every case as a point."))
    ranking = _rank_cases(rows_by_case, classes)
    table_rows = [
        (case_id, *(fmt(rows_by_case[case_id][c]["dice"]) for c in classes), fmt(mean))
        for case_id, mean in sorted(ranking.items())
    ]
    blocks.append(Heading("Dice per case", 3))
    blocks.append(Table(("Case", *(names.get(c, f"class {c}") for c in classes), "Mean"), tuple(table_rows)))
    defined = {case: mean for case, mean in ranking.items() if math.isfinite(mean)}
    if defined:
        best = max(defined, key=lambda case: defined[case])
        worst = min(defined, key=lambda case: defined[case])
        blocks.append(Heading("Best and worst case", 3))
        shown = {"best": best} if best == worst else {"best": best, "worst": worst}
        blocks += _overlay_blocks(evaluation, names, shown, defined, out_dir, tag)
    return blocks


def _segmentation_metrics_blocks(summary: dict[str, Any]) -> list[Block]:
    """Per-class metrics with CIs and the mean Dice over classes; nothing when none were computed."""
    metrics = summary.get("metrics") or {}
    if not metrics:
        return []
    names = summary.get("class_names") or {}
    header = ("Metric", *(names.get(value, f"class {value}") for value in metrics))
    rows = []
    for name, label in SEGMENTATION_ROWS:
        cells = [mean_interval(entry.get(name) or {}, with_counts=True) for entry in metrics.values()]
        rows.append((f"{label}, mean [{confidence(summary)}% CI]", *cells))
    rows.append(
        (
            "Empty prediction / empty ground truth",
            *(
                f"{entry.get('n_prediction_empty', 0)} / {entry.get('n_target_empty', 0)}"
                for entry in metrics.values()
            ),
        )
    )
    mean_dice = summary.get("dice_mean_over_classes") or {}
    return [
        Table(header, tuple(rows)),
        Paragraph(
            "Mean Dice over the foreground classes (per case, then over cases): "
            f"{mean_interval(mean_dice)}. n: cases in the mean; u: cases where the value is "
            f"undefined, left out. Empty masks: {_policy_text(summary.get('empty_policy') or {})}."
        ),
    ]


def _overlay_blocks(
    evaluation: EvaluationFolder,
    names: dict[str, str],
    shown: dict[str, str],
    means: dict[str, float],
    out_dir: Path,
    tag: str,
) -> list[Block]:
    """The overlay of each ``{label: case_id}`` in ``shown``, or a note why it is not drawn."""
    from medvol.evaluation.overlays import read_overlays

    problem = ""
    try:
        slices = read_overlays(evaluation, shown.values())
    except MedvolError as error:
        slices, problem = {}, str(error)
    blocks: list[Block] = []
    for label, case_id in shown.items():
        about = f"{label.capitalize()} case `{case_id}` (mean Dice {means[case_id]:.3f})"
        if case_id not in slices:
            blocks.append(Paragraph(f"{about}: overlay not drawn ({problem})."))
            continue
        name = f"overlay-{tag}-{label}.png"
        save_figure(overlay_figure(slices[case_id], case_id, names), out_dir / name)
        caption = (
            f"{about}: middle slice through the ground truth; filled: prediction, contours: ground truth."
        )
        blocks.append(Image(name, caption))
    return blocks


def _rank_cases(rows_by_case: CaseRows, classes: list[str]) -> dict[str, float]:
    """Per-case mean Dice over the classes where it is defined (NaN if none)."""
    ranking = {}
    for case_id, row in rows_by_case.items():
        values = [row[c]["dice"] for c in classes if c in row and math.isfinite(row[c]["dice"])]
        ranking[case_id] = float(np.mean(values)) if values else math.nan
    return ranking


def _policy_text(policy: dict[str, Any]) -> str:
    """The empty-mask policy of ``summary.json`` in words."""

    def value(v: Any, unit: str = "") -> str:
        if v is None:
            return "undefined"
        return f"{v}{unit}" if isinstance(v, int | float) else str(v)

    return (
        f"Dice is 0 when exactly one mask is empty and {value(policy.get('both_empty_dice'))} when both "
        f"are; HD95 and ASSD are {value(policy.get('one_empty_distance_mm'), ' mm')} when one is empty "
        f"and {value(policy.get('both_empty_distance_mm'), ' mm')} when both are"
    )
