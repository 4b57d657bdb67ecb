"""Pairing DICOM image series with their masks: DICOM SEG objects and mask series.

The rule (documented in docs/training.md, "Images and masks as DICOM"):

1. **A DICOM SEG** is the label of the image series it names in its
   ``ReferencedSeriesSequence``; a SEG that names none is the label of the
   one image series of its study and frame of reference.
2. **A mask series** is an image series whose SeriesDescription matches the
   mask pattern (:data:`MASK_DESCRIPTION`, case-insensitive: ``mask``,
   ``seg``, ``label``, ``roi``; ``medvol index --mask-series REGEX`` sets
   another). It is the label of the one other series of the same study and
   frame of reference that lies on the same grid (same matrix, orientation,
   pixel spacing and slice positions, from the headers).
3. Where several image series qualify (e.g. T1 and FLAIR resampled to one
   grid), ``--image-series REGEX`` says which; without it the pairing is
   refused as ambiguous, never guessed.

Series of a study that holds a pair but are not paired themselves (the other
sequences of a labelled exam) are not cases; one warning per study says how
many were left out. Series of studies without any mask stay unlabelled cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medvol.data.case import Finding
from medvol.errors import MedvolError
from medvol.io.dicom import DicomSeries, SkippedFile
from medvol.io.dicom_seg import SegReference, is_segmentation_sop_class, read_seg_reference

MASK_DESCRIPTION = r"mask|seg|label|roi"
"""Default pattern (``re.search``, case-insensitive) of a mask series' SeriesDescription."""
GRID_POSITION_TOLERANCE_MM = 0.01
"""Header positions of an image and its mask series may differ by decimal-string rounding."""


@dataclass(frozen=True)
class DicomPairing:
    """How masks are told from images in a DICOM folder (regular expressions on SeriesDescription)."""

    mask_series: str = MASK_DESCRIPTION
    image_series: str | None = None


@dataclass(frozen=True)
class DicomPair:
    """An image series and its label: a mask series of a folder, or a DICOM SEG file."""

    image: DicomSeries
    label: Path
    label_series: str | None  # the mask series' key in ``label`` (a folder); None for a SEG file


@dataclass(frozen=True)
class _Frame:
    """Where a series lies: its study and frame of reference (read once per series)."""

    study_uid: str
    frame_of_reference_uid: str


def pair_series(
    series: list[DicomSeries], skipped: list[SkippedFile], pairing: DicomPairing
) -> tuple[list[DicomPair], list[DicomSeries], list[Finding]]:
    """Pair image series with DICOM SEG files and mask series by the module's rule.

    Returns:
        The pairs, the image series left as unlabelled cases (their study has
        no mask), and findings: masks that pair with no image or with several,
        images claimed by several masks, and the series of labelled studies
        that are left out.

    Raises:
        MedvolError: a pattern is not a valid regular expression.
    """
    mask_pattern = _compile(pairing.mask_series, "--mask-series")
    image_pattern = None if pairing.image_series is None else _compile(pairing.image_series, "--image-series")
    segs = [s for s in skipped if not s.corrupt and is_segmentation_sop_class(s.sop_class_uid)]
    masks = [s for s in series if mask_pattern.search(_description(s))]
    images = [s for s in series if s not in masks]
    if not masks and not segs:
        return [], images, []
    frames = {id(s): _frame_of(s) for s in series}
    candidates = [
        s for s in images if image_pattern is None or image_pattern.search(s.first.series_description)
    ]
    findings: list[Finding] = []
    pairs: list[DicomPair] = []
    for seg_file in segs:
        reference = _seg_reference(seg_file, findings)
        if reference is not None:
            chosen = _one_image(
                Path(seg_file.path), _seg_candidates(reference, candidates, frames), "DICOM SEG", findings
            )
            if chosen is not None:
                pairs.append(DicomPair(chosen, Path(seg_file.path), None))
    for mask in masks:
        on_grid = [s for s in candidates if frames[id(s)] == frames[id(mask)] and _same_grid(s, mask)]
        chosen = _one_image(mask.folder, on_grid, f"mask {mask.describe()}", findings)
        if chosen is not None:
            pairs.append(DicomPair(chosen, mask.folder, mask.key))
    pairs = _one_label_each(pairs, findings)
    labelled_studies = {frames[id(p.image)].study_uid for p in pairs}
    paired = {id(p.image) for p in pairs}
    left_out = [s for s in images if id(s) not in paired and frames[id(s)].study_uid in labelled_studies]
    findings += _left_out_findings(left_out)
    unlabelled = [s for s in images if id(s) not in paired and s not in left_out]
    return pairs, unlabelled, findings


