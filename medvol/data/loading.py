"""Loading a case's files onto one voxel grid: its channels and its label map.

Every path that reads a case uses these (``medvol index``, the training
datasets, evaluation, synthesis), so a case that one accepts the others accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medvol.errors import GeometryError, InvalidDataError
from medvol.io import load
from medvol.io.dicom_seg import is_segmentation_sop_class, load_dicom_seg
from medvol.volume import Volume, grid_difference


def on_image_grid(image: Volume, other: Volume, what: str) -> Volume:
    """``other`` (a channel or label map) on ``image``'s voxel grid, or a ``GeometryError``.

    A file that stores the same voxels in another axis order or direction
    (e.g. a mask written LAS beside an LPS series) is reoriented onto the
    image's grid, exactly (no interpolation), and ``meta["reoriented_from"]``
    records its own orientation; any other difference is refused, naming the
    file and the distance (``medvol.volume.grid_difference``).
    """
    from medvol.transforms.preprocess import reorient

    problem = grid_difference(image, other)
    if problem is None:
        return other
    if image.orientation != other.orientation:
        turned, _ = reorient(other, image.orientation)
        if grid_difference(image, turned) is None:
            return Volume(turned.array, turned.affine, {**turned.meta, "reoriented_from": other.orientation})
    raise GeometryError(other.meta.get("source_path"), f"{what} grid does not match the image's: {problem}")


def load_label(path: Path, series: str | None, image: Volume) -> Volume:
    """A label map as stored: a file, a DICOM mask series (``series`` of a folder) or a DICOM SEG.

    A DICOM SEG has no grid of its own: its frames are placed on ``image``'s
    grid (``medvol.io.dicom_seg``); every other label keeps its own geometry,
    for ``on_image_grid`` to check.
    """
    if path.is_file() and _is_dicom_seg(path):
        return load_dicom_seg(path, image)
    return load(path, series=series)


def _is_dicom_seg(path: Path) -> bool:
    from medvol.io.dicom_headers import SkippedFile, is_dicom_file, read_header

    if not is_dicom_file(path):
        return False
    header = read_header(path)
    return isinstance(header, SkippedFile) and is_segmentation_sop_class(header.sop_class_uid)


def load_files(
    images: Sequence[Path],
    label: Path | None,
    series: str | None = None,
    label_series: str | None = None,
    volume: str | None = None,
) -> tuple[Volume, Volume | None]:
    """A case's channels stacked into one Volume ``(C, X, Y, Z)``, and its integer label map (if any).

    ``volume`` chooses among the volumes of a DICOM image series of several
    (``medvol.load``'s ``volume=``; ``"all"``: each volume one more channel).
    Several channels are stacked as float32; a single channel keeps its dtype.
    Every channel and the label map must lie on the first channel's grid
    (``on_image_grid``: the same voxels in another axis order are reoriented);
    a float label map must hold integers and is returned as int16.

    Raises:
        GeometryError: a channel or the label map on another grid.
        InvalidDataError: a label map with non-integer values.
    """
    loaded = [load(path, series=series, volume=volume) for path in images]
    first = loaded[0]
    channels = [first, *(on_image_grid(first, other, "channel") for other in loaded[1:])]
    image = first
    if len(channels) > 1:
        image = Volume(
            np.concatenate([c.array.astype(np.float32) for c in channels]), first.affine, first.meta
        )
    if label is None:
        return image, None
    labels = on_image_grid(first, load_label(label, label_series, first), "label")
    values = labels.array
    if values.dtype.kind not in "biu":
        if not np.all(values == np.round(values)):
            raise InvalidDataError(label, "label has non-integer values")
        values = values.astype(np.int16)
    return image, Volume(values, labels.affine, labels.meta)
