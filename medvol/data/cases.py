"""Case discovery and validation: a messy folder becomes a manifest of usable cases.

Layouts understood:

- MSD / nnU-Net: ``imagesTr/`` (channels as ``CASE_0000.nii.gz``, ``_0001`` ...),
  ``labelsTr/`` and optionally ``dataset.json`` declaring the label classes;
- flat ``images/`` + ``labels/`` folders with matching file names;
- pairs named by suffix in one folder: ``brain1_image.nrrd`` +
  ``brain1_label.nrrd`` (:data:`LABEL_SUFFIXES`, :data:`IMAGE_SUFFIXES`;
  an image may also carry no suffix, as ``Case00.mhd`` +
  ``Case00_segmentation.mhd``);
- pairs named by patterns the user gives (``--pair '{id}_t1.nii.gz'
  '{id}_roi.nii.gz'``, paths relative to the folder, ``{id}`` the case id);
- any other folder: every DICOM image series below it is an (unlabelled)
  case, named ``dicom-<hash>`` by a stable hash of its series UID
  (never by patient data), for indexing and prediction;
- a CSV manifest with a column ``image`` (or ``image_0000``, ``image_0001`` ...
  for channels, or ``images`` with channels joined by ``;`` as ``medvol index``
  writes it), and optionally ``case_id``, ``label`` (a label-map path),
  ``class`` (a classification target), ``patient_id`` and ``series`` (which
  DICOM series of an image folder); relative paths are relative to the CSV
  file (``medvol index`` writes them relative to the manifest's own folder,
  so a manifest written anywhere reads back as the same cases).

Validation never stops at the first problem: every case is checked and every
finding is recorded with its case, file, severity and a sentence. A case with
an ``error`` finding is unusable and training must skip it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from medvol.data.loading import load_files, on_image_grid
from medvol.errors import GeometryError, MedvolError
from medvol.io import load
from medvol.io.atomic import atomic_path, full_suffix
from medvol.io.discovery import SCAN_FILE_SUFFIXES, dicom_case_id, list_files
from medvol.volume import Volume

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
CHANNEL_COLUMN = re.compile(r"^image_\d{4}$")

Severity = Literal["error", "warning"]


SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: Endings of a label map's file name (before the format suffix, any case) in the pairs layout:
#: ``_label`` (pyradiomics' ``brain1_label.nrrd``), ``_labels``, ``-label`` (3D Slicer's label
#: maps), ``_labelmap`` (Slicer), ``_seg`` (BraTS), ``_segmentation`` (PROMISE12), ``_mask``.
LABEL_SUFFIXES = ("_label", "_labels", "-label", "_labelmap", "_seg", "_segmentation", "_mask")
#: Endings of an image's file name in the pairs layout (``brain1_image.nrrd``); none at all is an image too.
IMAGE_SUFFIXES = ("_image", "-image", "_img")
ID_PLACEHOLDER = "{id}"


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


#: Kinds of the findings on manifest rows that become no case (an unsafe or a repeated case id).
SKIPPED_ROW_KINDS = ("unsafe_case_id", "duplicate_case")


@dataclass
class IndexReport:
    """Cases found in a folder, what is wrong with them, and which are usable."""

    root: Path
    layout: str
    cases: list[Case]
    findings: list[Finding] = field(default_factory=list)

    @property
    def unusable_ids(self) -> set[str]:
        return {f.case_id for f in self.findings if f.severity == "error" and f.case_id is not None}

    @property
    def usable(self) -> list[Case]:
        """Cases with images and a label or class, and no error finding."""
        bad = self.unusable_ids
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
        }

    def to_json(self) -> dict[str, object]:
        return {**self.summary(), "findings": [asdict(f) for f in self.findings]}


def discover(root: str | Path, pair: tuple[str, str] | None = None) -> tuple[str, list[Case], list[Finding]]:
    """Find the cases under ``root`` and pair images with labels by case id.

    Args:
        root: a dataset folder or a ``.csv`` manifest.
        pair: image and label file patterns relative to ``root``, each holding
            ``{id}`` (e.g. ``("{id}_t1.nii.gz", "{id}_roi.nii.gz")``); given,
            they decide the pairs whatever the folder's layout.

    Returns:
        The layout name, the cases (sorted by id) and pairing findings
        (images without labels, labels without images, duplicate ids,
        ambiguous pairs).

    Raises:
        MedvolError: ``root`` is not a folder in a known layout, or a pattern
            has no ``{id}`` or leaves the folder.
    """
    root = Path(root)
    if pair is not None:
        if not root.is_dir():
            raise MedvolError(root, "--pair needs a folder")
        return ("pattern", *discover_pattern(root, *pair))
    if root.is_file() and root.suffix.lower() == ".csv":
        return ("manifest", *read_manifest(root))
    if not root.is_dir():
        raise MedvolError(root, "not a folder or a .csv manifest")
    if (root / "imagesTr").is_dir():
        layout, image_dir, label_dir = "msd", root / "imagesTr", root / "labelsTr"
    elif (root / "images").is_dir():
        layout, image_dir, label_dir = "flat", root / "images", root / "labels"
    elif any(_label_suffix(_file_stem(path)) for path in _scan_files(root)):
        return ("pairs", *discover_suffix_pairs(root))
    else:
        return ("dicom", *discover_dicom(root))
    findings: list[Finding] = []
    images = _files_by_case(image_dir, split_channels=layout == "msd", findings=findings)
    labels = _files_by_case(label_dir, split_channels=False, findings=findings) if label_dir.is_dir() else {}
    cases = []
    for case_id in sorted(set(images) | set(labels)):
        channel_files = tuple(path for _, path in sorted(images.get(case_id, [])))
        label_files = [path for _, path in labels.get(case_id, [])]
        if not channel_files:
            findings.append(
                Finding("label_without_image", "error", case_id, str(label_files[0]), "label has no image")
            )
        if not label_files:
            findings.append(
                Finding("image_without_label", "error", case_id, str(channel_files[0]), "image has no label")
            )
        cases.append(Case(case_id, channel_files, label_files[0] if label_files else None))
    return layout, cases, findings


def _scan_files(folder: Path) -> list[Path]:
    """The scan files directly in ``folder`` (hidden names skipped), sorted.

    A link that leads nowhere is kept: reading it names the problem.
    """
    return [
        path
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and not path.is_dir() and full_suffix(path) in SCAN_FILE_SUFFIXES
    ]


def _ending(stem: str, endings: tuple[str, ...]) -> str | None:
    """The one of ``endings`` that ``stem`` ends with (any case), leaving a case id before it."""
    return next((e for e in endings if stem.lower().endswith(e) and len(stem) > len(e)), None)


def _label_suffix(stem: str) -> str | None:
    return _ending(stem, LABEL_SUFFIXES)


def discover_suffix_pairs(root: Path) -> tuple[list[Case], list[Finding]]:
    """Cases from the scan files of one folder paired by name: ``ID_image.nrrd`` + ``ID_label.nrrd``.

    A file whose name ends in one of :data:`LABEL_SUFFIXES` is the label map of
    case ``ID``; any other scan file is its image, named ``ID`` plus one of
    :data:`IMAGE_SUFFIXES` or nothing. Scan files in subfolders are not read;
    one warning counts them.
    """
    images: dict[str, list[Path]] = {}
    labels: dict[str, list[Path]] = {}
    for path in _scan_files(root):
        stem = _file_stem(path)
        suffix = _label_suffix(stem)
        if suffix is not None:
            labels.setdefault(stem[: -len(suffix)], []).append(path)
            continue
        image_suffix = _ending(stem, IMAGE_SUFFIXES) or ""
        images.setdefault(stem[: len(stem) - len(image_suffix)], []).append(path)
    findings: list[Finding] = []
    below = [
        path
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for path in list_files(folder)
        if full_suffix(path) in SCAN_FILE_SUFFIXES
    ]
    if below:
        findings.append(
            Finding(
                "not_used",
                "warning",
                None,
                str(below[0].parent),
                f"{len(below)} scan file(s) in subfolders are not read: pairs are the folder's own files "
                "(to read them, give --pair with a folder: '{id}/image.nii.gz' '{id}/label.nii.gz')",
            )
        )
    image_hint = f"{ID_PLACEHOLDER} or {ID_PLACEHOLDER} + {_one_of(IMAGE_SUFFIXES)}"
    cases = _pair_cases(images, labels, findings, image_hint, f"{ID_PLACEHOLDER} + {_one_of(LABEL_SUFFIXES)}")
    return cases, findings


def _one_of(endings: tuple[str, ...]) -> str:
    return ", ".join(endings[:-1]) + f" or {endings[-1]}"


def discover_pattern(root: Path, image_pattern: str, label_pattern: str) -> tuple[list[Case], list[Finding]]:
    """Cases from files matching two patterns relative to ``root`` whose ``{id}`` is the case id.

    ``{id}`` may appear several times in one pattern (``{id}/{id}_seg.nii.gz``)
    and stands for the same text each time, never holding a ``/``. A file
    matching the label pattern is never an image. An image may be a folder
    (a DICOM series); a label map is a file.

    Raises:
        MedvolError: a pattern without ``{id}``, absolute, with a ``..`` step,
            or both patterns the same.
    """
    if image_pattern == label_pattern:
        raise MedvolError(root, f"the image and label patterns are the same ({image_pattern!r})")
    label_files = _match_pattern(root, label_pattern, folders=False)
    labelled = {path for paths in label_files.values() for path in paths}
    image_files = {
        case_id: kept
        for case_id, paths in _match_pattern(root, image_pattern, folders=True).items()
        if (kept := [path for path in paths if path not in labelled])
    }
    findings: list[Finding] = []
    for case_id in sorted(set(image_files) | set(label_files)):
        if not SAFE_CASE_ID.match(case_id):
            path = (image_files.get(case_id) or label_files[case_id])[0]
            findings.append(
                Finding(
                    "unsafe_case_id",
                    "error",
                    None,
                    str(path),
                    f"case id {case_id!r} from the pattern must use only letters, digits, '.', '_' and '-'",
                )
            )
            image_files.pop(case_id, None)
            label_files.pop(case_id, None)
    return _pair_cases(image_files, label_files, findings, image_pattern, label_pattern), findings


def _match_pattern(root: Path, pattern: str, folders: bool) -> dict[str, list[Path]]:
    """Files (and ``folders`` if asked) below ``root`` matching ``pattern``, grouped by ``{id}``'s text."""
    import glob

    parts = pattern.split(ID_PLACEHOLDER)
    if len(parts) < 2:
        raise MedvolError(root, f"the pattern {pattern!r} has no {ID_PLACEHOLDER} to name the case")
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise MedvolError(root, f"the pattern {pattern!r} must be a path inside the folder")
    expression = re.compile(
        re.escape(parts[0])
        + "(?P<id>[^/]+)"
        + "".join(re.escape(part) + "(?P=id)" for part in parts[1:-1])
        + re.escape(parts[-1])
    )
    found: dict[str, list[Path]] = {}
    for path in sorted(root.glob("*".join(glob.escape(part) for part in parts))):
        match = expression.fullmatch(path.relative_to(root).as_posix())
        if (
            match
            and (folders or not path.is_dir())
            and not any(p.startswith(".") for p in path.relative_to(root).parts)
        ):
            found.setdefault(match["id"], []).append(path)
    return found


