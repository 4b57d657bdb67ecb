"""``medvol runs`` and the report on run folders that a killed or broken run left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medvol.cli import main
from medvol.engine.runs import list_runs
from medvol.engine.tracking import read_metrics
from medvol.report import write_report
from tests.test_evaluate import classifier_run


@pytest.fixture
def runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A folder of two copies of a trained 2-epoch classifier run, ``killed`` and ``whole``."""
    trained = classifier_run(shared_data, tmp_path_factory)
    for name in ("killed", "whole"):
        shutil.copytree(trained, tmp_path / "runs" / name)
    return tmp_path / "runs"


def kill_while_writing(run_dir: Path) -> Path:
    """Append the first half of a third epoch's line to ``metrics.jsonl``, as a killed run leaves it."""
    path = run_dir / "metrics.jsonl"
    line = json.dumps({**json.loads(path.read_text().splitlines()[-1]), "epoch": 2})
    with open(path, "a") as handle:
        handle.write(line[: len(line) // 2])
    return path


def test_read_metrics_keeps_the_good_lines_and_names_the_bad_one(
    runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = kill_while_writing(runs / "killed")
    with open(path, "r+") as handle:  # and a stray line in the middle
        lines = handle.read().splitlines(keepends=True)
        handle.seek(0)
        handle.write("".join([lines[0], "[1, 2]\n", *lines[1:]]))
    with caplog.at_level("WARNING", logger="medvol"):
        history = read_metrics(runs / "killed")
    assert [record["epoch"] for record in history] == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{path}: line 2 skipped" in w and "epoch record" in w for w in warnings), warnings
    assert any(f"{path}: line 4 skipped" in w and "not JSON" in w for w in warnings), warnings


def test_runs_lists_every_run_when_one_was_killed_while_writing(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = kill_while_writing(runs / "killed")
    assert main(["runs", str(runs), "--json"]) == 0
    captured = capsys.readouterr()
    rows = {row["run"]: row for row in json.loads(captured.out)}
    assert rows["killed"]["epochs_done"] == rows["whole"]["epochs_done"] == 2
    assert rows["killed"]["best"] == rows["whole"]["best"]
    assert f"{path}: line 3 skipped" in captured.err


def test_runs_lists_a_run_whose_config_cannot_be_read(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (runs / "killed" / "config.yaml").write_text("train: {epochs: [1\n")
    assert main(["runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("whole ")
    assert f"not read: killed: {runs / 'killed' / 'config.yaml'}: cannot read the config" in out
    (runs / "killed" / "config.yaml").write_text("train: {epochs: two}\n")
    (row,) = [row for row in list_runs(runs) if row["run"] == "killed"]
    assert "train.epochs" in row["problem"]


def test_report_draws_the_epochs_before_the_truncated_line(runs: Path, tmp_path: Path) -> None:
    kill_while_writing(runs / "killed")
    markdown = write_report(runs / "killed", tmp_path / "report", "md").read_text()
    assert "missing or empty" not in markdown
    assert (tmp_path / "report" / "learning_curves.png").is_file()
