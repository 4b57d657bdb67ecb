"""The slices a report's overlay figure draws, saved by ``medvol evaluate``.

A segmentation evaluation keeps, for every scored case, one 2D slice of the
image, the label map and the predicted label map (:class:`OverlaySlices`) in
``evaluation-NAME/overlays.npz``, so that ``medvol report`` draws the best and
worst cases from the run folder alone, with the data far away or gone.

The slice is the middle of the ground truth's extent along the axis with the
largest spacing (the last axis when all are equal; the prediction's extent when
the label is empty, the middle of the axis when both are). Slices are stored
transposed, rows along the second in-plane axis, as ``imshow(origin="lower")``
draws them.

``overlays.npz`` holds plain arrays only (no pickles): ``case_ids`` (N,) text,
``axis`` (N,), ``index`` (N,), ``pixel_mm`` (N, 2), and per case number ``i``
``image_i`` float32, ``label_i`` and ``prediction_i`` int32, each (rows, columns), and
``classes_i`` (the legend's label values); ``orientation`` (N,) the scan's axis codes
(e.g. ``RAS``: voxel axis ``k`` points towards ``orientation[k]``), from which the report
labels the slice's edges.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path

if TYPE_CHECKING:
    from medvol.engine.run_folder import EvaluationFolder
    from medvol.volume import Volume

FORMAT_VERSION = 1


@dataclass(frozen=True)
class OverlaySlices:
    """One case's slice through image, ground truth and prediction.

    Attributes:
        image: the first image channel on the slice, float32 ``(rows, columns)``.
        label: ground-truth label values on the slice, int32 ``(rows, columns)``.
        prediction: predicted label values on the slice, int32 ``(rows, columns)``.
        axis: the voxel axis cut (0, 1, 2 for x, y, z).
        index: the slice's voxel index along ``axis``.
        pixel_mm: spacing in mm along the columns and along the rows (the first and
            second in-plane axes).
        classes: the foreground label values anywhere in the label or predicted volume
            (the figure's legend), ascending.
        orientation: the scan's axis codes (``Volume.orientation``, e.g. ``"LPS"``);
            empty in files written before medvol recorded it.
    """

    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    axis: int
    index: int
    pixel_mm: tuple[float, float]
    classes: tuple[int, ...]
    orientation: str = ""

    @property
    def aspect(self) -> float:
        """Height over width of one pixel, for ``imshow(aspect=...)``."""
        return self.pixel_mm[1] / self.pixel_mm[0]

    @property
    def edge_letters(self) -> tuple[str, str, str, str] | None:
        """The anatomical directions at the left, right, bottom and top edges of the drawn slice.

        Columns run along the first in-plane axis (left to right), rows along the
        second (bottom to top, ``origin="lower"``). ``None`` when the orientation
        was not recorded.
        """
        if len(self.orientation) != 3:
            return None
        across, up = (self.orientation[a] for a in range(3) if a != self.axis)
        opposite = dict(zip("RLAPSI", "LRPAIS", strict=True))
        return opposite[across], across, opposite[up], up


def overlay_slices(image: Volume, label: Volume, prediction: Volume) -> OverlaySlices:
    """The overlay slice of one case (see the module docstring for the choice of slice).

    Args:
        image: the scan, ``(C, X, Y, Z)``; channel 0 is drawn.
        label: its label map on the same grid, ``(1, X, Y, Z)``.
        prediction: the predicted label map on the same grid, ``(1, X, Y, Z)``.

    Raises:
        MedvolError: the three volumes differ in shape.
    """
    truth, predicted = label.array[0], prediction.array[0]
    if not (image.array.shape[1:] == truth.shape == predicted.shape):
        raise MedvolError(
            None,
            f"image {list(image.array.shape[1:])}, label {list(truth.shape)} and prediction "
            f"{list(predicted.shape)} differ in shape",
        )
    spacing = np.asarray(label.spacing)
    axis = int(np.flatnonzero(spacing == spacing.max())[-1])
    others = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(np.any(truth != 0, axis=others))
    if not present.size:
        present = np.flatnonzero(np.any(predicted != 0, axis=others))
    index = (int(present[0]) + int(present[-1])) // 2 if present.size else truth.shape[axis] // 2

    def cut(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.take(array, index, axis=axis).T)  # rows: second in-plane axis

    return OverlaySlices(
        image=cut(image.array[0]).astype(np.float32),
        label=cut(truth).astype(np.int32),
        prediction=cut(predicted).astype(np.int32),
        axis=axis,
        index=index,
        pixel_mm=(float(spacing[others[0]]), float(spacing[others[1]])),
        classes=tuple(int(v) for v in np.union1d(np.unique(truth), np.unique(predicted)) if v != 0),
        orientation=image.orientation,
    )


def save_overlays(folder: EvaluationFolder, slices: Mapping[str, OverlaySlices]) -> Path:
    """Write every case's slices into ``folder.overlays`` (compressed, atomically).

    Returns:
        The path written.
    """
    ids = list(slices)
    arrays: dict[str, Any] = {
        "format_version": np.asarray(FORMAT_VERSION),
        "case_ids": np.asarray(ids, dtype=np.str_),
        "axis": np.asarray([slices[i].axis for i in ids], dtype=np.int64),
        "index": np.asarray([slices[i].index for i in ids], dtype=np.int64),
        "pixel_mm": np.asarray([slices[i].pixel_mm for i in ids], dtype=np.float64).reshape(-1, 2),
        "orientation": np.asarray([slices[i].orientation for i in ids], dtype=np.str_),
    }
    for number, case_id in enumerate(ids):
        arrays[f"image_{number}"] = slices[case_id].image.astype(np.float32)
        arrays[f"label_{number}"] = slices[case_id].label.astype(np.int32)
        arrays[f"prediction_{number}"] = slices[case_id].prediction.astype(np.int32)
        arrays[f"classes_{number}"] = np.asarray(slices[case_id].classes, dtype=np.int64)
    with atomic_path(folder.overlays) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, allow_pickle=False, **arrays)
    return folder.overlays


def read_overlays(
    folder: EvaluationFolder, case_ids: Iterable[str] | None = None
) -> dict[str, OverlaySlices]:
    """The slices saved in ``folder.overlays``: of ``case_ids``, or of every case.

    Raises:
        MedvolError: the file is missing (an evaluation written by an older medvol),
            unreadable, or holds no slices of a requested case.
    """
    path = folder.overlays
    if not path.is_file():
        raise MedvolError(
            path, "no overlay slices: this evaluation was written by an older medvol; rerun `medvol evaluate`"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = [str(i) for i in data["case_ids"]]
            orientations = [str(o) for o in data["orientation"]] if "orientation" in data else [""] * len(ids)
            wanted = ids if case_ids is None else list(case_ids)
            result = {}
            for case_id in wanted:
                if case_id not in ids:
                    raise MedvolError(path, f"no overlay slices of case {case_id}")
                number = ids.index(case_id)
                result[case_id] = OverlaySlices(
                    image=data[f"image_{number}"],
                    label=data[f"label_{number}"],
                    prediction=data[f"prediction_{number}"],
                    axis=int(data["axis"][number]),
                    index=int(data["index"][number]),
                    pixel_mm=(float(data["pixel_mm"][number, 0]), float(data["pixel_mm"][number, 1])),
                    classes=tuple(int(v) for v in data[f"classes_{number}"]),
                    orientation=orientations[number],
                )
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as error:
        raise MedvolError(path, f"cannot read the overlay slices ({error})") from error
    return result
