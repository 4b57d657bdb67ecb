"""Per-case paired difference of two published 5-fold hippocampus reproductions.

From the project root:
``.venv/bin/python docs/measurements/hippocampus-levers-session10/paired_difference.py
docs/results/hippocampus-cpu-5fold-unet16 docs/results/hippocampus-cpu-5fold``.
Seed 0 of each fold of both (the earlier table has one seed). Prints, per class,
both pooled means over the 260 validation cases, the mean paired
difference (second minus first) with a 95% percentile bootstrap interval over cases
(10,000 resamples, seed 0), and in how many cases each is better.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np


def per_case(folder: Path) -> dict[tuple[str, str], float]:
    """``{(case_id, class): dice}`` over the ``reproduce-val/cases.csv`` of each fold's seed-0 run."""
    values = {}
    for path in sorted(folder.glob("runs/*-seed0/reproduce-val/cases.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                values[row["case_id"], row["class"]] = float(row["dice"])
    return values


if __name__ == "__main__":
    first, second = (per_case(Path(p)) for p in sys.argv[1:3])
    if first.keys() != second.keys():
        sys.exit("the two reproductions scored different cases")
    rng = np.random.default_rng(0)
    for label in sorted({cls for _, cls in first}):
        keys = sorted(k for k in first if k[1] == label)
        difference = np.array([second[k] - first[k] for k in keys])
        resampled = [difference[rng.integers(0, len(keys), len(keys))].mean() for _ in range(10_000)]
        low, high = np.percentile(resampled, [2.5, 97.5])
        print(
            f"class {label}: {len(keys)} cases, {np.mean([first[k] for k in keys]):.4f} -> "
            f"{np.mean([second[k] for k in keys]):.4f}, paired {difference.mean():+.4f} "
            f"[{low:+.4f}, {high:+.4f}]; better in {int(np.sum(difference > 0))}, "
            f"worse in {int(np.sum(difference < 0))}"
        )
