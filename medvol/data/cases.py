"""Case discovery and validation: a messy folder becomes a manifest of usable cases.

Layouts understood:

- MSD / nnU-Net: ``imagesTr/`` (channels as ``CASE_0000.nii.gz``, ``_0001`` ...),
  ``labelsTr/`` and optionally ``dataset.json`` declaring the label classes;
- flat ``images/`` + ``labels/`` folders with matching file names.

Validation never stops at the first problem: every case is checked and every
finding is recorded with its case, file, severity and a sentence. A case with
an ``error`` finding is unusable and training must skip it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from medvol.errors import MedvolError
from medvol.io import load
from medvol.io.atomic import atomic_path, full_suffix
from medvol.volume import Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
GRID_TOLERANCE_MM = 1e-3

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Case:
    """One training case: image channel files and an optional label map."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class Finding:
    """One problem found in a folder; ``error`` makes its case unusable."""

    kind: str
    severity: Severity
    case_id: str | None
    path: str | None
    message: str


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
        """Cases with an image and a label and no error finding."""
        bad = self.unusable_ids
        return [c for c in self.cases if c.case_id not in bad and c.images and c.label is not None]

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


def discover(root: str | Path) -> tuple[str, list[Case], list[Finding]]:
    """Find the cases under ``root`` and pair images with labels by case id.

    Returns:
        The layout name, the cases (sorted by id) and pairing findings
        (images without labels, labels without images, duplicate ids).

    Raises:
        MedvolError: ``root`` is not a folder in a known layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedvolError(root, "not a folder")
    if (root / "imagesTr").is_dir():
        layout, image_dir, label_dir = "msd", root / "imagesTr", root / "labelsTr"
    elif (root / "images").is_dir():
        layout, image_dir, label_dir = "flat", root / "images", root / "labels"
    else:
        raise MedvolError(
            root, "unknown layout: expected imagesTr/ + labelsTr/ (MSD, nnU-Net) or images/ + labels/"
        )
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


def _files_by_case(
    folder: Path, split_channels: bool, findings: list[Finding]
) -> dict[str, list[tuple[int, Path]]]:
    """Image files of a folder grouped by case id, with their channel number."""
    by_case: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        suffix = full_suffix(path)
        if path.name.startswith(".") or suffix not in IMAGE_SUFFIXES:
            continue
        stem = path.name[: -len(suffix)]
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


def validate(root: str | Path, classes: list[int] | None = None) -> IndexReport:
    """Discover and check every case: readability, grids, label values, dtypes, duplicates.

    Args:
        root: the dataset folder.
        classes: allowed label values; default from ``dataset.json``, else
            only integrality is checked.
    """
    root = Path(root)
    layout, cases, findings = discover(root)
    classes = classes if classes is not None else declared_classes(root)
    report = IndexReport(root=root, layout=layout, cases=cases, findings=findings)
    image_dtypes: Counter[str] = Counter()
    content_owner: dict[str, str] = {}
    for case in cases:
        if case.images and case.label is not None:
            _check_pair(case, case.label, classes, report.findings, image_dtypes, content_owner)
    if len(image_dtypes) > 1:
        counts = ", ".join(f"{n} {dtype}" for dtype, n in sorted(image_dtypes.items()))
        report.findings.append(
            Finding("dtype_mix", "warning", None, None, f"images are stored in several dtypes: {counts}")
        )
    return report


def _check_pair(
    case: Case,
    label_path: Path,
    classes: list[int] | None,
    findings: list[Finding],
    image_dtypes: Counter[str],
    content_owner: dict[str, str],
) -> None:
    try:
        images = [load(path) for path in case.images]
        label = load(label_path)
    except MedvolError as error:
        findings.append(Finding("unreadable", "error", case.case_id, str(error.path), error.problem))
        return
    for image in images:
        image_dtypes[str(image.array.dtype)] += 1
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in case.images)).hexdigest()
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
    for image in [*images[1:], label]:
        problem = _grid_difference(images[0], image)
        if problem:
            findings.append(
                Finding("grid_mismatch", "error", case.case_id, image.meta["source_path"], problem)
            )
            return
    values = np.unique(label.array)
    if label.array.dtype.kind == "f":
        findings.append(
            Finding(
                "float_label",
                "warning",
                case.case_id,
                str(label_path),
                f"label stored as {label.array.dtype}; values {values.tolist()[:10]}",
            )
        )
    if not np.all(values == np.round(values)):
        findings.append(
            Finding("label_values", "error", case.case_id, str(label_path), "label has non-integer values")
        )
    elif classes is not None and not set(values.astype(int).tolist()) <= set(classes):
        extra = sorted(set(values.astype(int).tolist()) - set(classes))
        findings.append(
            Finding(
                "label_values",
                "error",
                case.case_id,
                str(label_path),
                f"label values {extra} are not among the declared classes {classes}",
            )
        )


def _grid_difference(reference: Volume, other: Volume) -> str | None:
    """A sentence saying how two volumes' grids differ, or None when they agree."""
    if reference.shape != other.shape:
        return f"shape {list(other.shape)} differs from the image's {list(reference.shape)}"
    corners = np.array([[0, 0, 0], [s - 1 for s in reference.shape]])
    distance = np.abs(reference.world_coordinates(corners) - other.world_coordinates(corners)).max()
    if distance > GRID_TOLERANCE_MM:
        return f"affine differs from the image's by up to {distance:.3f} mm"
    return None


MANIFEST_COLUMNS = ("case_id", "images", "label", "usable", "problems")


def write_manifest(report: IndexReport, path: str | Path) -> Path:
    """Write the cases as CSV (one row per case; channels joined by ``;``), atomically."""
    import csv

    problems: dict[str, list[str]] = {}
    for finding in report.findings:
        if finding.case_id is not None:
            problems.setdefault(finding.case_id, []).append(f"{finding.severity}: {finding.message}")
    usable = {case.case_id for case in report.usable}
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for case in report.cases:
            writer.writerow(
                [
                    case.case_id,
                    ";".join(str(p) for p in case.images),
                    "" if case.label is None else str(case.label),
                    int(case.case_id in usable),
                    " | ".join(problems.get(case.case_id, [])),
                ]
            )
    return path
