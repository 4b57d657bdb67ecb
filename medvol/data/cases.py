"""Validation of a dataset: every case checked, every problem a finding, a manifest written.

``validate(root)`` finds the cases (``medvol.data.layouts``), reads every
file, and records each problem with its case, file, severity and a sentence;
it never stops at the first one. A case with an ``error`` finding is unusable
and training skips it. ``write_manifest`` writes what ``medvol index`` prints.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from medvol.data.case import SAFE_CASE_ID, SKIPPED_ROW_KINDS, Case, Finding, Severity
from medvol.data.check_cache import CaseCheck, CheckCache, Stat, file_stats
from medvol.data.dicom_pairs import DicomPairing
from medvol.data.layouts import discover, discover_dicom, read_manifest
from medvol.data.loading import load_files, load_label, on_image_grid
from medvol.errors import GeometryError, MedvolError
from medvol.io import load
from medvol.io.atomic import atomic_path
from medvol.logs import get_logger, track
from medvol.volume import Volume

__all__ = [
    "SAFE_CASE_ID",
    "Case",
    "Finding",
    "IndexReport",
    "Severity",
    "declared_classes",
    "discover",
    "discover_dicom",
    "load_case",
    "load_images",
    "read_manifest",
    "validate",
    "write_manifest",
]

logger = get_logger(__name__)


@dataclass
class IndexReport:
    """Cases found in a folder, what is wrong with them, and which are usable."""

    root: Path
    layout: str
    cases: list[Case]
    findings: list[Finding] = field(default_factory=list)
    #: case id → content digest of its images, for every checked, readable case
    digests: dict[str, str] = field(default_factory=dict)
    #: cases outside ``validate``'s ``only`` whose files changed since the last check (never usable)
    unchecked: set[str] = field(default_factory=set)
    #: for the folder-per-class layout of clips: class index (text) → class folder name
    class_names: dict[str, str] | None = None
    checked: int = 0  # cases whose files were read
    reused: int = 0  # cases whose stored check was reused

    @property
    def unusable_ids(self) -> set[str]:
        return {f.case_id for f in self.findings if f.severity == "error" and f.case_id is not None}

    @property
    def usable(self) -> list[Case]:
        """Cases with images and a label or class, and no error finding."""
        bad = self.unusable_ids | self.unchecked
        return [c for c in self.cases if c.case_id not in bad and c.images and c.annotated]

    @property
    def skipped_rows(self) -> list[Finding]:
        """One finding per manifest row that became no case (unsafe or repeated case id)."""
        return [f for f in self.findings if f.row is not None and f.kind in SKIPPED_ROW_KINDS]

    def summary(self) -> dict[str, object]:
        kinds = Counter(f.kind for f in self.findings)
        return {
            "root": str(self.root),
            "layout": self.layout,
            "cases": len(self.cases),
            "usable_pairs": len(self.usable),
            "unusable": sorted(self.unusable_ids),
            "findings_by_kind": dict(sorted(kinds.items())),
            **({"class_names": self.class_names} if self.class_names else {}),
        }

    def to_json(self) -> dict[str, object]:
        return {**self.summary(), "findings": [asdict(f) for f in self.findings]}


def declared_classes(root: Path) -> list[int] | None:
    """Label values declared in an MSD/nnU-Net ``dataset.json``, if there is one."""
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text())["labels"]
    except (OSError, ValueError, KeyError) as error:
        raise MedvolError(path, f"cannot read the 'labels' of dataset.json ({error})") from error
    # MSD writes {"0": "background", ...}; nnU-Net v2 writes {"background": 0, ...}.
    msd_style = all(str(key).isdigit() for key in labels)
    return sorted(int(value) for value in (labels.keys() if msd_style else labels.values()))


def validate(
    root: str | Path,
    classes: list[int] | None = None,
    pair: tuple[str, str] | None = None,
    dicom_pairing: DicomPairing | None = None,
    *,
    only: Collection[str] | None = None,
    recheck: bool = False,
    store: bool = True,
    progress: bool | None = None,
    volume: str | None = None,
    min_frames: int | None = None,
) -> IndexReport:
    """Discover and check every case: readability, grids, label values, dtypes, duplicates; for
    clips (``meta["axes"] == "XYT"``) too few frames and mixed frame sizes.

    A case whose files kept their size and modification time since the last
    check is not read again: its stored check is reused
    (``medvol.data.check_cache``).

    Args:
        root: the dataset folder or manifest.
        classes: allowed label values; default from ``dataset.json``. Without
            either, a label map holding values that most label maps of the
            dataset do not hold is reported (``unusual_label_values``).
        pair: image and label file patterns with ``{id}`` (see ``discover``).
        dicom_pairing: how mask series are told from image series in DICOM
            folders (see ``medvol.data.dicom_pairs``).
        only: check only these case ids (e.g. the cases a split uses); another
            case whose files changed since the last check is not checked: it is
            ``unchecked`` (never usable), and its images are hashed only when
            their sizes equal a checked case's, to find duplicates.
        recheck: read every file, ignoring the stored checks.
        store: store the checks for the next time.
        progress: show progress over the cases (``medvol.logs.Progress``;
            ``None``: a bar on a terminal, plain lines elsewhere).
        volume: for every case whose images are DICOM, which volume of a series
            of several to read (``Case.volume``: a number, or ``"all"`` as channels).
        min_frames: the fewest frames a clip must have (``data.clip``'s span:
            ``(frames - 1) × stride + 1``); a shorter clip is a ``too_short`` error.
    """
    root = Path(root)
    layout, cases, findings = discover(root, pair, dicom_pairing)
    if volume is not None:
        cases = [replace(case, volume=volume) if _dicom_without_volume(case) else case for case in cases]
    classes = classes if classes is not None else declared_classes(root)
    report = IndexReport(root=root, layout=layout, cases=cases, findings=findings)
    if layout == "classes":
        from medvol.data.layouts import class_folders, class_targets

        report.class_names = {index: name for name, index in class_targets(class_folders(root)).items()}
    stored = CheckCache(root, {"classes": classes})
    if not recheck:
        stored.load()
    checks: dict[str, CaseCheck] = {}
    for case in track(cases, "index", "case", logger, enabled=progress):
        if not (case.images and case.annotated):
            continue
        stats = file_stats(case)
        check = stored.fresh(case, stats)
        if check is not None:
            report.reused += 1
        elif only is None or case.case_id in only:
            check = _check_case(case, classes, stats)
            report.checked += 1
        else:
            report.unchecked.add(case.case_id)
            continue
        checks[case.case_id] = check
    found = {case.case_id for case in cases}
    report.findings += [
        _gone(case_id, stored.stored[case_id]) for case_id in sorted(stored.stored.keys() - found)
    ]
    report.digests = {case_id: check.digest for case_id, check in checks.items() if check.digest is not None}
    known = {**report.digests, **_digests_of_same_sizes(cases, report.unchecked, checks)}
    report.findings += _dataset_findings(cases, checks, known, classes)
    report.findings += clip_findings(cases, checks, min_frames, layout == "classes")
    if store and (report.checked or set(stored.stored) != set(checks)):
        stored.save(checks)
    logger.debug(
        "%s: %d case(s) checked, %d unchanged since the last check (%s)",
        root,
        report.checked,
        report.reused,
        stored.path,
    )
    return report


def _gone(case_id: str, record: dict[str, object]) -> Finding:
    """A warning for a case checked last time whose files are no longer found."""
    files = record.get("files")
    path = str(files[0][0]) if isinstance(files, list) and files else None
    return Finding("gone", "warning", case_id, path, "checked before, but its files are no longer found")


def _digests_of_same_sizes(cases: list[Case], ids: set[str], checks: dict[str, CaseCheck]) -> dict[str, str]:
    """Content digests of the cases ``ids`` (not checked) whose image sizes equal a checked case's.

    Equal content needs equal sizes, so only those can duplicate a checked case.
    """
    if not ids:
        return {}
    by_id = {case.case_id: case for case in cases}
    sizes = {_image_sizes(by_id[case_id]) for case_id in checks}
    digests = {}
    for case in cases:
        if case.case_id in ids and _image_sizes(case) in sizes:
            try:
                digests[case.case_id] = content_digest(case)
            except (MedvolError, OSError):
                continue
    return digests


def _image_sizes(case: Case) -> tuple[int, ...] | None:
    """The sizes of the case's image files (every file below a folder); ``None`` when one is missing."""
    stats = file_stats(Case(case.case_id, case.images, None, series=case.series))
    return None if stats is None else tuple(size for _, size, _ in stats)


def _dataset_findings(
    cases: list[Case], checks: dict[str, CaseCheck], digests: dict[str, str], classes: list[int] | None
) -> list[Finding]:
    """Each case's findings in case order, with what only all cases tell: duplicates, dtype mix,
    unusual label values.

    Args:
        digests: case id → content digest of the checked cases and of the unchecked cases
            hashed to find duplicates.
    """
    findings: list[Finding] = []
    image_dtypes: Counter[str] = Counter()
    content_owner: dict[str, str] = {}
    label_values: dict[str, tuple[Path, set[int]]] = {}
    for case in cases:
        digest, check = digests.get(case.case_id), checks.get(case.case_id)
        if digest is not None and digest in content_owner and check is not None:
            findings.append(
                Finding(
                    "duplicate_case",
                    "error",
                    case.case_id,
                    str(case.images[0]),
                    f"same image content as case {content_owner[digest]}",
                )
            )
        if digest is not None:
            content_owner.setdefault(digest, case.case_id)
        if check is None:
            continue
        image_dtypes.update(check.dtypes)
        findings += check.findings
        if check.label_values is not None and case.label is not None:
            label_values[case.case_id] = (case.label, set(check.label_values))
    if len(image_dtypes) > 1:
        counts = ", ".join(f"{n} {dtype}" for dtype, n in sorted(image_dtypes.items()))
        findings.append(
            Finding("dtype_mix", "warning", None, None, f"images are stored in several dtypes: {counts}")
        )
    if classes is None:
        findings += unusual_label_values(label_values)
    return findings


