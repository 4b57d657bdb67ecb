"""Several runs (seeds, folds) combined: mean, Student-t interval and range of each headline number.

A few runs give a wide t-interval, which can leave the metric's range (an accuracy
interval reaching 1.12). Every interval here is therefore reported twice over:
the t-interval clipped to the metric's range (:func:`metric_range`), with
``clipped`` saying when it was, and the lowest and highest value over the runs
(``min``, ``max``), which needs no assumption and cannot leave the range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvol.engine.run_folder import read_summary
from medvol.errors import MedvolError
from medvol.io.atomic import json_safe
from medvol.metrics import CLASSIFICATION_CI_METRICS, SEGMENTATION_VALUES, mean_ci

UNIT = (0.0, 1.0)
#: Range of each headline metric by its name before the class suffix (``dice`` of ``dice_1``).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **{name: UNIT for name in CLASSIFICATION_CI_METRICS},
    "brier": (0.0, 2.0),  # multi-class Brier: sum over classes of squared errors
    "dice": UNIT,
    "hd95_mm": (0.0, math.inf),
    "assd_mm": (0.0, math.inf),
    "volume_prediction_ml": (0.0, math.inf),
    "volume_target_ml": (0.0, math.inf),
}


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
    ``mean ± t_{(1+confidence)/2, n−1} · s/√n``, clipped to the metric's range, which
    describes the spread between runs (the variation of training with the seed, or of the
    folds), not the case-level uncertainty inside one run. Use it for "k seeds" or "5-fold
    cross-validation" figures.

    A metric that is undefined (None/NaN) in any run gets no mean (``mean`` None) and lists
    the runs in ``undefined_in``: a failed run must not silently vanish from the average.

    Args:
        summaries: ``summary.json`` contents, or paths to them (or to evaluation folders),
            all of the same task and split.
        confidence: nominal coverage of the intervals.

    Returns:
        ``{"task", "split", "n_runs", "confidence", "method", "sources", "metrics": {name:
        entry}}}`` with each entry as :func:`over_runs` gives it; with one run ``low`` and
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
    metrics = {name: over_runs([e[name] for e in estimates], sources, name, confidence) for name in names}
    return json_safe(
        {
            "task": loaded[0].get("task"),
            "split": loaded[0].get("split"),
            "n_runs": len(loaded),
            "confidence": confidence,
            "method": "student t over runs (mean of per-run point estimates), clipped to the metric's "
            "range; min and max over runs",
            "sources": sources,
            "metrics": metrics,
        }
    )


def metric_range(name: str) -> tuple[float, float]:
    """The values a headline metric can take: ``(0, 1)`` for ``auc`` or ``dice_2``; unknown: unbounded."""
    if name in METRIC_RANGES:
        return METRIC_RANGES[name]
    base = name.rpartition("_")[0]
    return METRIC_RANGES.get(base, (-math.inf, math.inf))


def over_runs(
    values: Sequence[float], sources: Sequence[str], name: str, confidence: float = 0.95
) -> dict[str, Any]:
    """One metric over runs: mean, t-interval clipped to :func:`metric_range`, min and max.

    Args:
        values: the metric's point estimate in each run (NaN where undefined).
        sources: a name for each run, listed in ``undefined_in`` where its value is NaN.
        name: the metric, which decides its range.
        confidence: nominal coverage of the t-interval.

    Returns:
        ``{"values", "n", "undefined_in", "mean", "low", "high", "clipped", "t_low", "t_high",
        "min", "max", "range"}``: ``low``/``high`` the t-interval clipped to the range and
        ``clipped`` whether that moved a bound, ``t_low``/``t_high`` the t-interval as computed.
        Everything but ``values`` and ``undefined_in`` is None when a run is undefined, and
        the interval is None with one run.
    """
    values = [float(v) for v in values]
    undefined = [sources[i] for i, v in enumerate(values) if not math.isfinite(v)]
    bounds = metric_range(name)
    entry: dict[str, Any] = {
        "values": values,
        "n": len(values),
        "undefined_in": undefined,
        "range": list(bounds),
    }
    if undefined:
        entry.update(
            mean=None, low=None, high=None, clipped=False, t_low=None, t_high=None, min=None, max=None
        )
        return entry
    raw = mean_ci(values, confidence)
    interval = mean_ci(values, confidence, bounds)
    entry.update(
        mean=interval.estimate,
        low=interval.low,
        high=interval.high,
        clipped=interval.clipped,
        t_low=raw.low,
        t_high=raw.high,
        min=min(values),
        max=max(values),
    )
    return entry


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan
