"""Atomic file writes: a killed process never leaves a half-written output.

A temporary file is named ``.<name>.tmp-<host>-<pid>-<random><suffix>`` beside
its target (``<host>``: 6 hex digits of a hash of the machine's name), so a
later run can tell a leftover of a killed process from a file being written
right now (:func:`is_stale_temporary`) and remove only the former.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medvol.errors import MedvolError
from medvol.logs import get_logger

logger = get_logger(__name__)

TEMPORARY_NAME = re.compile(
    r"\.(?P<stem>.+)\.tmp-(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-)?[0-9a-f]{8}(?P<suffix>.*)"
)
"""The names of ``atomic_path``'s temporaries (host and pid absent in files of medvol 0.1)."""
STALE_AFTER_SECONDS = 3600.0
"""A temporary of another machine (whose processes cannot be checked) is stale when untouched this long."""


def host_tag() -> str:
    """6 hex digits naming this machine (a hash, not the name itself)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def owner_gone(host: str | None, pid: int | None, modified: float, stale_after: float) -> bool:
    """Whether a file owned by process ``pid`` on ``host`` is a leftover.

    On this machine: its process has ended. Elsewhere (or with no owner
    recorded): it has not been modified for ``stale_after`` seconds.
    """
    if host == host_tag() and pid is not None:
        return not process_alive(pid)
    return time.time() - modified > stale_after


def is_stale_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary of ``atomic_path`` left by a process that is gone."""
    match = TEMPORARY_NAME.fullmatch(path.name)
    if match is None:
        return False
    try:
        modified = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    pid = match["pid"]
    return owner_gone(match["host"], None if pid is None else int(pid), modified, STALE_AFTER_SECONDS)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed processes left while writing ``path``; returns them.

    Only files named as ``atomic_path`` names the temporaries of ``path`` are
    considered, and only those whose process is gone (:func:`is_stale_temporary`).
    For a single output (``medvol convert``); a folder of outputs is swept by
    ``medvol.prediction.claims.sweep``.
    """
    path = Path(path)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(stem)}.tmp-*"):
        match = TEMPORARY_NAME.fullmatch(candidate.name)
        if match and match["stem"] == stem and match["suffix"] == suffix and is_stale_temporary(candidate):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        logger.warning(
            "removed %d unfinished temporary file(s) of %s left by a killed run (%s)",
            len(removed),
            path,
            ", ".join(p.name for p in removed),
        )
    return removed


def missing_reason(path: Path) -> str:
    """Why ``path`` cannot be opened, for an error message: missing, a broken or looping link, ..."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link that cannot be followed: a loop of links that leads back to itself"
        if error.errno == errno.ENOENT and os.path.islink(path):
            return f"a broken symbolic link: its target {os.readlink(path)} does not exist"
        if error.errno == errno.EACCES:
            return "permission denied"
        if error.errno == errno.ENOENT:
            return "no such file or folder"
        return os.strerror(error.errno) if error.errno else str(error)
    return "not a regular file or folder"


def full_suffix(path: Path) -> str:
    """The suffix that names a format, ``.nii.gz`` included (lower case)."""
    name = path.name.lower()
    for double in (".nii.gz",):
        if name.endswith(double):
            return double
    return path.suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the format suffix so that writers which choose the
    format by suffix (nibabel, SimpleITK) behave as for the final name. On any
    exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedvolError(
            path, f"cannot create its folder {path.parent} ({missing_reason(path.parent)})"
        ) from error
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    temporary = path.with_name(f".{stem}.tmp-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """NaN and infinities as None, numpy scalars as Python numbers, keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(
    path: str | Path, data: Any, *, allow_nan: bool = True, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``data`` as indented JSON, atomically.

    ``allow_nan=False`` refuses NaN and infinities (strict JSON); ``default``
    converts values ``json`` cannot (e.g. ``str`` for paths).
    """
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=allow_nan, default=default) + "\n")
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
