"""Scoring a trained run: ``medvol evaluate`` and the aggregation of several runs.

- :mod:`medvol.evaluation.evaluate`: ``evaluate_run`` (the request, the header, the files);
- :mod:`medvol.evaluation.segmentation`: Dice, HD95, ASSD, volume per case and class;
- :mod:`medvol.evaluation.classification`: every classification metric with bootstrap CIs;
- :mod:`medvol.evaluation.aggregate`: mean and Student-t interval over seeds or folds;
- :mod:`medvol.evaluation.summary`: JSON-safe values and the printed lines.

Every number is computed by :mod:`medvol.metrics`.
"""

from __future__ import annotations

from medvol.engine.run_folder import read_summary
from medvol.evaluation.aggregate import aggregate, point_estimates
from medvol.evaluation.evaluate import Evaluation, default_out, evaluate_run
from medvol.evaluation.summary import format_summary

__all__ = [
    "Evaluation",
    "aggregate",
    "default_out",
    "evaluate_run",
    "format_summary",
    "point_estimates",
    "read_summary",
]
