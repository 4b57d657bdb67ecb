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


def list_mlflow_runs(uri: str) -> list[dict[str, Any]]:
    """One row per run of the tracking store at ``uri`` (experiment ``medvol``), as ``list_runs`` gives.

    The settings come from the run's parameters (the resolved config, flattened),
    ``epochs_done`` and ``best`` from its per-epoch metrics.
    """
    from mlflow.tracking import MlflowClient

    from medvol.engine.tracking import MLFLOW_EXPERIMENT, server_problem

    problem = server_problem(uri)
    if problem is not None:
        raise MedvolError(None, f"MLflow at {uri}: {problem}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is None:
        return []
    rows = []
    for found in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
        params, run_id = found.data.params, found.info.run_id
        row: dict[str, Any] = {"run": found.info.run_name}
        if "train.metric" not in params:
            rows.append({**row, "problem": f"MLflow run {run_id} has no medvol parameters"})
            continue
        for name, (section, key) in KEY_SETTINGS:
            row[name] = _param_value(params.get(f"{section}.{key}"))
        row["epochs_done"] = len({m.step for m in client.get_metric_history(run_id, "lr")})
        scored = {m.step: m.value for m in client.get_metric_history(run_id, f"val_{params['train.metric']}")}
        if scored:
            pick = max if params.get("train.metric_mode") == "max" else min
            best_epoch = pick(sorted(scored), key=lambda step: scored[step])
            row["best"] = round(scored[best_epoch], 4)
            row["best_epoch"] = best_epoch + 1
        rows.append(row)
    return rows


def _param_value(text: str | None) -> Any:
    """An MLflow parameter (always text) back as the config value: int, float, bool, None or text."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


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