def clip_findings(
    cases: list[Case], checks: dict[str, CaseCheck], min_frames: int | None, clips_only: bool
) -> list[Finding]:
    """What only clips have: too few frames (an error, with ``min_frames``), frame sizes that differ
    between clips (a warning: they are resized or cropped to one), and in a folder-per-class layout
    (``clips_only``) a file that is not a clip (an error)."""
    findings = []
    sizes: Counter[tuple[int, int]] = Counter()
    for case in cases:
        check = checks.get(case.case_id)
        if check is None or not check.shapes:
            continue
        if check.frames is None:
            if clips_only and not any(f.severity == "error" for f in check.findings):
                message = "not a clip (no frames in time): a folder per class holds video or DICOM clip files"
                findings.append(Finding("not_a_clip", "error", case.case_id, str(case.images[0]), message))
            continue
        sizes[(check.shapes[0][1], check.shapes[0][2])] += 1
        if min_frames is not None and check.frames < min_frames:
            message = (
                f"{check.frames} frame(s), fewer than the {min_frames} one clip needs (data.clip's span)"
            )
            findings.append(Finding("too_short", "error", case.case_id, str(case.images[0]), message))
    if len(sizes) > 1:
        counts = ", ".join(f"{n} of {x}×{y}" for (x, y), n in sizes.most_common())
        message = f"clips have {len(sizes)} frame sizes (X×Y pixels): {counts}"
        findings.append(Finding("mixed_frame_sizes", "warning", None, None, message))
    return findings