def _pair_cases(
    images: dict[str, list[Path]],
    labels: dict[str, list[Path]],
    findings: list[Finding],
    image_hint: str,
    label_hint: str,
) -> list[Case]:
    """One case per id with exactly one image and one label file; every other id becomes a finding.

    ``image_hint`` and ``label_hint`` say what name was looked for, with
    ``{id}`` standing for the case id.
    """
    cases = []
    for case_id in sorted(set(images) | set(labels)):
        image_files, label_files = images.get(case_id, []), labels.get(case_id, [])
        for what, files in (("images", image_files), ("label maps", label_files)):
            if len(files) > 1:
                names = ", ".join(path.name for path in files)
                findings.append(
                    Finding(
                        "ambiguous_pair",
                        "error",
                        case_id,
                        str(files[0]),
                        f"{len(files)} {what} for case {case_id}: {names}; rename all but one, "
                        "or give --pair IMAGE_PATTERN LABEL_PATTERN",
                    )
                )
        if not image_files:
            message = f"label has no image (none named {image_hint.replace(ID_PLACEHOLDER, case_id)})"
            findings.append(Finding("label_without_image", "error", case_id, str(label_files[0]), message))
        if not label_files:
            message = f"image has no label (none named {label_hint.replace(ID_PLACEHOLDER, case_id)})"
            findings.append(Finding("image_without_label", "error", case_id, str(image_files[0]), message))
        image = tuple(image_files) if len(image_files) == 1 else ()
        label = label_files[0] if len(label_files) == 1 else None
        cases.append(Case(case_id, image, label))
    return cases


