"""Finding the cases of a dataset: which files are one case, in every layout medvol reads.

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
- a folder per class (clips): ``root/<class>/...`` where the class folders
  hold video files (``medvol.io.discovery.VIDEO_SUFFIXES``) or DICOM clip
  files (``.dcm``, a multi-frame cine or ultrasound loop), searched
  recursively; each file is a case named by its file name, its class the
  folder's (:func:`class_folders`);
- any other folder: every DICOM image series below it is a case, named
  ``dicom-<hash>`` by a stable hash of its series UID (never by patient
  data); its label is the DICOM SEG or mask series paired with it by the
  rule of ``medvol.data.dicom_pairs`` (series without one are unlabelled
  cases, for indexing and prediction);
- a CSV manifest with a column ``image`` (or ``image_0000``, ``image_0001`` ...
  for channels, or ``images`` with channels joined by ``;`` as ``medvol index``
  writes it), and optionally ``case_id``, ``label`` (a label-map path),
  ``class`` (a classification target), ``patient_id``, ``series`` (which
  DICOM series of an image folder), ``label_series`` (which DICOM series
  of a label folder is the mask) and ``volume`` (which volume of a DICOM
  series of several, e.g. an echo: its number, or ``all`` for every volume as
  a channel); a column ``clip`` stands for ``image`` in a manifest of
  clips, whose ``label`` is then the class (a clip has no label map);
  relative paths are relative to the CSV
  file (``medvol index`` writes them relative to the manifest's own folder,
  so a manifest written anywhere reads back as the same cases).

Pairing problems (an image without a label, two candidates for one case, an
unsafe id) are findings, never guesses; ``medvol.data.cases.validate`` then
checks every case's files.
"""

from __future__ import annotations

import re
from pathlib import Path

from medvol.data.case import SAFE_CASE_ID, Case, Finding, valid_volume
from medvol.data.dicom_pairs import DicomPairing, pair_series
from medvol.errors import MedvolError
from medvol.io.atomic import full_suffix
from medvol.io.discovery import DICOM_SUFFIXES, SCAN_FILE_SUFFIXES, VIDEO_SUFFIXES, dicom_case_id, list_files

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
CHANNEL_COLUMN = re.compile(r"^image_\d{4}$")

#: Endings of a label map's file name (before the format suffix, any case) in the pairs layout:
#: ``_label`` (pyradiomics' ``brain1_label.nrrd``), ``_labels``, ``-label`` (3D Slicer's label
#: maps), ``_labelmap`` (Slicer), ``_seg`` (BraTS), ``_segmentation`` (PROMISE12), ``_mask``.
LABEL_SUFFIXES = ("_label", "_labels", "-label", "_labelmap", "_seg", "_segmentation", "_mask")
#: Endings of an image's file name in the pairs layout (``brain1_image.nrrd``); none at all is an image too.
IMAGE_SUFFIXES = ("_image", "-image", "_img")
ID_PLACEHOLDER = "{id}"


def discover(
    root: str | Path, pair: tuple[str, str] | None = None, dicom_pairing: DicomPairing | None = None
) -> tuple[str, list[Case], list[Finding]]:
    """Find the cases under ``root`` and pair images with labels by case id.

    Args:
        root: a dataset folder or a ``.csv`` manifest.
        pair: image and label file patterns relative to ``root``, each holding
            ``{id}`` (e.g. ``("{id}_t1.nii.gz", "{id}_roi.nii.gz")``); given,
            they decide the pairs whatever the folder's layout.
        dicom_pairing: how mask series are told from image series in a folder
            of DICOM series (``medvol.data.dicom_pairs``; default: by their
            SeriesDescription).

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
    elif class_folders(root):
        return ("classes", *discover_class_folders(root))
    else:
        return ("dicom", *discover_dicom(root, dicom_pairing or DicomPairing()))
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


def discover_dicom(root: Path, pairing: DicomPairing | None = None) -> tuple[list[Case], list[Finding]]:
    """Each DICOM image series below ``root`` as a case, labelled by its paired mask, if any.

    Masks (DICOM SEG files and mask series) are paired with image series by
    ``medvol.data.dicom_pairs.pair_series``. Case ids hash the image series'
    UID (``medvol.io.discovery.dicom_case_id``), so they do not depend on the
    folder given and carry no patient data; a copy of a series in another
    folder is reported as a duplicate, and a UID whose folders hold different
    slices as a warning. An unreadable DICOM file makes every series in its
    folder unusable (its slice may belong to any of them).

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
    pairs, unlabelled, findings = pair_series(series, skipped, pairing or DicomPairing())
    corrupt_folders = {Path(s.path).parent for s in skipped if s.corrupt}
    for item in skipped:
        if item.corrupt:
            findings.append(Finding("unreadable", "error", None, item.path, item.reason))
    findings += [
        Finding("series_in_several_folders", "warning", None, None, m)
        for m in series_in_several_folders(series)
    ]
    labelled = [(pair.image, pair.label, pair.label_series) for pair in pairs]
    cases: dict[str, Case] = {}
    for image, label, label_series in [*labelled, *((s, None, None) for s in unlabelled)]:
        case_id = dicom_case_id(image.key)
        if case_id in cases:
            first = cases[case_id].images[0]
            message = f"another copy of the series in {first}"
            findings.append(Finding("duplicate", "error", case_id, str(image.folder), message))
            continue
        cases[case_id] = Case(case_id, (image.folder,), label, series=image.key, label_series=label_series)
        unreadable = {image.folder, *(() if label is None else (label if label_series else label.parent,))}
        if unreadable & corrupt_folders:
            message = "an unreadable DICOM file is in the folder of this series or its mask"
            findings.append(Finding("unreadable", "error", case_id, str(image.folder), message))
        if label is None:
            message = "no label (DICOM series without a DICOM SEG or mask series)"
            findings.append(Finding("image_without_label", "error", case_id, str(image.folder), message))
    return sorted(cases.values(), key=lambda c: c.case_id), findings