def unusual_label_values(label_values: dict[str, tuple[Path, set[int]]]) -> list[Finding]:
    """A warning for each label map holding values that most label maps do not hold.

    The usual values are those held by more than half of the label maps (at
    least two maps are needed to compare); a foreign mask, an instance map
    (``0..9`` among ``0, 1`` masks) or an image put among the labels shows up
    as values outside them. A class present in a minority of cases shows up
    too: declaring the classes (``--classes`` or ``dataset.json``) replaces
    this check by the strict one.

    Args:
        label_values: case id -> (label file, the integer values its map holds).
    """
    if len(label_values) < 2:
        return []
    held = Counter(value for _, values in label_values.values() for value in values)
    usual = sorted(value for value, count in held.items() if count * 2 > len(label_values))
    findings = []
    for case_id, (path, values) in label_values.items():
        unusual = sorted(values - set(usual))
        if unusual:
            shown = ", ".join(map(str, unusual[:10])) + (
                f", ... ({len(unusual)} values)" if len(unusual) > 10 else ""
            )
            findings.append(
                Finding(
                    "unusual_label_values",
                    "warning",
                    case_id,
                    str(path),
                    f"label values [{shown}] are held by few label maps; most of the {len(label_values)} "
                    f"hold only {usual} (if they are classes, say so with --classes)",
                )
            )
    return findings


def _check_case(case: Case, classes: list[int] | None, stats: list[Stat] | None) -> CaseCheck:
    """Check one case's files (``stats``: their sizes and times, taken before reading them)."""
    findings: list[Finding] = []
    series = [case.series, case.label_series]
    check = CaseCheck(
        stats or [],
        series,
        digest=None,
        dtypes=[],
        shapes=[],
        label_values=None,
        findings=findings,
        volume=case.volume,
    )
    try:
        images = [load(path, series=case.series, volume=case.volume) for path in case.images]
        label = None if case.label is None else load_label(case.label, case.label_series, images[0])
    except MedvolError as error:
        findings.append(Finding("unreadable", "error", case.case_id, str(error.path), error.problem))
        return check
    for image in images:
        check.dtypes.append(str(image.array.dtype))
        check.shapes.append(list(image.array.shape))
    if images[0].meta.get("axes") == "XYT":
        check.frames = int(images[0].array.shape[3])
    try:
        check.digest = content_digest(case)
    except (MedvolError, OSError) as error:
        where = error.path if isinstance(error, MedvolError) else case.images[0]
        findings.append(Finding("unreadable", "error", case.case_id, str(where), str(error)))
        return check
    others = images[1:] if label is None else [*images[1:], label]
    for other in others:
        try:
            placed = on_image_grid(images[0], other, "label" if other is label else "channel")
        except GeometryError as error:
            findings.append(Finding("grid_mismatch", "error", case.case_id, str(error.path), error.problem))
            return check
        if "reoriented_from" in placed.meta:
            message = (
                f"stored {placed.meta['reoriented_from']}, read onto the image's {images[0].orientation} grid"
            )
            source = str(other.meta.get("source_path"))
            findings.append(Finding("reoriented", "warning", case.case_id, source, message))
    if label is not None and case.label is not None:
        values = _check_label_values(case.case_id, case.label, label, classes, findings)
        if values is not None:
            check.label_values = sorted(values)
    return check


def content_digest(case: Case) -> str:
    """SHA-256 naming the content of a case's images; equal digests are duplicate cases.

    A file counts by its bytes. A DICOM folder counts by the bytes of the files
    of the case's series only (another series in the same folder is another
    case), each file hashed on its own and the file digests sorted, so a copy
    of a series under other file names is still found. File bytes rather than
    SOPInstanceUIDs: they were just read by ``load`` and hash faster than
    pydicom parses the UID from every header (20-slice CT series:
    3 ms JPEG 2000, 7 ms uncompressed, against 15 ms for the UIDs), and
    equal bytes are the same image whatever the UIDs say. The chosen volume
    (``Case.volume``) counts too.

    Raises:
        MedvolError: a DICOM folder whose series cannot be found again.
    """
    digest = hashlib.sha256()
    for path in case.images:
        if path.is_dir():
            from medvol.io.dicom import scan_folder, select_series

            found, skipped = scan_folder(path)
            chosen = select_series(path, found, skipped, case.series)
            files = sorted(hashlib.sha256(Path(h.path).read_bytes()).hexdigest() for h in chosen.headers)
            digest.update(("dicom:" + ",".join(files)).encode())
        else:
            digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
        digest.update(b";")
    if case.volume is not None:  # two volumes of one series (echo 1, echo 2) are not duplicates
        digest.update(f"volume:{case.volume}".encode())
    return digest.hexdigest()


