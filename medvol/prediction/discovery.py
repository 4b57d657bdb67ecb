"""What ``medvol predict`` finds below its input folder: scans, and inputs that already failed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medvol.errors import MedvolError
from medvol.io.atomic import full_suffix, missing_reason

if TYPE_CHECKING:
    from medvol.io.dicom import DicomSeries


@dataclass(frozen=True)
class Scan:
    """One input scan.

    Attributes:
        case_id: the file's relative path without its suffix (``a/b``), or
            ``dicom-<hash>`` for a DICOM series (as ``medvol index`` names it).
        relative: the input's path relative to ``IN_DIR`` (POSIX separators);
            a DICOM series' folder.
        name: the outputs' path relative to ``OUT_DIR``, without suffix.
        path: the file, or the folder of the series' first file.
        series: the DICOM series (headers only), ``None`` for files.
    """

    case_id: str
    relative: str
    name: str
    path: Path
    series: DicomSeries | None = None

    @property
    def is_dicom(self) -> bool:
        return self.series is not None

    @property
    def single_frame_series(self) -> bool:
        """A stack of single-frame slices (what DICOM SEG output supports)."""
        return self.series is not None and all(h.frames == 1 and not h.is_mosaic for h in self.series.headers)


@dataclass(frozen=True)
class Failure:
    """An input that produced no (or not every) output, and why."""

    case_id: str
    relative: str
    reason: str


@dataclass
class Found:
    """What ``find_scans`` saw below ``IN_DIR``."""

    scans: list[Scan]
    failures: list[Failure]
    ignored: int  # files that are neither scans nor DICOM images (text, DICOMDIR, SR, ...)


def find_scans(in_dir: Path, exclude: Path | None = None) -> Found:
    """Find every scan below ``in_dir`` from names and DICOM headers (no pixels read).

    Files named ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` are
    scans; every other file is checked for a DICOM header and DICOM images are
    grouped into series (as ``medvol.io.dicom.scan_folder`` does, over the whole
    tree). Corrupt or truncated DICOM files, and files named ``.dcm`` that are
    not DICOM, are failures; a series in a folder holding a corrupt DICOM file
    is a failure too (the file may be one of its slices). Other files (text,
    DICOMDIR, structured reports, ``.raw`` data of ``.mhd`` headers) are ignored.
    Symbolic links that lead nowhere (broken, or a loop) are failures.

    Raises:
        MedvolError: ``in_dir`` is missing, not a folder, or holds no files.
    """
    from medvol.io.dicom import group_series, scan_headers
    from medvol.io.dicom_headers import SkippedFile, SliceHeader
    from medvol.io.discovery import DICOM_SUFFIXES, SCAN_FILE_SUFFIXES, dicom_case_id, list_files
    from medvol.io.sidecar import sidecar_path

    if not in_dir.exists():
        raise MedvolError(in_dir, "input folder not found")
    if not in_dir.is_dir():
        raise MedvolError(in_dir, "not a folder: give the folder that holds the scans")
    unreadable: list[Path] = []
    files = list_files(in_dir, exclude, unreadable)
    failures: list[Failure] = [
        Failure("", path.relative_to(in_dir).as_posix(), missing_reason(path)) for path in unreadable
    ]
    if not files and not failures:
        raise MedvolError(in_dir, "empty input folder: no files to predict on")
    scans: list[Scan] = []
    candidates: list[Path] = []
    ignored = 0
    sidecars = {sidecar_path(path) for path in files if full_suffix(path) in SCAN_FILE_SUFFIXES}
    for path in files:
        suffix = full_suffix(path)
        if path in sidecars:
            continue  # a scan's own sidecar (medvol.io.sidecar): read with the scan
        if suffix in SCAN_FILE_SUFFIXES:
            relative = path.relative_to(in_dir).as_posix()
            stem = relative[: len(relative) - len(suffix)]
            scans.append(Scan(stem, relative, stem, path))
        elif suffix not in DICOM_SUFFIXES and path.stat().st_size == 0:
            ignored += 1
        else:
            candidates.append(path)
    results = scan_headers(candidates, collect_errors=True)
    corrupt: dict[Path, str] = {}
    for item in results:
        if not isinstance(item, SkippedFile):
            continue
        path = Path(item.path)
        relative = path.relative_to(in_dir).as_posix()
        if item.corrupt:
            failures.append(Failure("", relative, item.reason))
            corrupt.setdefault(path.parent, path.name)
        elif full_suffix(path) in DICOM_SUFFIXES and "no DICM preamble" in item.reason:
            failures.append(Failure("", relative, f"named like a DICOM file but {item.reason}"))
        else:
            ignored += 1
    for series in group_series(r for r in results if isinstance(r, SliceHeader)):
        folder = Path(series.first.path).parent
        case_id = dicom_case_id(series.key)
        relative = folder.relative_to(in_dir).as_posix()
        name = case_id if relative == "." else f"{relative}/{case_id}"
        if folder in corrupt:
            reason = (
                f"not predicted: the unreadable DICOM file {corrupt[folder]} in this folder may be "
                "one of this series' slices; repair or remove it"
            )
            failures.append(Failure(case_id, relative, reason))
        else:
            scans.append(Scan(case_id, relative, name, folder, series))
    return Found(*_unique_names(scans, failures), ignored)


def _unique_names(scans: list[Scan], failures: list[Failure]) -> tuple[list[Scan], list[Failure]]:
    """Scans sorted by output name; a second input mapping to a taken name is a failure."""
    owners: dict[str, Scan] = {}
    for scan in sorted(scans, key=lambda s: (s.name, s.relative)):
        if scan.name in owners:
            other = owners[scan.name].relative
            failures.append(
                Failure(scan.case_id, scan.relative, f"its outputs would overwrite those of {other}")
            )
        else:
            owners[scan.name] = scan
    return list(owners.values()), failures
