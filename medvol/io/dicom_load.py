"""From a DICOM series to ``Volume``s: one, the one chosen, every one, or all as channels.

A series of single-frame files, or one enhanced multi-frame file, is split
into volumes by ``medvol.io.dicom_volumes.split_volumes`` (echoes, time
points, b-values...). Each volume is sorted and placed by
``medvol.io.dicom.stack_geometry``; its pixels come from SimpleITK/GDCM
(single-frame files) or pydicom (multi-frame files). Siemens mosaics are
unpacked with nibabel's CSA-header geometry.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from medvol.errors import SeriesError, UnreadableFileError
from medvol.io.dicom import DicomSeries, read_stack_pixels, scan_folder, select_series, stack_geometry
from medvol.io.dicom_clips import check_pixel_description, clip_source_error, decode_frames, read_clip
from medvol.io.dicom_headers import SkippedFile, SliceHeader, read_header
from medvol.io.dicom_volumes import (
    VolumeGroup,
    choose_volume,
    frame_images,
    mosaic_volumes,
    split_volumes,
    volume_listing,
)
from medvol.io.geometry import lps_to_ras
from medvol.logs import get_logger
from medvol.volume import Volume, grid_difference

logger = get_logger(__name__)

VolumeChoice = int | str | Literal["all"] | None
"""Which volume of a series: its number (1-based, as listed), ``"all"`` (as channels), or ``None``."""

ORIENTATION_TOLERANCE = 1e-4


def load_dicom(path: str | Path, series: str | int | None = None, volume: VolumeChoice = None) -> Volume:
    """Load a DICOM folder (one series, or the one chosen) or a single DICOM file.

    Args:
        volume: for a series holding several volumes, which one (see ``load_series``).

    An unreadable DICOM file in the chosen series' folder is an error (it may be
    one of its slices); one in another folder is skipped with a warning.
    """
    chosen, skipped = _chosen_series(Path(path), series)
    loaded = load_series(chosen, volume=volume)
    _note_source(loaded, Path(path), skipped)
    return loaded


def load_dicom_volumes(path: str | Path, series: str | int | None = None) -> list[Volume]:
    """Every volume of the chosen series (or of one DICOM file), in the documented order."""
    chosen, skipped = _chosen_series(Path(path), series)
    volumes = load_series_volumes(chosen)
    for loaded in volumes:
        _note_source(loaded, Path(path), skipped)
    return volumes


def load_series(series: DicomSeries, volume: VolumeChoice = None) -> Volume:
    """Turn one series into a Volume with exact geometry, or refuse clearly.

    Args:
        volume: a series holding one volume needs no choice; for several
            (echoes, time points...), the number of one as listed, or
            ``"all"`` to stack them as channels ``(C, X, Y, Z)`` (they share a
            grid: every volume holds the same positions).

    Raises:
        SeriesError: several volumes and no choice (the message lists them),
            or a series that cannot be split into volumes.
    """
    groups = series_volumes(series)
    source = _source(series)
    if volume == "all":
        return _as_channels(load_groups(series, groups, len(groups)), source)
    if volume is None:
        if len(groups) > 1:
            raise SeriesError(
                source,
                f"holds {len(groups)} volumes at the same positions; choose one with volume=N "
                f"(--volume N), or stack them as channels with volume='all' (--volume all):\n"
                f"{volume_listing(groups)}",
            )
        return load_groups(series, groups, 1)[0]
    return load_groups(series, [choose_volume(groups, volume, source)], len(groups))[0]


def load_series_volumes(series: DicomSeries) -> list[Volume]:
    """Every volume of one series, in the documented order."""
    groups = series_volumes(series)
    return load_groups(series, groups, len(groups))


def series_volumes(series: DicomSeries) -> list[VolumeGroup]:
    """The volumes a series holds (one for a mosaic), without reading pixels."""
    first = series.first
    for header in series.headers:
        check_pixel_description(header)
    if first.is_clip:
        return [VolumeGroup(number=1, images=(first,), labels=(), suffix="")]
    if first.frames > 1 and first.frame_labels is None:
        raise clip_source_error(first)
    if first.is_mosaic:
        return mosaic_volumes(series.headers)
    images = frame_images(first) if first.frames > 1 else list(series.headers)
    return split_volumes(images, _source(series))


def load_groups(series: DicomSeries, groups: Sequence[VolumeGroup], count: int) -> list[Volume]:
    """Read the pixels and geometry of some of the ``count`` volumes of ``series``."""
    first = series.first
    dataset = _read_dataset(first) if first.frames > 1 or first.is_clip else None
    if dataset is not None and not first.is_clip:
        _check_frame_geometry(first, dataset)
    volumes = []
    for group in groups:
        if first.is_clip:
            assert dataset is not None
            array, affine, notes = read_clip(first, dataset)
        elif first.is_mosaic:
            mosaic = group.images[0]
            array, affine, notes = _read_mosaic(mosaic, _read_dataset(mosaic, decode=True))
        elif dataset is not None:
            array, affine, notes = _read_frames(first, dataset, group.images)
        else:
            ordered, affine, notes = stack_geometry(group.images)
            array = _read_colour_stack(ordered) if first.is_colour else read_stack_pixels(ordered)[np.newaxis]
        if first.is_colour:
            notes.update(colour="RGB", photometric_interpretation=first.photometric)
        meta = _series_meta(series, group.images, affine, array, notes)
        if group.labels:
            meta.update(_volume_meta(group, count))
        image_type = dict(group.labels).get("image_type")
        if isinstance(image_type, str):  # what tells the volumes apart: a frame's FrameType
            meta["image_type"] = image_type.split("\\")
        volumes.append(Volume(array=array, affine=affine, meta=meta))
    return volumes


def _read_colour_stack(ordered: Sequence[SliceHeader]) -> np.ndarray:
    """Sorted single-frame colour slices as ``(3, X, Y, Z)`` R, G, B values."""
    slices = [decode_frames(_read_dataset(header), header)[0] for header in ordered]
    return np.stack(slices).transpose(3, 2, 1, 0)


def _chosen_series(path: Path, series: str | int | None) -> tuple[DicomSeries, list[SkippedFile]]:
    if path.is_dir():
        found, skipped = scan_folder(path, collect_errors=True)
        corrupt = [item for item in skipped if item.corrupt]
        if corrupt and not found:
            raise UnreadableFileError(corrupt[0].path, corrupt[0].reason)
        chosen = select_series(path, found, skipped, series)
        for item in corrupt:
            if Path(item.path).parent == chosen.folder:
                raise UnreadableFileError(item.path, item.reason)
    else:
        header = read_header(path)
        if isinstance(header, SkippedFile):
            raise UnreadableFileError(path, _why_not_a_volume(header))
        chosen, skipped = DicomSeries(key=header.series_uid, headers=(header,)), []
    for item in skipped:
        logger.warning("skipped %s: %s", item.path, item.reason)
    return chosen, skipped


def _why_not_a_volume(skipped: SkippedFile) -> str:
    from medvol.io.dicom_seg import is_segmentation_sop_class

    if is_segmentation_sop_class(skipped.sop_class_uid):
        return (
            "a DICOM SEG holds the label map of an image series, not a volume: give it as that series' "
            "label (a manifest's label column, or beside the series in a dataset folder)"
        )
    return skipped.reason


def _note_source(volume: Volume, path: Path, skipped: Sequence[SkippedFile]) -> None:
    volume.meta["source_path"] = str(path)
    volume.meta["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in skipped]


def _source(series: DicomSeries) -> Path:
    """What errors about a series name: the multi-frame file, the one mosaic, or the folder."""
    first = series.first
    one_file = first.frames > 1 or (first.is_mosaic and len(series.headers) == 1)
    return Path(first.path) if one_file else series.folder


def _series_meta(
    series: DicomSeries,
    images: Sequence[SliceHeader],
    affine: np.ndarray,
    array: np.ndarray,
    notes: dict[str, Any],
) -> dict[str, Any]:
    first = series.first
    return {
        # A mosaic or multi-frame file is a volume on its own: its path is the file.
        "source_path": str(_source(series)),
        "format": "dicom",
        "reader": _reader(first),
        "modality": first.modality or None,
        "series_uid": first.series_uid or None,
        "series_number": first.series_number,
        "series_description": first.series_description,
        "transfer_syntax": first.transfer_syntax,
        **_series_value(images, "patient_position", lambda h: h.patient_position or None),
        **_series_value(images, "image_type", lambda h: list(h.image_type) or None),
        **_series_value(images, "echo_number", lambda h: dict(h.labels).get("echo")),
        **_series_value(images, "echo_time", lambda h: dict(h.labels).get("echo_time")),  # ms
        "source_affine": affine.tolist(),
        "source_shape": list(array.shape[1:]),
        "files": len({image.path for image in images}),
        **notes,
    }


def _reader(first: SliceHeader) -> str:
    """What decoded the pixels: SimpleITK/GDCM for grey single-frame slices, pydicom otherwise
    (nibabel unpacks mosaics from pydicom's pixels)."""
    if first.frames == 1 and not first.is_clip and not first.is_colour and not first.is_mosaic:
        return f"pydicom {pydicom.__version__} headers + SimpleITK {sitk.Version.VersionString()}"
    return f"pydicom {pydicom.__version__}"


def _volume_meta(group: VolumeGroup, count: int) -> dict[str, Any]:
    """Which volume of its series a volume is: ``volume`` (words), number, labels, suffix."""
    return {
        "volume": f"{group.number} of {count}: {group.describe()}",
        "volume_number": group.number,
        "volumes_in_series": count,
        "volume_labels": dict(group.labels),
        "volume_suffix": group.suffix,
    }


def _as_channels(volumes: list[Volume], source: Path) -> Volume:
    """Stack a series' volumes as channels ``(C, X, Y, Z)``; they must share one grid."""
    reference = volumes[0]
    for other in volumes[1:]:
        difference = grid_difference(reference, other)
        if difference is not None:
            raise SeriesError(source, f"{other.meta.get('volume')} is not on volume 1's grid ({difference})")
    meta = {key: value for key, value in reference.meta.items() if not key.startswith("volume")}
    for key in ("image_type", "echo_number", "echo_time"):
        if any(v.meta.get(key) != reference.meta.get(key) for v in volumes):
            meta[key] = None  # e.g. a magnitude and a field map: no one image type; echoes: no one TE
    meta["channel_volumes"] = [v.meta.get("volume", "all images") for v in volumes]
    arrays = [v.array for v in volumes]
    dtype = np.result_type(*arrays)
    return Volume(array=np.concatenate([a.astype(dtype) for a in arrays]), affine=reference.affine, meta=meta)


def _series_value(
    headers: Sequence[SliceHeader], key: str, value: Callable[[SliceHeader], Any]
) -> dict[str, Any]:
    """``{key: value}`` when every slice has the same value (``None`` when none has one).

    Slices that disagree give ``{key: None, key + "_per_slice": {value: slices}}``
    (a list value written as DICOM shows it, ``ORIGINAL\\PRIMARY``), so no slice's
    value is hidden behind another's.
    """
    values = [value(header) for header in headers]
    shown = ["\\".join(v) if isinstance(v, list) else v for v in values]
    if len(set(shown)) == 1:
        return {key: values[0]}
    counts = Counter("(none)" if v is None else str(v) for v in shown)
    return {key: None, f"{key}_per_slice": dict(sorted(counts.items()))}


def _read_dataset(header: SliceHeader, decode: bool = False) -> Dataset:
    """The whole file, with its pixels decoded by pydicom when ``decode`` (an error names the file)."""
    try:
        dataset = pydicom.dcmread(header.path)
        if decode:
            _ = dataset.pixel_array
    except Exception as error:
        raise UnreadableFileError(header.path, f"cannot decode pixel data ({error})") from error
    return dataset


def _read_frames(
    header: SliceHeader, dataset: Dataset, frames: Sequence[SliceHeader]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Some frames of an enhanced multi-frame file as one volume ``(C, X, Y, Z)``, sorted along the normal."""
    ordered, affine, notes = stack_geometry(frames, source=Path(header.path))
    slopes, intercepts = _frame_rescale(dataset, header)
    order = [int(frame.frame or 1) - 1 for frame in ordered]
    decoded = decode_frames(dataset, header)
    notes["multiframe"] = True
    if header.is_colour:
        return decoded[order].transpose(3, 2, 1, 0), affine, notes
    pixels = decoded[..., 0]
    # Rescale in float64, then float32 like the single-frame path (or the smallest int).
    array = pixels[order].astype(np.float64) * slopes[order, None, None] + intercepts[order, None, None]
    if _needs_float_values(slopes[order], intercepts[order]):
        array = array.astype(np.float32)
    else:
        array = _smallest_int(array)
    return array.transpose(2, 1, 0)[np.newaxis], affine, notes


def _check_frame_geometry(header: SliceHeader, dataset: Dataset) -> None:
    """Raise when a frame's own orientation or pixel spacing disagrees with the file's."""
    for index, item in enumerate(dataset.get("PerFrameFunctionalGroupsSequence", []), 1):
        plane = item.get("PlaneOrientationSequence")
        if plane and header.orientation is not None:
            orientation = [float(v) for v in plane[0].get("ImageOrientationPatient", header.orientation)]
            if not np.allclose(orientation, header.orientation, atol=ORIENTATION_TOLERANCE):
                raise SeriesError(
                    header.path,
                    f"frame {index}: ImageOrientationPatient {orientation} differs from the file's "
                    f"{list(header.orientation)}; the per-frame functional groups disagree",
                )
        measures = item.get("PixelMeasuresSequence")
        if measures and header.pixel_spacing is not None:
            spacing = [float(v) for v in measures[0].get("PixelSpacing", header.pixel_spacing)]
            if not np.allclose(spacing, header.pixel_spacing, atol=1e-4):
                raise SeriesError(
                    header.path,
                    f"frame {index}: PixelSpacing {spacing} differs from the file's "
                    f"{list(header.pixel_spacing)}; the per-frame functional groups disagree",
                )


def _frame_rescale(dataset: Dataset, header: SliceHeader) -> tuple[np.ndarray, np.ndarray]:
    slopes = np.full(header.frames, header.rescale_slope)
    intercepts = np.full(header.frames, header.rescale_intercept)
    for index, item in enumerate(dataset.get("PerFrameFunctionalGroupsSequence", [])):
        transform = item.get("PixelValueTransformationSequence")
        if transform:
            slopes[index] = float(transform[0].get("RescaleSlope", slopes[index]))
            intercepts[index] = float(transform[0].get("RescaleIntercept", intercepts[index]))
    return slopes, intercepts


def _needs_float_values(slopes: np.ndarray, intercepts: np.ndarray) -> bool:
    return bool(np.any(slopes != 1.0) or np.any(intercepts != np.round(intercepts)))


def _smallest_int(array: np.ndarray) -> np.ndarray:
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if array.min() >= info.min and array.max() <= info.max:
            return array.astype(dtype)
    return array.astype(np.int64)


def _read_mosaic(header: SliceHeader, dataset: Dataset) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A Siemens mosaic (many slices tiled in one image), with nibabel's CSA geometry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel flags its DICOM readers as experimental
        from nibabel.nicom import dicomwrappers

        try:
            wrapper = dicomwrappers.wrapper_from_data(dataset)
            data = np.asarray(wrapper.get_data())  # (rows, columns, slices), rescaled
            affine_lps = np.asarray(wrapper.affine, dtype=np.float64)
        except Exception as error:
            raise SeriesError(header.path, f"cannot unpack the Siemens mosaic ({error})") from error
    # nibabel indexes (row, column, slice); medvol indexes (column, row, slice).
    data = data.transpose(1, 0, 2)
    affine_lps = affine_lps[:, [1, 0, 2, 3]]
    if data.dtype.kind == "f" and np.array_equal(data, np.round(data)):
        data = _smallest_int(data)
    notes = {"mosaic": True, "slices_in_mosaic": int(data.shape[2])}
    return (
        np.ascontiguousarray(data.astype(data.dtype.newbyteorder("=")))[np.newaxis],
        lps_to_ras(affine_lps),
        notes,
    )