def _check_label_values(
    case_id: str, label_path: Path, label: Volume, classes: list[int] | None, findings: list[Finding]
) -> set[int] | None:
    """Check a label map's values; returns them when they are all integers."""
    values = np.unique(label.array)
    if label.array.dtype.kind == "f":
        findings.append(
            Finding(
                "float_label",
                "warning",
                case_id,
                str(label_path),
                f"label stored as {label.array.dtype}; values {values.tolist()[:10]}",
            )
        )
    if not np.all(values == np.round(values)):
        findings.append(
            Finding("label_values", "error", case_id, str(label_path), "label has non-integer values")
        )
        return None
    if classes is not None and not set(values.astype(int).tolist()) <= set(classes):
        extra = sorted(set(values.astype(int).tolist()) - set(classes))
        findings.append(
            Finding(
                "label_values",
                "error",
                case_id,
                str(label_path),
                f"label values {extra} are not among the declared classes {classes}",
            )
        )
    return set(values.astype(int).tolist())


def _dicom_without_volume(case: Case) -> bool:
    """Whether ``case``'s images are a DICOM folder or file and no volume is chosen for it yet."""
    from medvol.io.dicom_headers import is_dicom_file

    first = case.images[0] if case.images else None
    return case.volume is None and first is not None and (first.is_dir() or is_dicom_file(first))


def load_case(case: Case) -> tuple[Volume, Volume | None]:
    """The case's channels stacked into one Volume, and its label map (if any); see ``load_files``."""
    return load_files(case.images, case.label, case.series, case.label_series, case.volume)


def load_images(case: Case) -> Volume:
    """The case's channels stacked into one Volume ``(C, X, Y, Z)`` (no label map is read)."""
    return load_files(case.images, None, case.series, volume=case.volume)[0]


MANIFEST_COLUMNS = (
    "case_id",
    "images",
    "label",
    "class",
    "patient_id",
    "series",
    "label_series",
    "volume",
    "usable",
    "problems",
)


def write_manifest(report: IndexReport, path: str | Path) -> Path:
    """Write the cases as CSV (one row per case; channels joined by ``;``), atomically.

    Paths are written relative to the manifest's own folder, as
    ``read_manifest`` reads them (absolute where no relative path exists,
    e.g. another drive), so the manifest reads back as the same cases from
    any working directory.
    """
    import csv

    problems: dict[str, list[str]] = {}
    for finding in report.findings:
        if finding.case_id is not None:
            problems.setdefault(finding.case_id, []).append(f"{finding.severity}: {finding.message}")
    usable = {case.case_id for case in report.usable}
    path = Path(path)
    folder = Path(os.path.realpath(path.parent))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for case in report.cases:
            writer.writerow(
                [
                    case.case_id,
                    ";".join(_relative_to(p, folder) for p in case.images),
                    "" if case.label is None else _relative_to(case.label, folder),
                    case.target or "",
                    case.patient_id or "",
                    case.series or "",
                    case.label_series or "",
                    case.volume or "",
                    int(case.case_id in usable),
                    " | ".join(problems.get(case.case_id, [])),
                ]
            )
    return path


def _relative_to(file: Path, folder: Path) -> str:
    """``file`` as a path relative to ``folder`` (a resolved path), or absolute where there is none.

    The file's own folder is resolved (symbolic links followed) so that ``..``
    steps mean what the operating system makes of them; the file's name is
    kept, so a linked scan keeps its name and suffix.
    """
    absolute = Path(os.path.realpath(file.parent)) / file.name
    try:
        return os.path.relpath(absolute, folder)
    except ValueError:  # another drive (Windows)
        return str(absolute)
