"""Experiment tracking, offline by default: everything about a run lives in its folder.

``MetricsLogger`` appends each epoch to the run's ``metrics.jsonl`` and mirrors
it to TensorBoard (``tensorboard/``) and, optionally, MLflow
(``tracking.mlflow: true``, package ``mlflow``); ``environment`` records what
lets someone rerun the experiment. Which files a run folder holds is
``medvol.engine.run_folder``'s to say. Only the main rank writes.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from medvol.engine.run_folder import RunFolder
from medvol.io.atomic import atomic_path
from medvol.logs import get_logger

logger = get_logger(__name__)

PACKAGES = ("medvol", "torch", "monai", "numpy", "nibabel", "pydicom", "SimpleITK", "scikit-learn")


def git_commit(folder: Path) -> str | None:
    """The commit of the git checkout holding ``folder`` (``+dirty`` if modified), if any."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def environment(extra: dict[str, Any]) -> dict[str, Any]:
    """Versions and machine facts that let someone rerun the experiment."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        **extra,
    }


class MetricsLogger:
    """Appends one JSON line per epoch; mirrors scalars to TensorBoard and MLflow."""

    def __init__(self, run: RunFolder, tensorboard: bool, mlflow_uri: str | None, run_name: str) -> None:
        self.path = run.metrics
        self.writer = None
        self.mlflow: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tensorboard))
        if mlflow_uri is not None:
            import mlflow

            mlflow.set_tracking_uri(mlflow_uri)
            mlflow.set_experiment("medvol")
            mlflow.start_run(run_name=run_name)
            self.mlflow = mlflow

    def log_params(self, params: dict[str, Any]) -> None:
        if self.mlflow is not None:
            self.mlflow.log_params(params)

    def log(self, record: dict[str, Any]) -> None:
        """Record one epoch: ``{"epoch": int, <name>: float, ...}``."""
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        epoch = int(record["epoch"])
        scalars = {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, int | float)}
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, epoch)
            self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step=epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epochs recorded in a run folder's ``metrics.jsonl`` (none when it is missing).

    A line that is not an epoch record (a JSON object with an integer
    ``epoch``), such as the half-written last line of a run killed while
    writing it, is skipped with a warning naming the file and the line number;
    the other epochs are returned.
    """
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problem = f"not JSON ({error.msg}; a run killed while writing it?)"
            else:
                if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                    records.append(record)
                    continue
                problem = "not an epoch record (a JSON object with an integer epoch)"
            logger.warning("%s: line %d skipped: %s", path, number, problem)
    return records


def rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with the epochs a checkpoint recorded (used when resuming)."""
    with atomic_path(RunFolder(run_dir).metrics) as temporary:
        temporary.write_text("".join(json.dumps(record) + "\n" for record in history))