def _description(series: DicomSeries) -> str:
    return series.first.series_description


def _compile(pattern: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as error:
        raise MedvolError(None, f"{option} {pattern!r} is not a regular expression ({error})") from error


def _frame_of(series: DicomSeries) -> _Frame:
    """The series' study and frame of reference UIDs, from its first file's header."""
    tags = ["StudyInstanceUID", "FrameOfReferenceUID"]
    ds = pydicom.dcmread(series.first.path, stop_before_pixels=True, specific_tags=tags)
    return _Frame(str(ds.get("StudyInstanceUID", "")), str(ds.get("FrameOfReferenceUID", "")))


def _seg_reference(seg_file: SkippedFile, findings: list[Finding]) -> SegReference | None:
    try:
        return read_seg_reference(seg_file.path)
    except MedvolError as error:
        findings.append(Finding("unreadable", "error", None, seg_file.path, error.problem))
        return None


def _seg_candidates(
    reference: SegReference, candidates: list[DicomSeries], frames: dict[int, _Frame]
) -> list[DicomSeries]:
    """The image series a SEG names; without names, those of its study and frame of reference."""
    if reference.referenced_series_uids:
        named = [s for s in candidates if s.first.series_uid in reference.referenced_series_uids]
        in_own_folder = [s for s in named if s.folder == Path(reference.path).parent]
        return in_own_folder or named
    own = _Frame(reference.study_uid, reference.frame_of_reference_uid)
    return [s for s in candidates if frames[id(s)] == own]


def _one_image(
    label: Path, candidates: list[DicomSeries], what: str, findings: list[Finding]
) -> DicomSeries | None:
    """The one candidate image of a label, or None with a finding saying why not."""
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        message = f"{what}: no image series of its study and frame of reference lies on its grid"
        findings.append(Finding("label_without_image", "error", None, str(label), message))
    else:
        listed = "; ".join(s.describe() for s in candidates)
        message = (
            f"{what}: {len(candidates)} image series qualify ({listed}); "
            "say which with --image-series PATTERN (matched against SeriesDescription)"
        )
        findings.append(Finding("ambiguous_pair", "error", None, str(label), message))
    return None


def _one_label_each(pairs: list[DicomPair], findings: list[Finding]) -> list[DicomPair]:
    """Drop images claimed by several labels, with a finding naming the labels."""
    by_image: dict[int, list[DicomPair]] = {}
    for pair in pairs:
        by_image.setdefault(id(pair.image), []).append(pair)
    kept = []
    for claims in by_image.values():
        if len(claims) == 1:
            kept.append(claims[0])
            continue
        labels = ", ".join(str(c.label) + (f" ({c.label_series})" if c.label_series else "") for c in claims)
        message = f"{len(claims)} labels for {claims[0].image.describe()}: {labels}; keep one"
        findings.append(Finding("ambiguous_pair", "error", None, str(claims[0].image.folder), message))
    return kept


def _left_out_findings(left_out: list[DicomSeries]) -> list[Finding]:
    """One warning per folder: the unpaired series of labelled studies are not cases."""
    by_folder: dict[Path, list[DicomSeries]] = {}
    for item in left_out:
        by_folder.setdefault(item.folder, []).append(item)
    return [
        Finding(
            "series_left_out",
            "warning",
            None,
            str(folder),
            f"{len(items)} other series of a study with a mask are not cases (no mask of their own): "
            + "; ".join(s.describe() for s in items),
        )
        for folder, items in sorted(by_folder.items())
    ]


def _same_grid(image: DicomSeries, mask: DicomSeries) -> bool:
    """True when two series' headers describe one voxel grid (matrix, plane, pixel size, positions)."""
    a, b = image.first, mask.first
    if (a.rows, a.columns) != (b.rows, b.columns) or None in (a.orientation, b.orientation):
        return False
    if not np.allclose(a.orientation, b.orientation, atol=1e-4):  # type: ignore[arg-type]
        return False
    if a.pixel_spacing is None or b.pixel_spacing is None:
        return False
    if not np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=1e-4):
        return False
    positions_a, positions_b = _positions(image), _positions(mask)
    return positions_a.shape == positions_b.shape and bool(
        np.allclose(positions_a, positions_b, atol=GRID_POSITION_TOLERANCE_MM)
    )


def _positions(series: DicomSeries) -> np.ndarray:
    """Every slice (or frame) position of a series ``(N, 3)`` mm, sorted."""
    points = [
        position
        for header in series.headers
        for position in (header.frame_positions or (header.position,))
        if position is not None
    ]
    return np.array(sorted(points), dtype=np.float64).reshape(-1, 3)
