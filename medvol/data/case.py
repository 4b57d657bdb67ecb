"""One case of a dataset (``Case``) and one problem found with it (``Finding``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]

SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Case:
    """One case: image channel files, and a label map or a class target.

    ``case_id`` names every output written for the case, so it is restricted
    to letters, digits, ``.``, ``_`` and ``-`` (no path can hide in it).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    target: str | None = None
    patient_id: str | None = None
    series: str | None = None  # which DICOM series of ``images[0]`` (a folder), when it holds several
    label_series: str | None = None  # which DICOM series of ``label`` (a folder) is the mask
    # which volume of a DICOM series of several (echoes, time points...): its number as listed,
    # or "all" for every volume as a channel; None: the series must hold one volume
    volume: str | None = None

    @property
    def annotated(self) -> bool:
        """True when the case has something to learn from (label map or class)."""
        return self.label is not None or self.target is not None


@dataclass(frozen=True)
class Finding:
    """One problem found in a folder; ``error`` makes its case unusable.

    ``row`` is the manifest row it is about (1 = the first row after the
    header), for findings on a CSV manifest's rows.
    """

    kind: str
    severity: Severity
    case_id: str | None
    path: str | None
    message: str
    row: int | None = None


def valid_volume(value: str) -> bool:
    """Whether ``value`` names a volume of a series: a number from 1, or ``all``."""
    return value == "all" or (value.isdigit() and int(value) >= 1)


#: Kinds of the findings on manifest rows that become no case (an unsafe or a repeated case id).
SKIPPED_ROW_KINDS = ("unsafe_case_id", "duplicate_case")