def discover_dicom(root: Path) -> tuple[list[Case], list[Finding]]:
    """Each DICOM image series below ``root`` as an unlabelled case.

    Case ids hash the series UID (``medvol.io.discovery.dicom_case_id``), so
    they do not depend on the folder given and carry no patient data; a copy
    of a series in another folder is reported as a duplicate, and a UID whose
    folders hold different slices as a warning. An unreadable DICOM file makes
    every series in its folder unusable (its slice may belong to any of them).

    Raises:
        MedvolError: nothing below ``root`` is a DICOM image.
    """
    from medvol.io.dicom import scan_folder, series_in_several_folders

    series, skipped = scan_folder(root, collect_errors=True)
    if not series:
        raise MedvolError(
            root,
            "unknown layout: no DICOM series, no imagesTr/ + labelsTr/ (MSD, nnU-Net), no images/ + labels/, "
            "no ID_image + ID_label files (for other names, give --pair IMAGE_PATTERN LABEL_PATTERN)",
        )
    findings: list[Finding] = []
    corrupt_folders = {Path(s.path).parent for s in skipped if s.corrupt}
    for item in skipped:
        if item.corrupt:
            findings.append(Finding("unreadable", "error", None, item.path, item.reason))
    findings += [
        Finding("series_in_several_folders", "warning", None, None, m)
        for m in series_in_several_folders(series)
    ]
    cases: dict[str, Case] = {}
    for found in series:
        folder = Path(found.first.path).parent
        case_id = dicom_case_id(found.key)
        if case_id in cases:
            first = cases[case_id].images[0]
            findings.append(
                Finding("duplicate", "error", case_id, str(folder), f"another copy of the series in {first}")
            )
            continue
        cases[case_id] = Case(case_id, (folder,), None, series=found.key)
        if folder in corrupt_folders:
            findings.append(
                Finding(
                    "unreadable", "error", case_id, str(folder), "an unreadable DICOM file is in this folder"
                )
            )
        findings.append(
            Finding("image_without_label", "error", case_id, str(folder), "no label (DICOM series)")
        )
    return sorted(cases.values(), key=lambda c: c.case_id), findings


