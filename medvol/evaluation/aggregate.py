"""Several runs (seeds, folds) combined: mean and Student-t interval of each headline number."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvol.engine.run_folder import read_summary
from medvol.errors import MedvolError
from medvol.io.atomic import json_safe
from medvol.metrics import SEGMENTATION_VALUES, mean_ci


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
    return json_safe(
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
