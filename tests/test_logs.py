"""What a user sees of medvol's log messages: on the command line, and in a notebook."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from medvol.logs import console, get_logger


def test_command_line_shows_progress_plain_and_problems_prefixed(capsys: pytest.CaptureFixture[str]) -> None:
    root_handlers = list(logging.getLogger().handlers)
    log = get_logger("medvol.engine.train")
    with console():
        log.info("epoch 1/2  loss 0.5000")
        log.debug("hidden without --debug")
        log.warning("the cache is stale")
        logging.getLogger("otherlib").warning("from another library")
        logging.getLogger("otherlib").info("another library's chatter")
    captured = capsys.readouterr()
    assert captured.out == "epoch 1/2  loss 0.5000\n"
    assert captured.err == "medvol: warning: the cache is stale\nmedvol: warning: from another library\n"
    assert logging.getLogger().handlers == root_handlers  # left as it was found


def test_debug_shows_debug_messages(capsys: pytest.CaptureFixture[str]) -> None:
    with console(debug=True):
        get_logger("medvol.engine.train").debug("batch 3 loaded")
        get_logger("medvol.engine.train").error("bad case")
    assert capsys.readouterr().err == "medvol: debug: batch 3 loaded\nmedvol: error: bad case\n"


def test_a_nested_command_prints_each_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    """``medvol demo`` runs the other commands inside its own."""
    log = get_logger("medvol.demo")
    with console():
        with console():
            log.info("inner")
        log.info("outer")
    assert capsys.readouterr().out == "inner\nouter\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_notebook_without_logging_setup_sees_the_epoch_lines() -> None:
    code = (
        "from medvol.logs import get_logger\n"
        "log = get_logger('medvol.engine.train')\n"
        "log.info('epoch 1/1  loss 0.5000')\n"
        "log.warning('the cache is stale')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "epoch 1/1  loss 0.5000\n"
    assert result.stderr == "medvol: warning: the cache is stale\n"


def test_an_application_with_its_own_logging_gets_each_message_once() -> None:
    code = (
        "import logging\n"
        "logging.basicConfig(format='APP %(name)s %(levelname)s %(message)s')\n"
        "from medvol.logs import get_logger\n"
        "log = get_logger('medvol.engine.train')\n"
        "log.info('epoch 1/1')\n"
        "log.warning('stale')\n"
        "logging.getLogger('medvol').setLevel(logging.WARNING)\n"
        "log.info('silenced')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == "APP medvol.engine.train INFO epoch 1/1\nAPP medvol.engine.train WARNING stale\n"


PROGRESS_SCRIPT = """
import time
from medvol.logs import console, get_logger, track
with console():
    for _ in track(range(6), "predict", "scan", get_logger("medvol.prediction"), total=6):
        time.sleep(0.05)
"""


def test_progress_without_a_terminal_is_plain_lines_with_rate_and_time_left(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvol.logs

    monkeypatch.setattr(medvol.logs, "PLAIN_PROGRESS_INTERVAL_S", 0.0)
    with console():
        for _ in medvol.logs.track([1, 2, 3, 4], "evaluate", "case", get_logger("medvol.evaluation")):
            pass
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("evaluate: 1/4 cases (25%), ") and "cases/s" in lines[0]
    assert lines[0].endswith(" left")  # an estimate while work remains
    assert lines[-1].startswith("evaluate: 4/4 cases (100%), ") and "left" not in lines[-1]
    monkeypatch.setattr(medvol.logs, "PLAIN_PROGRESS_INTERVAL_S", 3600.0)
    with console():
        for _ in medvol.logs.track(range(50), "plan", "case", get_logger("medvol.data"), total=50):
            pass
    (only,) = capsys.readouterr().out.splitlines()  # a fast job: its closing line only
    assert only.startswith("plan: 50/50 cases (100%)")


def test_progress_on_a_terminal_is_a_bar_and_no_plain_lines(tmp_path: object) -> None:
    """Run under a pseudo-terminal (stderr a TTY): tqdm's bar with rate, and nothing on stdout."""
    import os
    import pty

    main, secondary = pty.openpty()
    result = subprocess.run(
        [sys.executable, "-c", PROGRESS_SCRIPT], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=secondary, timeout=120,
    )  # fmt: skip
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        terminal += chunk
    os.close(main)
    assert result.returncode == 0 and result.stdout == b""
    shown = terminal.decode(errors="replace")
    assert "predict" in shown and "6/6" in shown and "scan/s" in shown, shown
    assert "\r" in shown  # redrawn in place