def read_manifest(path: Path) -> tuple[list[Case], list[Finding]]:
    """Cases from a CSV manifest (see the module docstring for its columns).

    Raises:
        MedvolError: the CSV cannot be read or has no image column.
    """
    import csv

    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
            columns = list(rows[0]) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MedvolError(path, f"cannot read the CSV manifest ({error})") from error
    image_columns = sorted(c for c in columns if c in ("image", "images") or CHANNEL_COLUMN.match(c))
    if not image_columns:
        raise MedvolError(path, f"no 'image' column in the manifest (columns: {columns or 'none'})")
    if "images" in image_columns and len(image_columns) > 1:
        raise MedvolError(path, f"use either 'images' or 'image'/'image_NNNN' columns, not both: {columns}")
    findings: list[Finding] = []
    cases: list[Case] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        values = [part for c in image_columns for part in (row.get(c) or "").split(";") if part.strip()]
        images = tuple(_manifest_path(path, value) for value in values)
        case_id = (row.get("case_id") or "").strip() or (_file_stem(images[0]) if images else f"row{number}")
        if not SAFE_CASE_ID.match(case_id):
            findings.append(
                Finding(
                    "unsafe_case_id",
                    "error",
                    None,
                    str(path),
                    f"row {number}: case id {case_id!r} must use only letters, digits, '.', '_' and '-'",
                    row=number,
                )
            )
            continue
        if case_id in seen:
            findings.append(
                Finding(
                    "duplicate_case",
                    "error",
                    case_id,
                    str(path),
                    f"row {number} repeats case {case_id}",
                    row=number,
                )
            )
            continue
        seen.add(case_id)
        label = _manifest_path(path, row["label"]) if row.get("label") else None
        target = (row.get("class") or "").strip() or None
        if not images:
            findings.append(
                Finding("missing_image", "error", case_id, str(path), f"row {number} has no image", number)
            )
        elif label is None and target is None:
            findings.append(
                Finding(
                    "image_without_label", "error", case_id, str(images[0]), "no label and no class", number
                )
            )
        patient_id = (row.get("patient_id") or "").strip() or None
        series = (row.get("series") or "").strip() or None
        cases.append(Case(case_id, images, label, target, patient_id, series))
    return cases, findings


def _manifest_path(manifest: Path, value: str) -> Path:
    candidate = Path(value.strip())
    return candidate if candidate.is_absolute() else manifest.parent / candidate


