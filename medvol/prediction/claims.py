"""Sharing one output folder between processes, and cleaning up after killed ones.

Several ``medvol predict`` processes (array jobs, a second terminal) may write
into one ``OUT_DIR`` without ``--shard``: before a scan is loaded its worker
takes a *claim*, a file ``.<output name>.claim`` created exclusively beside
the scan's outputs (``O_CREAT | O_EXCL``, atomic on local and NFSv3+ file
systems). A scan claimed by another live process is left to it. A claim holds
its owner (a hash of the machine's name, the process id, a random token) and
is touched every ``HEARTBEAT_SECONDS`` while held; it is stale when its process
has ended (same machine) or it has not been touched for
``CLAIM_STALE_SECONDS`` (another machine), and a stale claim is taken over.

Files shared by every worker (``errors.csv``, ``predictions.csv``) are
rewritten under a claim of their own, merging what the other workers wrote.

:func:`sweep` removes what killed processes left in ``OUT_DIR``: temporaries
of ``medvol.io.atomic.atomic_path`` (by their exact name pattern) and claims,
each only when its process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medvol.io.atomic import host_tag, is_stale_temporary, owner_gone
from medvol.logs import get_logger

logger = get_logger(__name__)

CLAIM_NAME = re.compile(r"\.(?P<name>.+)\.claim")
"""The name of a claim file (for :func:`sweep`)."""
HEARTBEAT_SECONDS = 30.0
CLAIM_STALE_SECONDS = 300.0
"""A claim of another machine untouched this long (10 missed heartbeats) belongs to a dead process."""
LOCK_WAIT_SECONDS = 0.05


def claim_path(output_base: Path) -> Path:
    """The claim file for outputs named ``output_base`` (``OUT/a/b`` → ``OUT/a/.b.claim``)."""
    return output_base.with_name(f".{output_base.name}.claim")


@dataclass
class Claims:
    """The claims this process holds, kept fresh by a heartbeat thread while in use (``with claims:``)."""

    held: dict[Path, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Claims:
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="medvol-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release_all()

    def take(self, path: Path) -> bool:
        """Claim ``path`` for this process; ``False`` when a live process holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        record = json.dumps({"host": host_tag(), "pid": os.getpid(), "token": token, "since": time.time()})
        for _ in range(3):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not break_stale(path):
                    return False
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            with self._lock:
                self.held[path] = token
            return True
        return False

    def release(self, path: Path) -> None:
        """Give up a claim this process holds (no-op otherwise)."""
        with self._lock:
            token = self.held.pop(path, None)
        if token is not None and _read(path).get("token") == token:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        with self._lock:
            paths = list(self.held)
        for path in paths:
            self.release(path)

    @contextlib.contextmanager
    def exclusive(self, path: Path, timeout: float = 120.0) -> Iterator[None]:
        """Hold the claim ``path`` for the block, waiting while another process holds it."""
        deadline = time.monotonic() + timeout
        while not self.take(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} is held by another process for more than {timeout:.0f} s")
            time.sleep(LOCK_WAIT_SECONDS)
        try:
            yield
        finally:
            self.release(path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                paths = list(self.held)
            for path in paths:
                with contextlib.suppress(OSError):
                    os.utime(path)


def _read(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_stale_claim(path: Path) -> bool:
    """Whether the claim at ``path`` belongs to a process that is gone."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return False
    owner = _read(path)
    host = owner.get("host")
    pid = owner.get("pid")
    if not owner and time.time() - modified < CLAIM_STALE_SECONDS:
        return False  # being written right now
    return owner_gone(
        host if isinstance(host, str) else None,
        pid if isinstance(pid, int) else None,
        modified,
        CLAIM_STALE_SECONDS,
    )


def break_stale(path: Path) -> bool:
    """Remove the claim at ``path`` if its process is gone; ``True`` when it is gone now.

    The claim is renamed away first, so that of several processes breaking it
    at once only one succeeds; a claim renamed by mistake (taken afresh in
    between) is put back.
    """
    seen = _read(path)
    if not is_stale_claim(path):
        return not path.exists()
    moved = path.with_name(f"{path.name}.broken-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return True
    if _read(moved) != seen:
        with contextlib.suppress(OSError):
            os.link(moved, path)  # a live claim taken in between: restore it
        moved.unlink(missing_ok=True)
        return False
    moved.unlink(missing_ok=True)
    return True


@dataclass
class Swept:
    """What :func:`sweep` removed."""

    temporaries: list[Path] = field(default_factory=list)
    claims: list[Path] = field(default_factory=list)


def sweep(out_dir: Path) -> Swept:
    """Remove temporaries and claims left below ``out_dir`` by processes that are gone."""
    swept = Swept()
    if not out_dir.is_dir():
        return swept
    for root, _, names in os.walk(out_dir):
        for name in names:
            path = Path(root) / name
            if is_stale_temporary(path):
                path.unlink(missing_ok=True)
                swept.temporaries.append(path)
            elif CLAIM_NAME.fullmatch(name) and is_stale_claim(path) and break_stale(path):
                swept.claims.append(path)
    return swept
