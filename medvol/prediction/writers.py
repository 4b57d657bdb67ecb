"""What ``medvol predict`` writes: label maps and probabilities, DICOM SEG, CSV tables.

Every file is written atomically (a temporary file, then a rename), so a
killed run leaves no half-written output and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path
from medvol.logs import get_logger

if TYPE_CHECKING:
    import pydicom

    from medvol.engine.inference import TrainedModel
    from medvol.prediction.discovery import Scan

logger = get_logger(__name__)

LABEL_SUFFIX = ".seg.nii.gz"
PROBABILITY_SUFFIX = ".prob.nii.gz"
DICOM_SEG_SUFFIX = ".seg.dcm"
DICOM_SEG_SERIES_NUMBER = 9901


def output_paths(scan: Scan, out_dir: Path, probabilities: bool, dicom_seg: bool) -> list[Path]:
    """The files a segmentation run writes for ``scan``; the scan is done when all exist.

    The label map comes first: it is written last, so its presence marks the scan done.
    """
    base = out_dir / scan.name
    paths = [base.with_name(base.name + LABEL_SUFFIX)]
    if probabilities:
        paths.append(base.with_name(base.name + PROBABILITY_SUFFIX))
    if dicom_seg and scan.single_frame_series:
        paths.append(base.with_name(base.name + DICOM_SEG_SUFFIX))
    return paths


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(path: Path, header: Sequence[str]) -> list[list[str]]:
    """The rows of a CSV written by ``write_csv`` with this header (empty when missing or different)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        if next(reader, None) != list(header):
            return []
        return list(reader)


def read_predictions(path: Path, header: Sequence[str]) -> dict[str, list[Any]]:
    """Rows of an earlier ``predictions.csv`` by case id (empty when there is none).

    Raises:
        MedvolError: the file exists with other columns (another model).
    """
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        found = next(reader, None)
        if found != list(header):
            raise MedvolError(
                path, f"has columns {found}, expected {list(header)}; pass --overwrite to redo it"
            )
        return {row[0]: row for row in reader if len(row) == len(header)}


def output_naming(output: str, suffix: str) -> dict[str, str]:
    """How the outputs of a segmenter or classifier (``Task.output``) are named, for ``predict.json``."""
    if output == "classification":
        return {"predictions": f"predictions{suffix}.csv", "errors": f"errors{suffix}.csv"}
    return {
        "label": f"<input path without suffix>{LABEL_SUFFIX}",
        "probabilities": f"<input path without suffix>{PROBABILITY_SUFFIX}",
        "dicom_series": f"<series folder>/dicom-<hash>{LABEL_SUFFIX} (and {DICOM_SEG_SUFFIX})",
        "errors": f"errors{suffix}.csv",
    }


def write_dicom_seg(scan: Scan, label: np.ndarray, trained: TrainedModel, path: Path) -> None:
    """Write a label map ``(X, Y, Z)`` on a DICOM series' grid as a binary DICOM SEG.

    Frame ``k`` of the label (index ``z``) belongs to the ``k``-th slice along
    the slice normal, the order ``medvol.load`` stacks them in; rows and
    columns follow DICOM (``label[:, :, k].T``). One segment per foreground
    class, labelled ``class N`` with the generic code *Tissue*. The SEG copies
    the patient and study modules of its source images, as DICOM requires, so
    it holds the same identifiers as they do (its file name does not).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medvol.io.dicom import stack_geometry
    from medvol.version import __version__

    if scan.series is None:
        raise MedvolError(scan.path, "DICOM SEG is written for DICOM inputs only")
    ordered, _, _ = stack_geometry(scan.series.headers)
    sources = []
    for header in ordered:
        dataset = pydicom.dcmread(header.path, stop_before_pixels=True)
        # Some anonymised exports blank the SOP UIDs in the dataset; the file meta keeps them.
        for keyword, meta_keyword in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not dataset.get(keyword):
                setattr(dataset, keyword, dataset.file_meta.get(meta_keyword))
        sources.append(dataset)
    mask = np.ascontiguousarray(np.asarray(label, dtype=np.uint8).transpose(2, 1, 0))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medvol", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    classes = range(1, trained.num_classes)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=f"class {value}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value in classes
    ]
    # BINARY SEG takes one binary plane per segment: (frames, rows, columns, segments).
    planes = np.stack([mask == value for value in classes], axis=-1)
    values = identifying_values(sources)
    with _identifiers_withheld(scan.case_id, values):
        seg = _segmentation(hd, sources, planes, descriptions, trained)
        with atomic_path(path) as temporary:
            seg.save_as(temporary)


def _segmentation(
    hd: Any, sources: list[Any], planes: np.ndarray, descriptions: list[Any], trained: TrainedModel
) -> Any:
    """highdicom's binary SEG of ``planes`` ``(frames, rows, columns, segments)`` over ``sources``."""
    from medvol.version import __version__

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=planes,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=DICOM_SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medvol",
        manufacturer_model_name=str(trained.config.model.name),
        software_versions=__version__,
        device_serial_number="none",
        series_description="medvol segmentation",
        omit_empty_frames=bool(planes.any()),
    )


