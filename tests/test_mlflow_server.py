"""A tracking server a team shares: a real ``mlflow server`` on 127.0.0.1, read back over HTTP.

The server runs for this module only (SQLite store and artefacts in pytest's tmp path,
a free port, stopped at the end). A tiny classifier is trained, evaluated and reported
with ``tracking.mlflow_uri`` pointing at it; everything is then read back through
``MlflowClient`` and compared with the run folder. A server that is down costs a warning,
never the run.

Needs the ``mlflow`` package (the server; the ``dev`` extra installs it). Without it the
tests skip, except under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from medvol import demo
from medvol.cli import main
from medvol.config import load_config
from medvol.engine.run_start import flatten
from medvol.engine.tracking import read_metrics
from tests.test_evaluate import adrenal_file

STARTUP_S = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a running ``mlflow server``; stopped after the module's tests."""
    mlflow_script = Path(sys.executable).parent / "mlflow"
    if importlib.util.find_spec("flask") is None or not mlflow_script.is_file():
        reason = "the MLflow tracking server is not installed (pip install -e '.[dev]' installs mlflow)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must test a real tracking server")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(mlflow_script),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'store.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed below)
    # Tracking only: without the background job runner (GenAI scoring) the server starts and stops faster.
    environ = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, cwd=folder, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"

    def log_text() -> str:
        return (folder / "server.log").read_text(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited with {server.returncode}: {log_text()}")
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer within {STARTUP_S} s: {log_text()}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def train_config(data: Path, runs: Path, name: str, uri: str) -> Path:
    config = demo.medmnist_classifier(data, epochs=2, name=name)
    config["tracking"] = {
        "output_dir": str(runs),
        "name": name,
        "tensorboard": False,
        "mlflow": True,
        "mlflow_uri": uri,
    }
    path = runs.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_run_is_read_back_from_the_server(
    mlflow_server: str,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    config_path = train_config(adrenal_file(shared_data, tmp_path_factory), runs, "shared", mlflow_server)
    assert main(["train", str(config_path)]) == 0
    run_dir = runs / "shared"
    assert main(["evaluate", str(run_dir), "--n-resamples", "50", "--device", "cpu"]) == 0
    assert main(["report", str(run_dir)]) == 0
    recorded = json.loads((run_dir / "mlflow-run.json").read_text())
    assert recorded["tracking_uri"] == mlflow_server

    client = MlflowClient(tracking_uri=mlflow_server)
    found = client.get_run(recorded["run_id"])
    assert (found.info.run_name, found.info.status) == ("shared", "FINISHED")
    resolved = flatten(load_config(run_dir / "config.yaml").model_dump(mode="json"))
    assert found.data.params == {key: str(value) for key, value in resolved.items()}

    epochs = read_metrics(run_dir)
    assert len(epochs) == 2
    for name in ("train_loss", "val_auc", "val_loss", "lr"):
        history = sorted(client.get_metric_history(found.info.run_id, name), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(e["epoch"], e[name]) for e in epochs], name

    def artefact(path: str) -> bytes:
        return Path(client.download_artifacts(found.info.run_id, path, str(tmp_path / "back"))).read_bytes()

    for name in ("config.yaml", "environment.json", "split.json", "input.json"):
        assert artefact(name) == (run_dir / name).read_bytes(), name
    for name in ("summary.json", "cases.csv"):
        assert artefact(f"evaluation-val/{name}") == (run_dir / "evaluation-val" / name).read_bytes(), name
    report = sorted(p.name for p in (run_dir / "report").iterdir())
    assert sorted(Path(a.path).name for a in client.list_artifacts(found.info.run_id, "report")) == report
    assert artefact("report/report.html") == (run_dir / "report" / "report.html").read_bytes()

    # --resume reopens the same MLflow run: still one run of that name, finished again.
    assert main(["train", str(config_path), "--resume"]) == 0
    (again,) = client.search_runs([found.info.experiment_id], "attributes.run_name = 'shared'")
    assert (again.info.run_id, again.info.status) == (found.info.run_id, "FINISHED")

    capsys.readouterr()
    assert main(["runs", str(runs), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["runs", "--mlflow", mlflow_server, "--json"]) == 0
    from_server = [row for row in json.loads(capsys.readouterr().out) if row["run"] == "shared"]
    assert from_server == from_folder
    assert main(["runs", "--mlflow", mlflow_server]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == list(from_folder[0])  # the same columns as for run folders


def test_a_server_that_is_down_costs_a_warning_not_the_run(
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runs = tmp_path / "runs"
    config_path = train_config(adrenal_file(shared_data, tmp_path_factory), runs, "offline", down)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="medvol"):
        assert main(["train", str(config_path)]) == 0
    assert time.monotonic() - started < 60
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = f"MLflow at {down} not used: cannot connect; training goes on and {runs / 'offline'} keeps"
    assert any(w.startswith(expected) for w in warnings), warnings
    run_dir = runs / "offline"
    assert [e["epoch"] for e in read_metrics(run_dir)] == [0, 1]
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "environment.json").is_file()
    assert not (run_dir / "mlflow-run.json").exists()
    capsys.readouterr()
    assert main(["runs", "--mlflow", down]) == 1
    assert f"MLflow at {down}: cannot connect" in capsys.readouterr().err
