"""What ``medvol predict`` writes: label maps and probabilities, DICOM SEG, CSV tables.

Every file is written atomically (a temporary file, then a rename), so a
killed run leaves no half-written output and a rerun resumes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel
    from medvol.prediction.discovery import Scan

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
    try:
        seg = hd.seg.Segmentation(
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
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise MedvolError(scan.path, f"cannot write DICOM SEG ({error})") from error
    with atomic_path(path) as temporary:
        seg.save_as(temporary)