IDENTIFYING_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
)
"""Header values that identify a patient besides person names (every PN element is withheld too)."""
WITHHELD = "<withheld>"
_WARNING_LOCK = threading.Lock()  # warnings.catch_warnings is process-wide: one SEG at a time
_capture = threading.local()


def identifying_values(datasets: Iterable[pydicom.Dataset]) -> set[str]:
    """Every person name (and its parts) and identifying value in the datasets' headers."""
    values: set[str] = set()
    for dataset in datasets:
        for element in dataset.iterall():
            if element.VR != "PN" and element.keyword not in IDENTIFYING_KEYWORDS:
                continue
            for value in element.value if element.VM > 1 else [element.value]:
                text = str(value or "").strip()
                values.add(text)
                values.update(re.split(r"[\^=\s,]+", text))
    return {value for value in values if len(value) >= 2}


def withhold(message: str, values: set[str]) -> str:
    """``message`` with every identifying value, and anything quoted, replaced by ``<withheld>``."""
    for value in sorted(values, key=len, reverse=True):
        message = re.sub(re.escape(value), WITHHELD, message, flags=re.IGNORECASE)
    return re.sub(r"\"[^\"]*\"|'[^']*'", f'"{WITHHELD}"', message)


def _gist(message: str) -> str:
    """The first sentence of a library's message."""
    first = re.split(r"(?<=[.!?])\s", message.strip(), maxsplit=1)[0]
    return first.rstrip(".")


class _WithholdFilter(logging.Filter):
    """Rewrites highdicom's and pydicom's log records made while this thread writes a SEG."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = getattr(_capture, "context", None)
        if context is None:
            return True
        case_id, values = context
        record.msg = f"{case_id}: DICOM SEG: {_gist(withhold(record.getMessage(), values))}"
        record.args = ()
        return True


_WITHHOLD_FILTER = _WithholdFilter()


def _library_loggers() -> list[logging.Logger]:
    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in ("highdicom", "pydicom")
    ]
    return [logging.getLogger(name) for name in ("highdicom", "pydicom", *names)]


@contextlib.contextmanager
def _identifiers_withheld(case_id: str, values: set[str]) -> Iterator[None]:
    """Pass highdicom's and pydicom's warnings on as medvol warnings, without identifiers.

    The libraries quote header values in their warnings (a patient name that
    is not in DICOM's ``family^given`` form, ...); medvol logs the first
    sentence of each, naming the series by its ``dicom-<hash>`` id, with every
    identifying value of the source headers and every quoted value replaced
    by ``<withheld>``.
    """
    for library_logger in _library_loggers():
        if _WITHHOLD_FILTER not in library_logger.filters:
            library_logger.addFilter(_WITHHOLD_FILTER)
    caught: list[warnings.WarningMessage] = []
    try:
        with _WARNING_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _capture.context = (case_id, values)
            try:
                yield
            finally:
                _capture.context = None
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        reason = _gist(withhold(str(error), values))
        raise MedvolError(None, f"cannot write DICOM SEG ({reason})") from error
    finally:
        seen: set[str] = set()
        for warning in caught:
            text = _gist(withhold(str(warning.message), values))
            if text not in seen:
                seen.add(text)
                logger.warning("%s: DICOM SEG: %s", case_id, text)
