"""``medvol runs``: many experiments compared at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medvol.engine.run_folder import RunFolder
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
    """One row per run folder below ``folder``: settings, epochs done, best validation metric.

    A run whose ``config.yaml`` cannot be read still has its row: ``run`` and
    ``problem`` (the file and what is wrong), so one broken run never hides
    the others. Bad lines of ``metrics.jsonl`` are skipped with a warning
    (``medvol.engine.tracking.read_metrics``).
    """
    if not folder.is_dir():
        raise MedvolError(folder, "not a folder of runs")
    rows = []
    for config_path in sorted(folder.glob("*/config.yaml")):
        run = RunFolder(config_path.parent)
        row: dict[str, Any] = {"run": run.name}
        try:
            config = run.read_config()
        except MedvolError as error:
            rows.append({**row, "problem": str(error)})
            continue
        for name, (section, key) in KEY_SETTINGS:
            row[name] = getattr(getattr(config, section), key)
        metrics = read_metrics(run.path)
        row["epochs_done"] = len(metrics)
        metric, mode = f"val_{config.train.metric}", config.train.metric_mode
        scored = [m for m in metrics if isinstance(m.get(metric), float)]
        if scored:
            best = (max if mode == "max" else min)(scored, key=lambda m: m[metric])
            row["best"] = round(best[metric], 4)
            row["best_epoch"] = best["epoch"] + 1
        rows.append(row)
    return rows


def format_runs(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``list_runs`` rows; the runs that could not be read are listed below it."""
    if not rows:
        return "no runs found"
    readable = [row for row in rows if "problem" not in row]
    lines = []
    if readable:
        columns = list(dict.fromkeys(key for row in readable for key in row))
        widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in readable)) for c in columns}
        lines.append("  ".join(c.ljust(widths[c]) for c in columns))
        lines += ["  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns) for row in readable]
    lines += [f"not read: {row['run']}: {row['problem']}" for row in rows if "problem" in row]
    return "\n".join(lines)
