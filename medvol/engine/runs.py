"""``medvol runs``: many experiments compared at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medvol.engine.tracking import read_metrics
from medvol.errors import MedvolError

KEY_SETTINGS = (
    ("model", ("model", "name")),
    ("epochs", ("train", "epochs")),
    ("batch", ("train", "batch_size")),
    ("lr", ("optimizer", "lr")),
    ("optim", ("optimizer", "name")),
    ("metric", ("train", "metric")),
    ("seed", ("train", "seed")),
)


def list_runs(folder: Path) -> list[dict[str, Any]]:
    """One row per run folder below ``folder``: settings, epochs done, best validation metric."""
    if not folder.is_dir():
        raise MedvolError(folder, "not a folder of runs")
    rows = []
    for config_path in sorted(folder.glob("*/config.yaml")):
        run_dir = config_path.parent
        config = yaml.safe_load(config_path.read_text())
        row: dict[str, Any] = {"run": run_dir.name}
        for name, (section, key) in KEY_SETTINGS:
            row[name] = config.get(section, {}).get(key)
        metrics = read_metrics(run_dir)
        row["epochs_done"] = len(metrics)
        metric, mode = f"val_{config['train']['metric']}", config["train"]["metric_mode"]
        scored = [m for m in metrics if isinstance(m.get(metric), float)]
        if scored:
            best = (max if mode == "max" else min)(scored, key=lambda m: m[metric])
            row["best"] = round(best[metric], 4)
            row["best_epoch"] = best["epoch"] + 1
        rows.append(row)
    return rows


def format_runs(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``list_runs`` rows."""
    if not rows:
        return "no runs found"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(lines)
