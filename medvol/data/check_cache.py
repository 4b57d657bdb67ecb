"""What checking a dataset learned, stored so that the next check reads only the files that changed.

``medvol.data.cases.validate`` (``medvol index``, ``medvol train``,
``medvol evaluate``, ...) stores one record per checked case: the size and
modification time (nanoseconds) of every file the check read, the header
facts (dtype, shape), the content digest that finds duplicate cases, the
label values and the case's findings (its verdict). The next check reuses a
record while every one of its files keeps its size and modification time,
and checks the case again otherwise.

Where: one JSON file per dataset root (its resolved path) and checking
options (the label classes), in ``$MEDVOL_CACHE_DIR/checks/`` or else
``$XDG_CACHE_HOME/medvol/checks/`` (``~/.cache/medvol/checks/``), so a
read-only dataset folder is checked once too. A file written by another medvol
version, in another format, or for other options is ignored (and replaced);
one that cannot be read is ignored with a warning. Writes are atomic
(``medvol.io.atomic``): concurrent runs each replace the whole file, so the
last one wins and nothing is ever half written; a record lost that way only
costs one more check of its case.

Limit: a file rewritten in place with the same size and its modification
time set back is not seen as changed; ``medvol index --recheck`` reads every
file again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medvol.data.case import Case, Finding
from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path
from medvol.io.discovery import list_files
from medvol.logs import get_logger
from medvol.version import __version__

logger = get_logger(__name__)

#: Bump when what a record holds or what a check finds changes: older records are then ignored.
CHECK_FORMAT = 2  # 2: clips record their frame count

Stat = tuple[str, int, int]  # absolute path, size in bytes, modification time in ns


@dataclass
class CaseCheck:
    """What checking one case found.

    Attributes:
        files: ``(path, size, mtime_ns)`` of every file read, taken before reading.
        series: the DICOM series read from the image and label folders (``None``: the only one).
        volume: the volume of a DICOM image series of several that was read (``Case.volume``).
        digest: the images' content digest (``content_digest``); ``None`` when unreadable.
        dtypes: the image channels' dtypes.
        shapes: the image channels' shapes ``(C, X, Y, Z)``.
        label_values: the label map's integer values; ``None`` when not read or not integers.
        findings: the case's own findings (duplicates are found across cases, later).
        frames: for a clip (``meta["axes"] == "XYT"``), its number of frames; ``None`` for a scan.
    """

    files: list[Stat]
    series: list[str | None]
    digest: str | None
    dtypes: list[str]
    shapes: list[list[int]]
    label_values: list[int] | None
    findings: list[Finding]
    volume: str | None = None
    frames: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseCheck:
        return cls(
            files=[(str(p), int(s), int(m)) for p, s, m in data["files"]],
            series=list(data["series"]),
            digest=data["digest"],
            dtypes=list(data["dtypes"]),
            shapes=[list(shape) for shape in data["shapes"]],
            label_values=data["label_values"],
            findings=[Finding(**finding) for finding in data["findings"]],
            volume=data.get("volume"),
            frames=data.get("frames"),
        )


def cache_folder() -> Path:
    """``$MEDVOL_CACHE_DIR/checks``, else ``$XDG_CACHE_HOME/medvol/checks`` (default ``~/.cache``)."""
    if os.environ.get("MEDVOL_CACHE_DIR"):
        return Path(os.environ["MEDVOL_CACHE_DIR"]) / "checks"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medvol" / "checks"


def case_files(case: Case) -> list[Path]:
    """The files a check of ``case`` reads: its image and label files, every file below a folder."""
    paths = [*case.images, *([case.label] if case.label is not None else [])]
    return [file for path in paths for file in (list_files(path) if path.is_dir() else [path])]


def file_stats(case: Case) -> list[Stat] | None:
    """``(path, size, mtime_ns)`` of the case's files; ``None`` when one cannot be found."""
    stats = []
    for file in case_files(case):
        try:
            stat = file.stat()
        except OSError:
            return None
        stats.append((os.path.abspath(file), stat.st_size, stat.st_mtime_ns))
    return stats


class CheckCache:
    """The stored checks of one dataset root under one set of options (see the module docstring)."""

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        self.root = os.path.realpath(root)
        self.options = options
        key = json.dumps({"root": self.root, "options": options}, sort_keys=True)
        self.path = cache_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
        self.stored: dict[str, dict[str, Any]] = {}

    def load(self) -> CheckCache:
        """Read the stored records; a file of another version, format, root or options is ignored."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as error:
            logger.warning(
                "ignoring the stored dataset checks %s (%s); checking every case", self.path, error
            )
            return self
        header = {"format": CHECK_FORMAT, "medvol": __version__, "root": self.root, "options": self.options}
        if not isinstance(data, dict) or any(data.get(key) != value for key, value in header.items()):
            logger.debug("the stored dataset checks %s are for another version or options", self.path)
            return self
        cases = data.get("cases")
        self.stored = cases if isinstance(cases, dict) else {}
        return self

    def fresh(self, case: Case, stats: list[Stat] | None) -> CaseCheck | None:
        """The stored check of ``case``: same files and series, each of the same size and mtime."""
        record = self.stored.get(case.case_id)
        if record is None or stats is None:
            return None
        try:
            check = CaseCheck.from_json(record)
        except (KeyError, TypeError, ValueError):
            return None
        same_reading = check.series == [case.series, case.label_series] and check.volume == case.volume
        return check if check.files == stats and same_reading else None

    def save(self, checks: dict[str, CaseCheck]) -> None:
        """Store ``checks`` (case id → check) in place of the records read; a failure only warns."""
        data = {
            "format": CHECK_FORMAT,
            "medvol": __version__,
            "root": self.root,
            "options": self.options,
            "cases": {case_id: check.to_json() for case_id, check in sorted(checks.items())},
        }
        try:
            with atomic_path(self.path) as temporary:
                temporary.write_text(json.dumps(data, separators=(",", ":")))
        except (OSError, MedvolError) as error:
            logger.warning(
                "cannot store the dataset checks in %s (%s); the next start checks every file again",
                self.path,
                error,
            )