def _file_stem(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _files_by_case(
    folder: Path, split_channels: bool, findings: list[Finding]
) -> dict[str, list[tuple[int, Path]]]:
    """Image files of a folder grouped by case id, with their channel number."""
    by_case: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        suffix = full_suffix(path)
        if path.name.startswith(".") or suffix not in SCAN_FILE_SUFFIXES:
            continue
        stem = _file_stem(path)
        channel = 0
        match = CHANNEL_SUFFIX.match(stem) if split_channels else None
        if match:
            stem, channel = match["case"], int(match["channel"])
        entries = by_case.setdefault(stem, [])
        if any(existing == channel for existing, _ in entries):
            findings.append(
                Finding(
                    "duplicate_case",
                    "error",
                    stem,
                    str(path),
                    f"two files for case {stem} channel {channel} in {folder.name}/",
                )
            )
            continue
        entries.append((channel, path))
    return by_case


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
    root: str | Path, classes: list[int] | None = None, pair: tuple[str, str] | None = None
) -> IndexReport:
    """Discover and check every case: readability, grids, label values, dtypes, duplicates.

    Args:
        root: the dataset folder or manifest.
        classes: allowed label values; default from ``dataset.json``. Without
            either, a label map holding values that most label maps of the
            dataset do not hold is reported (``unusual_label_values``).
        pair: image and label file patterns with ``{id}`` (see ``discover``).
    """
    root = Path(root)
    layout, cases, findings = discover(root, pair)
    classes = classes if classes is not None else declared_classes(root)
    report = IndexReport(root=root, layout=layout, cases=cases, findings=findings)
    image_dtypes: Counter[str] = Counter()
    content_owner: dict[str, str] = {}
    label_values: dict[str, tuple[Path, set[int]]] = {}
    for case in cases:
        if case.images and case.annotated:
            _check_case(case, classes, report.findings, image_dtypes, content_owner, label_values)
    if len(image_dtypes) > 1:
        counts = ", ".join(f"{n} {dtype}" for dtype, n in sorted(image_dtypes.items()))
        report.findings.append(
            Finding("dtype_mix", "warning", None, None, f"images are stored in several dtypes: {counts}")
        )
    if classes is None:
        report.findings += unusual_label_values(label_values)
    return report


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


def _check_case(
    case: Case,
    classes: list[int] | None,
    findings: list[Finding],
    image_dtypes: Counter[str],
    content_owner: dict[str, str],
    label_values: dict[str, tuple[Path, set[int]]],
) -> None:
    """Check one case; its label map's values go to ``label_values`` when they are integers."""
    try:
        images = [load(path, series=case.series) for path in case.images]
        label = None if case.label is None else load(case.label)
    except MedvolError as error:
        findings.append(Finding("unreadable", "error", case.case_id, str(error.path), error.problem))
        return
    for image in images:
        image_dtypes[str(image.array.dtype)] += 1
    try:
        digest = content_digest(case)
    except (MedvolError, OSError) as error:
        where = error.path if isinstance(error, MedvolError) else case.images[0]
        findings.append(Finding("unreadable", "error", case.case_id, str(where), str(error)))
        return
    if digest in content_owner:
        findings.append(
            Finding(
                "duplicate_case",
                "error",
                case.case_id,
                str(case.images[0]),
                f"same image content as case {content_owner[digest]}",
            )
        )
    content_owner.setdefault(digest, case.case_id)
    others = images[1:] if label is None else [*images[1:], label]
    for other in others:
        try:
            placed = on_image_grid(images[0], other, "label" if other is label else "channel")
        except GeometryError as error:
            findings.append(Finding("grid_mismatch", "error", case.case_id, str(error.path), error.problem))
            return
        if "reoriented_from" in placed.meta:
            message = (
                f"stored {placed.meta['reoriented_from']}, read onto the image's {images[0].orientation} grid"
            )
            source = str(other.meta.get("source_path"))
            findings.append(Finding("reoriented", "warning", case.case_id, source, message))
    if label is not None and case.label is not None:
        values = _check_label_values(case.case_id, case.label, label, classes, findings)
        if values is not None:
            label_values[case.case_id] = (case.label, values)


def content_digest(case: Case) -> str:
    """SHA-256 naming the content of a case's images; equal digests are duplicate cases.

    A file counts by its bytes. A DICOM folder counts by the bytes of the files
    of the case's series only (another series in the same folder is another
    case), each file hashed on its own and the file digests sorted, so a copy
    of a series under other file names is still found. File bytes rather than
    SOPInstanceUIDs: they were just read by ``load`` and hash faster than
    pydicom parses the UID from every header (20-slice CT series:
    3 ms JPEG 2000, 7 ms uncompressed, against 15 ms for the UIDs), and
    equal bytes are the same image whatever the UIDs say.

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


def load_case(case: Case) -> tuple[Volume, Volume | None]:
    """The case's channels stacked into one Volume, and its label map (if any); see ``load_files``."""
    return load_files(case.images, case.label, case.series)


def load_images(case: Case) -> Volume:
    """The case's channels stacked into one Volume ``(C, X, Y, Z)`` (no label map is read)."""
    return load_files(case.images, None, case.series)[0]


MANIFEST_COLUMNS = ("case_id", "images", "label", "class", "patient_id", "series", "usable", "problems")


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