def _clip_files(folder: Path) -> list[Path]:
    """The video and ``.dcm`` files below ``folder`` (recursively, hidden names skipped), sorted."""
    return [path for path in list_files(folder) if full_suffix(path) in VIDEO_SUFFIXES + DICOM_SUFFIXES]


def class_folders(root: Path) -> list[str]:
    """The class folder names of a folder-per-class layout of clips, sorted; ``[]`` when ``root`` is not one.

    It is one when ``root`` holds no scan file of its own, and each of its (at
    least two) subfolders holds a video file, or a DICOM file whose first
    one is a clip (a multi-frame file whose frames follow in time) rather than
    a slice of a series. Only the folder structure tells classes apart, so a
    folder of DICOM clip files kept in one subfolder per patient reads as a
    folder per class too (``medvol index`` names the classes it found in
    ``class_names``); list such clips in a manifest instead.
    """
    from medvol.io.dicom_headers import SliceHeader, read_header

    if _scan_files(root):
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        return []
    for folder in folders:
        files = _clip_files(folder)
        if any(full_suffix(path) in VIDEO_SUFFIXES for path in files):
            continue
        header = read_header(files[0]) if files else None
        if not (isinstance(header, SliceHeader) and header.is_clip):
            return []
    return [folder.name for folder in folders]


def class_targets(names: list[str]) -> dict[str, str]:
    """Class folder name → class index (text): the names themselves when all are integers
    (``0/``, ``1/``), else their position in sorted order (``abnormal/`` 0, ``normal/`` 1)."""
    if all(name.isdigit() for name in names):
        return {name: str(int(name)) for name in names}
    return {name: str(index) for index, name in enumerate(sorted(names))}


def discover_class_folders(root: Path) -> tuple[list[Case], list[Finding]]:
    """One case per clip file below each class folder (:func:`class_folders`), named by its file name.

    Two files of one name (in two class folders, or two subfolders) are a
    ``duplicate_case`` error for all but the first: rename them, or list the
    clips in a manifest with a ``case_id`` column.
    """
    findings: list[Finding] = []
    cases: dict[str, Case] = {}
    targets = class_targets(class_folders(root))
    for name, target in targets.items():
        for path in _clip_files(root / name):
            case_id = _file_stem(path)
            if not SAFE_CASE_ID.match(case_id):
                message = (
                    f"case id {case_id!r} must use only letters, digits, '.', '_' and '-'; rename the file"
                )
                findings.append(Finding("unsafe_case_id", "error", None, str(path), message))
            elif case_id in cases:
                message = f"another clip is named {case_id}: {cases[case_id].images[0]}"
                findings.append(Finding("duplicate_case", "error", case_id, str(path), message))
            else:
                cases[case_id] = Case(case_id, (path,), None, target)
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
    image_columns = sorted(c for c in columns if c in ("image", "images", "clip") or CHANNEL_COLUMN.match(c))
    clips = "clip" in image_columns
    if not image_columns:
        raise MedvolError(
            path, f"no 'image' (or 'clip') column in the manifest (columns: {columns or 'none'})"
        )
    if ("images" in image_columns or clips) and len(image_columns) > 1:
        raise MedvolError(
            path, f"use one of 'images', 'clip' or 'image'/'image_NNNN' columns, not several: {columns}"
        )
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
        label = _manifest_path(path, row["label"]) if row.get("label") and not clips else None
        target = (row.get("class") or (row.get("label") if clips else None) or "").strip() or None
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
        label_series = (row.get("label_series") or "").strip() or None
        volume = (row.get("volume") or "").strip().lower() or None
        if volume is not None and not valid_volume(volume):
            message = f"row {number}: volume {volume!r} is not a volume number (1, 2, ...) or 'all'"
            findings.append(Finding("bad_volume", "error", case_id, str(path), message, number))
        cases.append(Case(case_id, images, label, target, patient_id, series, label_series, volume))
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
