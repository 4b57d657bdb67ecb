"""What medvol's messages look like, and where they go: decided here only.

Library code never prints: it logs to ``logging.getLogger(__name__)`` (a
child of the ``medvol`` logger) through :func:`get_logger`. Progress and
results (the precision line, one line per epoch, notes) are ``INFO``;
problems are ``WARNING`` or ``ERROR``. They reach a person in one of three
ways:

- **The command line.** ``medvol.cli.main`` wraps each command in
  :func:`console`: ``INFO`` messages from medvol go to stdout as plain text
  (``epoch 3/10  loss 0.51 ...``), anything at ``WARNING`` and above to stderr
  as ``medvol: warning: ...``; ``--debug`` adds ``DEBUG`` messages (to
  stderr, as ``medvol: debug: ...``).
- **A notebook or script that configures no logging.** It sees the same:
  medvol's ``INFO`` lines on stdout and ``medvol: warning: ...`` on stderr,
  because a user who calls ``train(config)`` expects to watch it train. This
  fallback speaks only while no other handler would receive the message (none
  on the root logger, none on ``medvol`` or below).
- **An application that configures logging** (``logging.basicConfig`` or its
  own handlers): medvol's messages go to those handlers only. The ``medvol``
  logger's level is ``INFO`` unless the application sets another, so
  ``logging.getLogger("medvol").setLevel(logging.WARNING)`` silences the
  progress lines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

ROOT = "medvol"


class _Console(logging.Handler):
    """Writes to the *current* ``sys.stdout`` or ``sys.stderr`` (so redirection and capture work).

    A broken pipe (``medvol ... | head``) propagates, for the CLI to end quietly.
    """

    def __init__(self, to_stderr: bool) -> None:
        super().__init__()
        self.to_stderr = to_stderr

    def stream(self) -> TextIO:
        return sys.stderr if self.to_stderr else sys.stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream()
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:
            raise
        except Exception:
            self.handleError(record)


class _Prefixed(logging.Formatter):
    """``medvol: warning: MESSAGE`` (the level in lower case)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"medvol: {record.levelname.lower()}: {super().format(record)}"


def _is_progress(record: logging.LogRecord) -> bool:
    """medvol's own ``INFO`` messages: the ones shown on stdout without a prefix."""
    return record.levelno == logging.INFO and (record.name == ROOT or record.name.startswith(ROOT + "."))


def _console_handlers() -> list[logging.Handler]:
    stdout = _Console(to_stderr=False)
    stdout.addFilter(_is_progress)
    stdout.setFormatter(logging.Formatter("%(message)s"))
    stderr = _Console(to_stderr=True)
    stderr.addFilter(lambda record: not _is_progress(record))
    stderr.setFormatter(_Prefixed("%(message)s"))
    return [stdout, stderr]


class _Fallback(logging.Handler):
    """The two console handlers, for a program that configured no logging."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers = _console_handlers()

    def emit(self, record: logging.LogRecord) -> None:
        if _configured_elsewhere(record, self):
            return
        for handler in self.handlers:
            handler.handle(record)


def _configured_elsewhere(record: logging.LogRecord, fallback: logging.Handler) -> bool:
    """Whether a handler other than ``fallback`` receives ``record`` (the logger chain up to root)."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(handler is not fallback for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def _install_fallback() -> None:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, _Fallback) for handler in logger.handlers):
        logger.addHandler(_Fallback())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` for a medvol module, with the fallback output in place."""
    _install_fallback()
    return logging.getLogger(name)


@contextlib.contextmanager
def console(debug: bool = False) -> Iterator[None]:
    """Show log messages as the ``medvol`` command does, for the duration of the block.

    medvol's ``INFO`` messages go to stdout unprefixed; warnings and errors
    (from medvol or any library) to stderr as ``medvol: warning: ...``; with
    ``debug``, debug messages too. The previous handlers and levels come back
    afterwards, so a nested command (``medvol demo`` runs the others) or a
    test leaves logging as it found it.
    """
    root, medvol = logging.getLogger(), logging.getLogger(ROOT)
    saved_handlers, saved_levels = list(root.handlers), (root.level, medvol.level)
    installed = _console_handlers()
    for handler in saved_handlers:
        if isinstance(handler, _Console):
            root.removeHandler(handler)  # an outer command's console: this one replaces it
    for handler in installed:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    medvol.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        yield
    finally:
        for handler in installed:
            root.removeHandler(handler)
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_levels[0])
        medvol.setLevel(saved_levels[1])
