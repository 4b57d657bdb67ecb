"""Atomic file writes: a killed process never leaves a half-written output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    temporary = path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
