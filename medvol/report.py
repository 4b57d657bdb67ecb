"""``medvol report``: an HTML or Markdown report and model card for a run, with PNG figures.

``write_report(run_dir, out, fmt)`` reads only the run folder's own files and writes
``report.html`` (or ``report.md``) beside its PNG figures, linked by relative paths, so the
folder can be copied or zipped as it is:

- the model card: intended use, model, data and split, preprocessing, training settings,
  the metrics with their confidence intervals, and limitations derived from what is known;
- training curves from ``metrics.jsonl``;
- for each ``evaluation-*/`` folder written by ``medvol evaluate``: classification metrics,
  the ROC curve with its bootstrap band, the calibration diagram and the confusion matrix;
  or segmentation metrics per class, the per-case Dice table and distribution, and slice
  overlays of the best and the worst case.

Every number comes from a file of the run (``metrics.jsonl``, ``summary.json``,
``cases.csv``); when there is no evaluation the report says so instead of showing any.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Format = Literal["html", "md"]

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
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
INTENDED_USE = (
    "Research use only: method development, benchmarking and teaching.",
    "Not a medical device. It has not been clinically validated and must not be used for "
    "diagnosis, treatment or any decision about a patient.",
    "Results hold for data like the evaluation data described here; any other use needs its own evaluation.",
)


# ----------------------------------------------------------------------------------------------
# Document blocks, rendered to HTML or Markdown
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Plain text; ```code``` spans are kept in both formats."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A PNG in the report folder, by file name."""

    name: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image

CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #555; }
code { background: #f4f4f4; padding: 0 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML page (inline CSS; images by relative path)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head>",
        "<body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{_inline_html(item)}</li>" for item in block.items)
            parts.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(cell)}</th>" for cell in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>"
                for row in block.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            name = html.escape(block.name, quote=True)
            caption = _inline_html(block.caption)
            parts.append(
                f'<figure><img src="{name}" alt="{html.escape(block.caption, quote=True)}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The same document as GitHub-flavoured Markdown (images by relative path)."""
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(_cell_md(c) for c in block.header) + " |",
                "|" + "|".join("---" for _ in block.header) + "|",
            ]
            lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        else:
            parts.append(f"![{block.caption}]({block.name})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _cell_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


@dataclass
class RunFiles:
    """What a run folder holds, read leniently (a missing file is None / empty)."""

    run_dir: Path
    config: dict[str, Any]
    split: dict[str, Any] | None
    fingerprint: dict[str, Any] | None
    normalizer: dict[str, Any] | None
    environment: dict[str, Any] | None
    history: list[dict[str, Any]]
    evaluations: list[tuple[Path, dict[str, Any]]]
    unreadable: list[str]

    @property
    def task(self) -> str:
        return str(self.config.get("data", {}).get("task", "unknown"))

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run folder's files for the report.

    Raises:
        MedvolError: the folder or its ``config.yaml`` is missing.
    """
    import yaml

    from medvol.engine.run_folder import EVALUATION_PREFIX, read_summary
    from medvol.engine.tracking import read_metrics

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedvolError(run_dir, "run folder not found")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise MedvolError(run_dir, "not a medvol run folder: config.yaml is missing")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise MedvolError(config_path, f"cannot read the config ({error})") from error
    unreadable: list[str] = []
    try:
        history = read_metrics(run_dir)
    except ValueError as error:
        history = []
        unreadable.append(f"{run_dir / 'metrics.jsonl'}: {error}")
    evaluations = []
    for folder in sorted(run_dir.glob(f"{EVALUATION_PREFIX}*")):
        if not folder.is_dir():
            continue
        try:
            evaluations.append((folder, read_summary(folder)))
        except MedvolError as error:
            unreadable.append(str(error))
    return RunFiles(
        run_dir=run_dir,
        config=config,
        split=_read_json(run_dir / "split.json", unreadable),
        fingerprint=_read_json(run_dir / "fingerprint.json", unreadable),
        normalizer=_read_json(run_dir / "normalizer.json", unreadable),
        environment=_read_json(run_dir / "environment.json", unreadable),
        history=history,
        evaluations=evaluations,
        unreadable=unreadable,
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, fmt: Format = "html") -> Path:
    """Write the report of a run and its figures into ``out`` (default ``RUN_DIR/report``).

    Returns:
        The path of ``report.html`` or ``report.md``.

    Raises:
        MedvolError: no run folder or config; an unknown format.
    """
    from medvol.version import __version__

    if fmt not in ("html", "md"):
        raise MedvolError(None, f"report format must be html or md, got {fmt!r}")
    run = read_run(run_dir)
    out_dir = Path(out) if out is not None else run.run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"medvol report: {run.name}"
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(
            f"Generated {created} by medvol {__version__} from the run folder `{run.run_dir}`. "
            "Every number below is read from that folder: training curves from `metrics.jsonl`, "
            "evaluation results from `evaluation-*/summary.json` and `cases.csv` "
            "(written by `medvol evaluate`)."
        ),
    ]
    if run.unreadable:
        blocks += [Paragraph("Files that could not be read:"), Bullets(tuple(run.unreadable))]
    blocks += model_card(run)
    blocks += _training_section(run, out_dir)
    for folder, summary in run.evaluations:
        blocks += _evaluation_section(folder, summary, out_dir)
    if fmt == "html":
        text, path = render_html(blocks, title), out_dir / "report.html"
    else:
        text, path = render_markdown(blocks), out_dir / "report.md"
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def run_cli(args: argparse.Namespace) -> int:
    """``medvol report``."""
    path = write_report(args.run_dir, args.out, args.format)
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------


def model_card(run: RunFiles) -> list[Block]:
    """The model-card section: intended use, model, data, preprocessing, training, metrics, limits."""
    config = run.config
    model = config.get("model", {})
    train = config.get("train", {})
    loss = config.get("loss", {})
    blocks: list[Block] = [
        Heading("Model card"),
        Heading("Intended use", 3),
        Bullets(INTENDED_USE),
        Heading("Model", 3),
        Table(
            ("Item", "Value"),
            (
                ("Task", run.task),
                ("Architecture", f"`{model.get('name')}`"),
                ("Options", _kv(model.get("options") or {})),
                ("Parameters", _parameter_count(run.run_dir)),
                ("Loss", " ".join(filter(None, (f"`{loss.get('name')}`", _kv(loss.get("options")))))),
                (
                    "Checkpoint selection",
                    f"best validation `{train.get('metric')}` ({train.get('metric_mode')})",
                ),
            ),
        ),
        Heading("Data and split", 3),
        *_data_blocks(run),
        Heading("Preprocessing and normalisation", 3),
        *_preprocessing_blocks(run),
        Heading("Training", 3),
        _training_table(run),
        Heading("Metrics", 3),
        *_metrics_blocks(run),
        Heading("Limitations", 3),
        Bullets(tuple(limitations(run))),
    ]
    return blocks


def _data_blocks(run: RunFiles) -> list[Block]:
    data = run.config.get("data", {})
    split = run.split or {}
    rows: list[tuple[str, str]] = [("Data", f"`{data.get('root')}`")]
    if run.task == "classification":
        fingerprint = run.fingerprint or {}
        rows.append(("Volumes", f"{_shape(fingerprint.get('shape'))} voxels, uint8"))
        rows.append(("Split", f"{split.get('method', 'unknown')} (the file's own train/val/test split)"))
        for name, count in (fingerprint.get("cases") or {}).items():
            balance = (fingerprint.get("class_counts") or {}).get(name, {})
            classes = ", ".join(f"class {k}: {v}" for k, v in balance.items())
            use = {"train": "training", "val": "validation, checkpoint selection", "test": "held out"}
            rows.append((f"{name} cases", f"{count} ({classes}); {use.get(name, '')}"))
    else:
        fingerprint = run.fingerprint or {}
        method = split.get("method", "unknown")
        split_config = data.get("split") or {}
        rows.append(
            (
                "Cases",
                f"{fingerprint.get('cases', '?')} case ids found, {fingerprint.get('usable_pairs', '?')} "
                f"usable ({fingerprint.get('layout', '?')} layout)",
            )
        )
        rows.append(
            (
                "Split",
                f"{method}, fold {split.get('fold')} of {split_config.get('n_splits', '?')} "
                f"(seed {split_config.get('seed', '?')})",
            )
        )
        rows.append(("Training cases", str(len(split.get("train") or []))))
        rows.append(("Validation cases", f"{len(split.get('val') or [])} (also select the checkpoint)"))
        skipped = split.get("skipped") or []
        rows.append(
            ("Unusable cases skipped", f"{len(skipped)}" + (f": {', '.join(skipped)}" if skipped else ""))
        )
        rows.append(("Classes", f"{data.get('num_classes')} including background 0"))
    return [Table(("Item", "Value"), tuple(rows))]


def _preprocessing_blocks(run: RunFiles) -> list[Block]:
    config = run.config
    if run.task == "classification":
        items = [
            "Voxels are divided by 255 (uint8 to [0, 1]); no resampling, no other normalisation.",
            "The volumes carry no physical spacing; medvol treats them as 1 mm isotropic.",
        ]
    else:
        preprocess = config.get("preprocess") or {}
        items = [f"Preprocessing: {_kv(preprocess) if preprocess else 'defaults (no resampling)'}."]
        normalizer = run.normalizer
        if normalizer:
            params = _kv(normalizer.get("params") or {})
            fitted = "fitted on the training cases only" if normalizer.get("learned") else "per scan"
            items.append(f"Intensity normalisation: `{normalizer.get('type')}` {params} ({fitted}).")
        patch = config.get("data", {}).get("patch_size")
        if patch:
            items.append(f"Training patches of {_shape(patch)} voxels; inference by sliding windows.")
    augment = config.get("augment")
    items.append(f"Augmentation: {_kv(augment) if augment else 'defaults' if augment == {} else 'none'}.")
    return [Bullets(tuple(items))]


def _training_table(run: RunFiles) -> Table:
    config = run.config
    train, optimizer, schedule = (
        config.get("train", {}),
        config.get("optimizer", {}),
        config.get("schedule", {}),
    )
    environment = run.environment or {}
    history = run.history
    seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    best = _best_epoch(run)
    rows = [
        ("Epochs", f"{len(history)} done of {train.get('epochs')} configured"),
        (
            "Best epoch",
            "none validated"
            if best is None
            else f"{best[0] + 1} (validation {train.get('metric')} {_fmt(best[1])})",
        ),
        (
            "Optimiser",
            f"{optimizer.get('name')}, lr {optimizer.get('lr')}, "
            f"weight decay {optimizer.get('weight_decay')}",
        ),
        ("Schedule", f"{schedule.get('name')}, warm-up {schedule.get('warmup_epochs', 0)} epoch(s)"),
        ("Batch size", str(train.get("batch_size"))),
        ("Precision", str((environment.get("precision") or {}).get("amp", train.get("amp")))),
        ("Seed", str(train.get("seed"))),
        ("Device", f"{environment.get('device', '?')}, {environment.get('world_size', '?')} process(es)"),
        ("Training time", f"{seconds / 60:.1f} min" if history else "unknown"),
        (
            "Software",
            f"medvol {(environment.get('packages') or {}).get('medvol', '?')}, "
            f"torch {(environment.get('packages') or {}).get('torch', '?')}, "
            f"commit {environment.get('git_commit') or 'unknown'}",
        ),
    ]
    return Table(("Item", "Value"), tuple(rows))


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
    for folder, summary in run.evaluations:
        blocks.append(Paragraph(f"`{folder.name}`: {_evaluation_line(summary)}"))
        blocks.append(_headline_table(summary))
    return blocks


def _evaluation_line(summary: dict[str, Any]) -> str:
    errors = len(summary.get("errors") or [])
    text = (
        f"{summary.get('n_cases')} case(s) of {summary.get('cases_source')}, checkpoint "
        f"{summary.get('checkpoint')} (epoch {summary.get('epoch')}), {_confidence(summary)}% CIs from "
        f"{(summary.get('bootstrap') or {}).get('n_resamples')} resamples (seed "
        f"{(summary.get('bootstrap') or {}).get('seed')})"
    )
    if summary.get("threshold") is not None:
        text += f", threshold {summary['threshold']}"
    if summary.get("tta"):
        text += ", flip TTA"
    if errors:
        text += f"; {errors} case(s) could not be scored"
    return text + "."


def _headline_table(summary: dict[str, Any]) -> Table:
    metrics = summary.get("metrics") or {}
    if summary.get("task") == "classification":
        rows = tuple(
            (
                label,
                _interval(metrics[name].get("estimate"), metrics[name].get("low"), metrics[name].get("high")),
            )
            for name, label in CLASSIFICATION_ROWS
            if name in metrics
        )
        return Table(("Metric", f"Estimate [{_confidence(summary)}% CI]"), rows)
    names = summary.get("class_names") or {}
    header = ("Metric", *(names.get(value, f"class {value}") for value in metrics))
    body = []
    for name, label in SEGMENTATION_ROWS[:3]:
        cells = [_mean_interval(entry.get(name) or {}) for entry in metrics.values()]
        body.append((f"{label}, mean [{_confidence(summary)}% CI]", *cells))
    return Table(header, tuple(body))


def limitations(run: RunFiles) -> list[str]:
    """Sentences on what the evidence does not cover, derived from the run's own files."""
    config = run.config
    data = config.get("data", {})
    split = run.split or {}
    notes: list[str] = []
    if run.task == "classification":
        train_cases = split.get("train")
        notes.append(
            f"Trained on {train_cases} cases of one public dataset (`{Path(str(data.get('root'))).name}`); "
            "behaviour on other scanners, sites, protocols or populations is unknown."
        )
        shape = _shape((run.fingerprint or {}).get("shape"))
        notes.append(
            f"Inputs are small downsampled volumes ({shape} voxels) without physical spacing; results do "
            "not transfer to full-resolution imaging."
        )
    else:
        count = len(split.get("train") or [])
        notes.append(
            f"Trained on {count} cases from one folder (`{data.get('root')}`); whether they come from one "
            "site or several is not recorded. Behaviour on other scanners, sites, protocols or "
            "populations is unknown."
        )
    metric = config.get("train", {}).get("metric")
    notes.append(
        f"The validation cases selected the checkpoint (best `{metric}`), so validation numbers are "
        "optimistic; held-out test cases or external cases give the unbiased estimate."
    )
    notes.append(
        f"One training run (seed {config.get('train', {}).get('seed')}): the variation between seeds or "
        "folds is not measured here (see `medvol.evaluate.aggregate`)."
    )
    tested = [s for _, s in run.evaluations if s.get("split") in ("test", "cases")]
    if not run.evaluations:
        notes.append("No evaluation has been run: there are no metrics with confidence intervals yet.")
    elif not tested:
        notes.append("Only validation cases were evaluated; no held-out test result exists yet.")
    for folder, summary in run.evaluations:
        number = summary.get("test_evaluation_number")
        if isinstance(number, int) and number > 1:
            notes.append(
                f"The test split was evaluated {number} times (`{folder.name}`); only a configuration "
                "fixed before the first test evaluation gives an unbiased test estimate."
            )
        cases = summary.get("n_cases")
        if isinstance(cases, int) and cases < 100:
            notes.append(
                f"`{folder.name}` has {cases} case(s): its confidence intervals are wide and small "
                "differences between models are not meaningful."
            )
        errors = summary.get("errors") or []
        if errors:
            notes.append(
                f"`{folder.name}`: {len(errors)} case(s) could not be scored and are not in its numbers."
            )
        if summary.get("checkpoint_requested") == "best" and summary.get("checkpoint") == "last":
            notes.append(f"`{folder.name}` used the last checkpoint: the run never validated.")
        overlap = summary.get("overlap_with_training") or []
        if overlap:
            notes.append(f"`{folder.name}` includes {len(overlap)} training case(s); those are not held out.")
    history, epochs = run.history, config.get("train", {}).get("epochs")
    if isinstance(epochs, int) and len(history) < epochs:
        notes.append(
            f"Training stopped after {len(history)} of {epochs} epochs (early stopping or interrupted)."
        )
    return notes


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def _training_section(run: RunFiles, out_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Training curves")]
    if not run.history:
        return [*blocks, Paragraph("No epochs recorded: `metrics.jsonl` is missing or empty.")]
    name = "learning_curves.png"
    _save_figure(learning_curves_figure(run.history, _best_epoch(run)), out_dir / name)
    blocks.append(
        Image(name, "Training loss and validation metrics per epoch; the dashed line marks the best epoch.")
    )
    return blocks


def learning_curves_figure(history: list[dict[str, Any]], best: tuple[int, float] | None) -> Figure:
    """Losses (left) and validation metrics (right) against the 1-based epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 3.8), layout="constrained")
    losses, metrics = figure.subplots(1, 2)
    epochs = [int(r["epoch"]) + 1 for r in history]
    for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if _finite(r.get(key))]
        if points:
            losses.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    losses.set(xlabel="epoch", ylabel="loss", title="Loss")
    names = sorted(
        {k for r in history for k in r if k.startswith("val_") and k not in ("val_loss", "val_cases")}
    )
    for key in names:
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if _finite(r.get(key))]
        if points:
            metrics.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key[4:])
    metrics.set(xlabel="epoch", ylabel="value", title="Validation metrics")
    for axis in (losses, metrics):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None:
            axis.axvline(best[0] + 1, color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return figure


def _best_epoch(run: RunFiles) -> tuple[int, float] | None:
    train = run.config.get("train", {})
    key, mode = f"val_{train.get('metric')}", train.get("metric_mode", "min")
    scored = [(int(r["epoch"]), float(r[key])) for r in run.history if _finite(r.get(key))]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda pair: pair[1])


# ----------------------------------------------------------------------------------------------
# Evaluations
# ----------------------------------------------------------------------------------------------


def _evaluation_section(folder: Path, summary: dict[str, Any], out_dir: Path) -> list[Block]:
    blocks: list[Block] = [
        Heading(f"Evaluation: {folder.name}"),
        Paragraph(_evaluation_line(summary)),
        Paragraph(
            f"Evaluated {summary.get('created', '?')} with medvol {summary.get('medvol_version', '?')}."
        ),
    ]
    if summary.get("task") == "classification":
        blocks += _classification_blocks(folder, summary, out_dir)
    else:
        blocks += _segmentation_blocks(folder, summary, out_dir)
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


def _classification_blocks(folder: Path, summary: dict[str, Any], out_dir: Path) -> list[Block]:
    tag = _tag(folder)
    blocks: list[Block] = [_headline_table(summary)]
    counts = summary.get("class_counts") or {}
    blocks.append(
        Paragraph(
            "Cases per class: "
            + ", ".join(f"class {k}: {v}" for k, v in counts.items())
            + f". Averaging: {summary.get('averaging')}."
        )
    )
    roc = [c for c in summary.get("roc") or [] if c.get("fpr")]
    if roc:
        name = f"roc-{tag}.png"
        _save_figure(roc_figure(roc, summary), out_dir / name)
        blocks.append(
            Image(
                name,
                f"ROC curve; shaded: pointwise {_confidence(summary)}% bootstrap band of the true-positive "
                "rate at fixed false-positive rates.",
            )
        )
    calibration = summary.get("calibration")
    if calibration:
        name = f"calibration-{tag}.png"
        _save_figure(calibration_figure(calibration, summary), out_dir / name)
        blocks.append(
            Image(
                name,
                f"Calibration: {calibration.get('quantity')} against the {calibration.get('observed_as')}.",
            )
        )
    matrix = summary.get("confusion_matrix")
    if matrix:
        name = f"confusion-{tag}.png"
        _save_figure(confusion_figure(matrix, summary.get("threshold")), out_dir / name)
        blocks.append(Image(name, "Confusion matrix: rows true class, columns predicted class."))
    return blocks


def roc_figure(curves: list[dict[str, Any]], summary: dict[str, Any]) -> Figure:
    """ROC curve(s) from ``summary["roc"]`` with their bootstrap bands."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5), layout="constrained")
    axis = figure.subplots()
    auc = (summary.get("metrics") or {}).get("auc") or {}
    for number, curve in enumerate(curves):
        colour = CLASS_COLOURS[number % len(CLASS_COLOURS)]
        if len(curves) == 1:
            label = f"AUC {_interval(auc.get('estimate'), auc.get('low'), auc.get('high'), 3)}"
        else:
            label = f"class {curve['positive_class']} vs rest, AUC {_fmt(curve.get('auc'), 3)}"
        low, high = curve.get("band_tpr_low"), curve.get("band_tpr_high")
        if low is not None and high is not None:
            axis.fill_between(curve["band_fpr"], low, high, color=colour, alpha=0.2, linewidth=0)
        axis.plot(curve["fpr"], curve["tpr"], color=colour, label=label)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    axis.set(xlabel="false-positive rate (1 − specificity)", ylabel="true-positive rate (sensitivity)")
    axis.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title="ROC")
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def calibration_figure(calibration: dict[str, Any], summary: dict[str, Any]) -> Figure:
    """Reliability diagram (top) and the number of cases per bin (bottom)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    edges = np.asarray(calibration["edges"], dtype=float)
    pairs = [
        (p, o)
        for p, o in zip(calibration["mean_predicted"], calibration["observed"], strict=True)
        if p is not None and o is not None
    ]
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    if pairs:
        top.plot(*zip(*pairs, strict=True), marker="o", label="model")
    ece = ((summary.get("metrics") or {}).get("ece") or {}).get("estimate")
    top.set(
        ylabel=calibration.get("observed_as"),
        title=f"Calibration (ECE {_fmt(ece, 3)})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    bottom.bar(centres, calibration["count"], width=widths * 0.9, color="#4363d8")
    bottom.set(xlabel=calibration.get("quantity"), ylabel="cases")
    return figure


def confusion_figure(matrix: list[list[int]], threshold: Any) -> Figure:
    """Counts with their values written in each cell."""
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=int)
    figure = Figure(figsize=(4.2, 3.8), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8)
    limit = counts.max() / 2 if counts.size else 0
    for (row, column), value in np.ndenumerate(counts):
        axis.text(
            column, row, str(value), ha="center", va="center", color="white" if value > limit else "black"
        )
    ticks = list(range(counts.shape[0]))
    axis.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="true class")
    axis.set_title("Confusion matrix" + (f" (threshold {threshold})" if threshold is not None else ""))
    return figure


def _segmentation_blocks(folder: Path, summary: dict[str, Any], out_dir: Path) -> list[Block]:
    tag = _tag(folder)
    metrics = summary.get("metrics") or {}
    names = summary.get("class_names") or {}
    level = _confidence(summary)
    blocks: list[Block] = []
    if metrics:
        header = ("Metric", *(names.get(value, f"class {value}") for value in metrics))
        rows = []
        for name, label in SEGMENTATION_ROWS:
            cells = [_mean_interval(entry.get(name) or {}, with_counts=True) for entry in metrics.values()]
            rows.append((f"{label}, mean [{level}% CI]", *cells))
        rows.append(
            (
                "Empty prediction / empty ground truth",
                *(
                    f"{entry.get('n_prediction_empty', 0)} / {entry.get('n_target_empty', 0)}"
                    for entry in metrics.values()
                ),
            )
        )
        blocks.append(Table(header, tuple(rows)))
        mean_dice = summary.get("dice_mean_over_classes") or {}
        blocks.append(
            Paragraph(
                "Mean Dice over the foreground classes (per case, then over cases): "
                f"{_mean_interval(mean_dice)}. n: cases in the mean; u: cases where the value is "
                f"undefined, left out. Empty masks: {_policy_text(summary.get('empty_policy') or {})}."
            )
        )
    rows_by_case = _read_segmentation_csv(folder / "cases.csv")
    if not rows_by_case:
        blocks.append(Paragraph("No case was scored (`cases.csv` is empty or missing)."))
        return blocks
    classes = sorted({c for case in rows_by_case.values() for c in case}, key=int)
    name = f"dice-{tag}.png"
    _save_figure(dice_distribution_figure(rows_by_case, classes, names), out_dir / name)
    blocks.append(Image(name, "Dice per case and class: box plot with every case as a point."))
    ranking = _rank_cases(rows_by_case, classes)
    table_rows = [
        (case_id, *(_fmt(rows_by_case[case_id][c]["dice"]) for c in classes), _fmt(mean))
        for case_id, mean in sorted(ranking.items())
    ]
    blocks.append(Heading("Dice per case", 3))
    blocks.append(Table(("Case", *(names.get(c, f"class {c}") for c in classes), "Mean"), tuple(table_rows)))
    defined = {case: mean for case, mean in ranking.items() if math.isfinite(mean)}
    if defined:
        best = max(defined, key=lambda case: defined[case])
        worst = min(defined, key=lambda case: defined[case])
        blocks.append(Heading("Best and worst case", 3))
        for label, case_id in (("best", best), ("worst", worst)):
            blocks += _overlay_blocks(folder, summary, case_id, label, defined[case_id], out_dir, tag)
            if best == worst:
                break
    return blocks


def dice_distribution_figure(
    rows_by_case: dict[str, dict[str, dict[str, float]]], classes: list[str], names: dict[str, str]
) -> Figure:
    """Box plot of the per-case Dice of each class, with the cases as jittered points."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.8 + 1.6 * len(classes), 4), layout="constrained")
    axis = figure.subplots()
    values = [
        [row[c]["dice"] for row in rows_by_case.values() if c in row and math.isfinite(row[c]["dice"])]
        for c in classes
    ]
    positions = list(range(1, len(classes) + 1))
    axis.boxplot(values, positions=positions, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for position, points, number in zip(positions, values, range(len(classes)), strict=True):
        jitter = rng.uniform(-0.12, 0.12, size=len(points))
        axis.scatter(
            np.full(len(points), position) + jitter,
            points,
            s=14,
            alpha=0.7,
            color=CLASS_COLOURS[number % len(CLASS_COLOURS)],
        )
    axis.set_xticks(positions, [names.get(c, f"class {c}") for c in classes])
    axis.set(ylabel="Dice", ylim=(0, 1.02), title="Dice per case")
    axis.grid(alpha=0.3, axis="y")
    return figure


def _overlay_blocks(
    folder: Path, summary: dict[str, Any], case_id: str, label: str, mean: float, out_dir: Path, tag: str
) -> list[Block]:
    try:
        figure = overlay_figure(folder, summary, case_id)
    except (MedvolError, OSError, ValueError) as error:
        return [
            Paragraph(
                f"{label.capitalize()} case `{case_id}` (mean Dice {mean:.3f}): overlay not drawn ({error})."
            )
        ]
    name = f"overlay-{tag}-{label}.png"
    _save_figure(figure, out_dir / name)
    return [
        Image(
            name,
            f"{label.capitalize()} case `{case_id}` (mean Dice {mean:.3f}): middle slice through the "
            "ground truth; filled: prediction, contours: ground truth.",
        )
    ]


def overlay_figure(folder: Path, summary: dict[str, Any], case_id: str) -> Figure:
    """Image, and image with the predicted mask filled and the ground truth outlined.

    The slice is the middle of the ground truth's extent along the axis with the largest spacing
    (the last axis when all are equal); pixels are drawn with their physical aspect ratio.

    Raises:
        MedvolError: the case's files cannot be found or read.
    """
    from matplotlib.artist import Artist
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from medvol.data.dataset import load_case
    from medvol.io import load

    case = _find_case(summary, case_id)
    image, label = load_case(case)
    if label is None:
        raise MedvolError(case.images[0], "the case has no label map")
    prediction = load(folder / "predictions" / f"{case_id}.nii.gz").array[0]
    truth = label.array[0]
    if prediction.shape != truth.shape:
        raise MedvolError(folder / "predictions", f"{case_id}: prediction and label differ in shape")
    spacing = np.asarray(label.spacing)
    axis_index = int(np.flatnonzero(spacing == spacing.max())[-1])
    present = np.flatnonzero(np.any(truth != 0, axis=tuple(a for a in range(3) if a != axis_index)))
    if not present.size:
        present = np.flatnonzero(np.any(prediction != 0, axis=tuple(a for a in range(3) if a != axis_index)))
    middle = (int(present[0]) + int(present[-1])) // 2 if present.size else truth.shape[axis_index] // 2
    plane = [a for a in range(3) if a != axis_index]

    def cut(array: np.ndarray) -> np.ndarray:
        return np.take(array, middle, axis=axis_index).T  # rows: second in-plane axis

    picture = cut(image.array[0].astype(np.float32))
    low, high = np.percentile(picture, [1, 99]) if picture.size else (0.0, 1.0)
    aspect = float(spacing[plane[1]] / spacing[plane[0]])
    classes = sorted(int(v) for v in set(np.unique(truth)) | set(np.unique(prediction)) if v != 0)
    colours = [CLASS_COLOURS[(v - 1) % len(CLASS_COLOURS)] for v in classes]
    figure = Figure(figsize=(8, 4.4), layout="constrained")
    plain, overlaid = figure.subplots(1, 2)
    for axis in (plain, overlaid):
        axis.imshow(
            picture,
            cmap="gray",
            vmin=low,
            vmax=high if high > low else low + 1,
            origin="lower",
            aspect=aspect,
        )
        axis.set_axis_off()
    predicted, actual = cut(prediction), cut(truth)
    if classes:
        lookup = np.zeros(max(classes) + 1, dtype=int)
        lookup[classes] = np.arange(len(classes))
        filled = np.ma.masked_where(predicted == 0, lookup[np.clip(predicted, 0, max(classes))])
        overlaid.imshow(
            filled,
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(classes) - 0.5,
            alpha=0.45,
            origin="lower",
            aspect=aspect,
            interpolation="nearest",
        )
        for value, colour in zip(classes, colours, strict=True):
            mask = (actual == value).astype(float)
            if mask.any():
                overlaid.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2, origin="lower")
    axes = "xyz"
    plain.set_title(f"{case_id}, slice {axes[axis_index]} = {middle}", fontsize=9)
    overlaid.set_title("prediction (filled), ground truth (contour)", fontsize=9)
    names = summary.get("class_names") or {}
    handles: list[Artist] = [
        Patch(color=c, alpha=0.45, label=names.get(str(v), f"class {v}"))
        for v, c in zip(classes, colours, strict=True)
    ]
    handles.append(Line2D([], [], color="black", linewidth=1.2, label="ground truth"))
    overlaid.legend(handles=handles, fontsize=7, loc="upper right")
    return figure


def _find_case(summary: dict[str, Any], case_id: str) -> Any:
    """The ``Case`` of an evaluated case id, from the folder or manifest the evaluation read."""
    from medvol.data.cases import discover

    root = summary.get("cases_root")
    if not root:
        raise MedvolError(None, "the evaluation summary does not record where its cases are")
    _, cases, _ = discover(root)
    for case in cases:
        if case.case_id == case_id and case.images:
            return case
    raise MedvolError(root, f"case {case_id} is no longer there")


def _read_segmentation_csv(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{case_id: {class: {metric: value}}}`` from an evaluation's ``cases.csv``."""
    if not path.is_file():
        return {}
    result: dict[str, dict[str, dict[str, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            values = {k: _float(v) for k, v in row.items() if k not in ("case_id", "class")}
            result.setdefault(row["case_id"], {})[row["class"]] = values
    return result


def _rank_cases(rows_by_case: dict[str, dict[str, dict[str, float]]], classes: list[str]) -> dict[str, float]:
    """Per-case mean Dice over the classes where it is defined (NaN if none)."""
    ranking = {}
    for case_id, row in rows_by_case.items():
        values = [row[c]["dice"] for c in classes if c in row and math.isfinite(row[c]["dice"])]
        ranking[case_id] = float(np.mean(values)) if values else math.nan
    return ranking


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")


def _read_json(path: Path, unreadable: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        unreadable.append(f"{path}: {error}")
        return None
    return data if isinstance(data, dict) else None


def _parameter_count(run_dir: Path) -> str:
    from medvol.engine.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            try:
                state = load_checkpoint(path)
            except MedvolError as error:
                return f"unknown ({error.problem})"
            total = sum(int(t.numel()) for t in state.get("model", {}).values() if hasattr(t, "numel"))
            return f"{total:,}"
    return "unknown (no checkpoint)"


def _policy_text(policy: dict[str, Any]) -> str:
    def value(v: Any, unit: str = "") -> str:
        if v is None:
            return "undefined"
        return f"{v}{unit}" if isinstance(v, int | float) else str(v)

    return (
        f"Dice is 0 when exactly one mask is empty and {value(policy.get('both_empty_dice'))} when both "
        f"are; HD95 and ASSD are {value(policy.get('one_empty_distance_mm'), ' mm')} when one is empty "
        f"and {value(policy.get('both_empty_distance_mm'), ' mm')} when both are"
    )


def _confidence(summary: dict[str, Any]) -> int:
    return round(100 * float((summary.get("bootstrap") or {}).get("confidence", 0.95)))


def _tag(folder: Path) -> str:
    from medvol.engine.run_folder import EVALUATION_PREFIX

    name = folder.name.removeprefix(EVALUATION_PREFIX)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "evaluation"


def _mean_interval(entry: dict[str, Any], with_counts: bool = False) -> str:
    text = _interval(entry.get("mean"), entry.get("low"), entry.get("high"))
    if with_counts:
        text += f" (n={entry.get('n', 0)}, u={entry.get('n_undefined', 0)})"
    return text


def _interval(estimate: Any, low: Any, high: Any, digits: int = 3) -> str:
    if not _finite(estimate):
        return "undefined"
    if not (_finite(low) and _finite(high)):
        return _fmt(estimate, digits)
    return f"{_fmt(estimate, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "undefined" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "undefined"
    return str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _shape(shape: Any) -> str:
    return "×".join(str(s) for s in shape) if isinstance(shape, list | tuple) else "?"


def _kv(mapping: Any) -> str:
    if not mapping:
        return ""
    if not isinstance(mapping, dict):
        return str(mapping)
    return ", ".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in mapping.items())
