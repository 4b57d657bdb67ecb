"""The report's figures, each a matplotlib ``Figure`` built from a run's saved numbers and slices.

matplotlib is imported inside each function, so importing medvol.report stays light;
figures are drawn without pyplot (no global state, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.io.atomic import atomic_path
from medvol.report.render import finite, fmt, interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from medvol.evaluation.overlays import OverlaySlices
    from medvol.report.read import CaseRows

CLASS_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def save_figure(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG at 110 dpi, atomically."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")


def learning_curves_figure(history: list[dict[str, Any]], best: tuple[int, float] | None) -> Figure:
    """Losses (left) and validation metrics (right) against the 1-based epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 3.8), layout="constrained")
    losses, metrics = figure.subplots(1, 2)
    epochs = [int(r["epoch"]) + 1 for r in history]
    for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if finite(r.get(key))]
        if points:
            losses.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    losses.set(xlabel="epoch", ylabel="loss", title="Loss")
    names = sorted(
        {k for r in history for k in r if k.startswith("val_") and k not in ("val_loss", "val_cases")}
    )
    for key in names:
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if finite(r.get(key))]
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


def roc_figure(curves: list[dict[str, Any]], summary: dict[str, Any]) -> Figure:
    """ROC curve(s) from ``summary["roc"]`` with their bootstrap bands."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5), layout="constrained")
    axis = figure.subplots()
    auc = (summary.get("metrics") or {}).get("auc") or {}
    for number, curve in enumerate(curves):
        colour = CLASS_COLOURS[number % len(CLASS_COLOURS)]
        if len(curves) == 1:
            label = f"AUC {interval(auc.get('estimate'), auc.get('low'), auc.get('high'), 3)}"
        else:
            label = f"class {curve['positive_class']} vs rest, AUC {fmt(curve.get('auc'), 3)}"
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
        title=f"Calibration (ECE {fmt(ece, 3)})",
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


def dice_distribution_figure(rows_by_case: CaseRows, classes: list[str], names: dict[str, str]) -> Figure:
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


def overlay_figure(slices: OverlaySlices, case_id: str, names: dict[str, str]) -> Figure:
    """Image, and image with the predicted mask filled and the ground truth outlined.

    Args:
        slices: the case's slices as ``medvol evaluate`` saved them
            (:func:`medvol.evaluation.overlays.overlay_slices` chose the slice).
        case_id: the case, for the title.
        names: class names by label value as text (``summary.json``'s ``class_names``).

    Pixels are drawn with their physical aspect ratio.
    """
    from matplotlib.figure import Figure

    picture = slices.image
    low, high = np.percentile(picture, [1, 99]) if picture.size else (0.0, 1.0)
    figure = Figure(figsize=(8, 4.4), layout="constrained")
    plain, overlaid = figure.subplots(1, 2)
    for axis in (plain, overlaid):
        axis.imshow(
            picture,
            cmap="gray",
            vmin=low,
            vmax=high if high > low else low + 1,
            origin="lower",
            aspect=slices.aspect,
        )
        axis.set_axis_off()
        _label_edges(axis, slices)
    _draw_masks(overlaid, slices, names)
    plain.set_title(f"{case_id}, slice {'xyz'[slices.axis]} = {slices.index}", fontsize=9)
    overlaid.set_title("prediction (filled), ground truth (contour)", fontsize=9)
    return figure


def _label_edges(axis: Axes, slices: OverlaySlices) -> None:
    """The anatomical direction (R/L, A/P, S/I) at the middle of each edge of the slice."""
    letters = slices.edge_letters
    if letters is None:
        return
    left, right, bottom, top = letters
    style: dict[str, Any] = {
        "color": "yellow",
        "fontsize": 9,
        "fontweight": "bold",
        "transform": axis.transAxes,
    }
    axis.text(0.02, 0.5, left, ha="left", va="center", **style)
    axis.text(0.98, 0.5, right, ha="right", va="center", **style)
    axis.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    axis.text(0.5, 0.98, top, ha="center", va="top", **style)


def _draw_masks(axis: Axes, slices: OverlaySlices, names: dict[str, str]) -> None:
    """The prediction filled and the ground truth outlined, one colour per class, and a legend."""
    from matplotlib.artist import Artist
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    classes = list(slices.classes)
    colours = [CLASS_COLOURS[(v - 1) % len(CLASS_COLOURS)] for v in classes]
    predicted, actual = slices.prediction, slices.label
    if classes:
        lookup = np.zeros(max(classes) + 1, dtype=int)
        lookup[classes] = np.arange(len(classes))
        filled = np.ma.masked_where(predicted == 0, lookup[np.clip(predicted, 0, max(classes))])
        axis.imshow(
            filled,
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(classes) - 0.5,
            alpha=0.45,
            origin="lower",
            aspect=slices.aspect,
            interpolation="nearest",
        )
        for value, colour in zip(classes, colours, strict=True):
            mask = (actual == value).astype(float)
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2, origin="lower")
    handles: list[Artist] = []
    for value, colour in zip(classes, colours, strict=True):
        name = names.get(str(value), f"class {value}")
        handles.append(Patch(color=colour, alpha=0.45, label=f"{name}: prediction"))
        handles.append(Line2D([], [], color=colour, linewidth=1.2, label=f"{name}: ground truth"))
    if handles:  # below the slice, so it hides no pixel and no edge letter
        axis.legend(
            handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=2, frameon=False
        )
