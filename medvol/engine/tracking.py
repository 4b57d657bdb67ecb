"""Experiment tracking, offline by default: everything about a run lives in its folder.

``MetricsLogger`` appends each epoch to the run's ``metrics.jsonl`` and mirrors
it to TensorBoard (``tensorboard/``) and, optionally, MLflow
(``tracking.mlflow: true``, package ``mlflow-skinny``); ``environment`` records what
lets someone rerun the experiment. Which files a run folder holds is
``medvol.engine.run_folder``'s to say. Only the main rank writes.

MLflow is a mirror, never the record: ``MlflowRun`` sends the resolved config
(parameters), each epoch's metrics and, for a tracking server
(``tracking.mlflow_uri: http://...``), the run's files (config, environment,
evaluation summaries, report) to one MLflow run, and remembers which one in
``mlflow-run.json`` so that ``--resume``, ``medvol evaluate`` and ``medvol
report`` add to the same run. A tracking server that is down or fails costs
the mirror, never the run: one warning, and the run folder keeps everything.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from medvol.engine.run_folder import RunFolder
from medvol.io.atomic import atomic_path, write_json
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
        self.mlflow: MlflowRun | None = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tensorboard))
        if mlflow_uri is not None:
            self.mlflow = MlflowRun.start(run, mlflow_uri, run_name)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.mlflow is not None:
            self.mlflow.log_params(params)

    def log_files(self, paths: Iterable[Path], folder: str | None = None) -> None:
        """Send files to a shared MLflow store (under ``folder``); nothing for a run's own mlflow.db."""
        if self.mlflow is not None:
            self.mlflow.log_files(paths, folder)

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
            self.mlflow.log_metrics(scalars, epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end()


MLFLOW_EXPERIMENT = "medvol"
SERVER_TIMEOUT_S = 5.0


def server_problem(uri: str) -> str | None:
    """Why the MLflow tracking server at an http(s) ``uri`` cannot be used now; None when it answers.

    Asks the server's ``/health`` once, waiting at most ``SERVER_TIMEOUT_S``; other
    URIs (a local ``sqlite:///`` file, ``databricks``) are not checked here.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S)
    except requests.Timeout:
        return f"no answer within {SERVER_TIMEOUT_S:g} s"
    except requests.RequestException:
        return "cannot connect"
    return None if answer.ok else f"/health answered HTTP {answer.status_code}"


class MlflowRun:
    """The MLflow run that mirrors one run folder; every call is best-effort (module docstring)."""

    def __init__(self, run: RunFolder, uri: str, run_id: str, client: Any) -> None:
        self.run, self.uri, self.run_id = run, uri, run_id
        self.client: Any = client
        self.shared = is_server(uri)

    @classmethod
    def start(cls, run: RunFolder, uri: str, name: str) -> MlflowRun | None:
        """Start (or, after ``--resume``, reopen) the MLflow run of ``run``; None when the store is down."""
        problem = server_problem(uri)
        if problem is None:
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=uri)
                run_id = _recorded_run_id(run, uri)
                if run_id is None:
                    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
                    experiment_id = (
                        experiment.experiment_id
                        if experiment is not None
                        else client.create_experiment(MLFLOW_EXPERIMENT)
                    )
                    run_id = client.create_run(experiment_id, run_name=name).info.run_id
                else:
                    client.update_run(run_id, status="RUNNING")
            except Exception as error:  # any failure of the store costs the mirror only
                problem = _one_line(error)
            else:
                write_json(run.mlflow_run, {"tracking_uri": uri, "run_id": run_id})
                return cls(run, uri, run_id, client)
        logger.warning(
            "MLflow at %s not used: %s; training goes on and %s keeps the whole record",
            uri,
            problem,
            run.path,
        )
        return None

    @classmethod
    def send_files(cls, run_dir: Path, paths: Iterable[Path], folder: str | None = None) -> None:
        """Add files to the tracking server's run that training recorded in ``mlflow-run.json``, if any."""
        run = RunFolder(run_dir)
        try:
            recorded = json.loads(run.mlflow_run.read_text())
            uri, run_id = str(recorded["tracking_uri"]), str(recorded["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if not is_server(uri):
            return
        problem = server_problem(uri)
        if problem is not None:
            logger.warning("MLflow at %s not used: %s; %s is not sent there", uri, problem, folder or "")
            return
        from mlflow.tracking import MlflowClient

        cls(run, uri, run_id, MlflowClient(tracking_uri=uri)).log_files(paths, folder)

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> None:
        """``client.METHOD(run_id, *args, **kwargs)``; on failure one warning, then MLflow is left alone."""
        if self.client is None:
            return
        try:
            getattr(self.client, method)(self.run_id, *args, **kwargs)
        except Exception as error:  # the server's failure costs the mirror, never the run
            logger.warning(
                "MLflow at %s failed while %s (%s); nothing more is sent there, %s keeps the whole record",
                self.uri,
                what,
                _one_line(error),
                self.run.path,
            )
            self.client = None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per request
            self._call("logging parameters", "log_batch", params=items[start : start + 100])

    def log_metrics(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        self._call("logging metrics", "log_batch", metrics=metrics)

    def log_files(self, paths: Iterable[Path], folder: str | None = None) -> None:
        """Files as artefacts of a tracking server's run; none for a database file (they are in the run)."""
        if not self.shared:
            return
        for path in paths:
            if path.exists():
                method = "log_artifacts" if path.is_dir() else "log_artifact"
                self._call(f"sending {path.name}", method, str(path), folder)

    def end(self) -> None:
        self._call("closing the run", "set_terminated")


def is_server(uri: str) -> bool:
    """A tracking server (``http(s)://``, ``databricks``), which gets the run's files as artefacts."""
    return uri.startswith(("http://", "https://", "databricks"))


def local_mlflow_uri(run: RunFolder) -> str:
    """The store of ``tracking.mlflow: true`` without ``tracking.mlflow_uri``: the run's ``mlflow.db``."""
    return f"sqlite:///{run.mlflow_db.resolve()}"


def _recorded_run_id(run: RunFolder, uri: str) -> str | None:
    """The MLflow run id in ``mlflow-run.json`` when it was recorded for the store at ``uri``."""
    try:
        recorded = json.loads(run.mlflow_run.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(recorded, dict) and recorded.get("tracking_uri") == uri:
        return str(recorded.get("run_id"))
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


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
