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
