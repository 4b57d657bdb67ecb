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
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

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


PLAIN_PROGRESS_INTERVAL_S = 30.0
"""Without a terminal (a log file, CI), a progress line at most this often, and one at the end."""


class Progress:
    """Progress of a long job over ``total`` items: a bar on a terminal, plain lines elsewhere.

    On a terminal (stderr is a TTY) it is a tqdm bar with rate and time left.
    Elsewhere it logs ``desc: 40/120 cases (33%), 2.1 cases/s, 38 s left``
    through ``logger`` (``INFO``: stdout for the command line) at most every
    :data:`PLAIN_PROGRESS_INTERVAL_S` seconds, and once when it is closed.
    ``enabled=False`` shows nothing; ``None`` (default) decides by the terminal.
    ``unit="B"`` counts bytes and shows them as kB, MB, GB.
    Use as a context manager, calling :meth:`update` per finished item.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        logger: logging.Logger,
        enabled: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.logger = total, desc, unit, logger
        self.done = 0
        self.notes: dict[str, object] = {}
        self.started = self.last_line = time.monotonic()
        terminal = sys.stderr.isatty()
        self.bar: Any = None
        self.plain = enabled is not False and not terminal
        if enabled is not False and terminal:
            from tqdm import tqdm

            columns, lines = _terminal_size()
            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit == "B",
                file=sys.stderr,
                ncols=columns,
                nrows=lines,
                leave=False,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        """``count`` more items are finished."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.plain and time.monotonic() - self.last_line >= PLAIN_PROGRESS_INTERVAL_S:
            self._line()

    def note(self, **fields: object) -> None:
        """Show ``fields`` beside the count (``failed=2``): the bar's postfix, or the end of plain lines."""
        self.notes.update(fields)
        if self.bar is not None:
            self.bar.set_postfix(self.notes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.plain:
            self._line()
            self.plain = False

    def _line(self) -> None:
        self.last_line = time.monotonic()
        elapsed = max(self.last_line - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = ""
        if 0 < self.done < self.total:
            left = f", {_duration((self.total - self.done) / rate)} left"
        left += "".join(f", {key} {value}" for key, value in self.notes.items())
        if self.unit == "B":
            done, total, speed = _bytes(self.done), _bytes(self.total), f"{_bytes(rate)}/s"
        else:
            done, total, speed = str(self.done), f"{self.total} {self.unit}s", f"{rate:.3g} {self.unit}s/s"
        count = f"{done}/{total}" if self.total else done  # a total of 0: not known
        self.logger.info("%s: %s%s, %s%s", self.desc, count, share, speed, left)


def _bytes(count: float) -> str:
    """``512 B``, ``3.4 MB``, ``1.2 GB`` (powers of 1000, as tqdm's bar)."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} GB"


def _terminal_size() -> tuple[int, int]:
    """stderr's terminal (columns, lines); 80×24 where it reports none (a pseudo-terminal without
    a size, where tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def track(
    items: Iterable[T],
    desc: str,
    unit: str,
    logger: logging.Logger,
    total: int | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Iterate over ``items`` showing :class:`Progress`, one step per item (``total``: ``len(items)``)."""
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    with Progress(count, desc, unit, logger, enabled) as progress:
        for item in items:
            yield item
            progress.update()
