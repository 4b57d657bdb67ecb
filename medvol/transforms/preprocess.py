"""Deterministic, invertible preprocessing: reorient, resample, crop, pad.

``preprocess(image, label, config)`` runs the steps below in this order, on the
image and the label together, and returns a ``PreprocessRecord`` that says what
each step did. ``invert(prediction, record)`` undoes the steps in reverse, so a
prediction made on the preprocessed grid lands on the scan's own grid (same
shape, same affine, exactly).

1. ``reorient``: an exact permutation/flip of the index axes onto the nearest
   canonical orientation (``nibabel.orientations``); no interpolation, every
   voxel keeps its value and its world position.
2. ``resample``: onto the target spacing. The grid keeps its axis directions
   (an oblique scan stays oblique; it is not rotated onto the world axes), is
   centred on the old grid and covers the same physical extent:
   ``new_size = round(size × spacing / target)`` voxels per axis. Images are
   interpolated linearly or with a cubic B-spline and become float32; labels
   are always nearest neighbour and keep their exact values and dtype.
3. ``crop``: to the foreground (image above a threshold, or label > 0) or to a
   box given in world millimetres, plus a margin in voxels.
4. ``pad``: symmetrically up to a minimum shape with a constant value.

Reorient, crop and pad move whole voxels, so they and their inverses are exact;
only resampling interpolates, once forward and once back.

Why SimpleITK for resampling (and not torch ``grid_sample`` or MONAI
``Spacingd``): its nearest-neighbour resampling works on every integer dtype
(up to 64 bits), so labels keep their value set and dtype exactly, whereas
``grid_sample`` needs float tensors (float32 cannot hold every int32 label) and
MONAI interpolates labels bilinearly unless told otherwise; it offers cubic
B-spline interpolation, which torch does not; it runs multi-threaded in C++
with the same result for any thread count; and it samples along any affine map
between two grids, so one code path handles spacing changes, sheared grids and
the way back. Arrays are handed to ITK with identity geometry (world = voxel
index), and the exact index-to-index map is passed as the transform: no LPS/RAS
conversion and no rounding of the geometry happens on the way.

Clips (``meta["axes"] == "XYT"``: videos, DICOM cine loops) are refused by
``preprocess``, ``reorient`` and ``resample`` with a ``GeometryError``: their
third axis is time, which reorientation would swap with space and resampling
in mm would interpolate. Clips are prepared by ``medvol.transforms.clips`` (frames
resized in X and Y only).

Sheared affines (gantry tilt, kept exactly by ``medvol.io``): by default the
resampling step puts them onto an orthogonal grid. The acquired slice plane
(the two most nearly perpendicular index axes) is kept, the third axis becomes
its normal with the distance between slice planes as spacing (what dcm2niix
does), and the grid covers the whole tilted volume; corners outside the scan
get the fill value. ``on_shear="error"`` refuses sheared input with a
``GeometryError`` instead.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medvol.errors import GeometryError
from medvol.io.atomic import json_safe
from medvol.io.geometry import is_sheared
from medvol.volume import Volume, grid_difference

__all__ = [
    "PreprocessConfig",
    "PreprocessRecord",
    "bbox_from_mm",
    "crop",
    "foreground_bbox",
    "invert",
    "pad",
    "preprocess",
    "reorient",
    "resample",
    "resample_to_grid",
    "target_grid",
]

Interpolation = Literal["nearest", "linear", "bspline"]
BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
BBoxMM = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
Entry = dict[str, Any]

_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
}
_AXIS_PAIRS = ("LR", "AP", "SI")
_GRID_TOLERANCE_MM = 1e-4


@dataclass(frozen=True)
class PreprocessConfig:
    """What ``preprocess`` does; every field is saved in the record.

    Attributes:
        orientation: canonical axis codes to reorient to (``"RAS"``, ``"LPS"``...).
        spacing_mm: target voxel size along x, y, z in mm; ``None`` keeps the
            spacing (a sheared grid is still resampled onto an orthogonal one).
        image_interpolation: ``"linear"`` or ``"bspline"`` (cubic) for images;
            labels are always nearest neighbour.
        on_shear: ``"resample"`` onto an orthogonal grid, or ``"error"``.
        crop: ``"none"``, ``"foreground"`` or ``"bbox"``.
        foreground_from: for ``crop="foreground"``, voxels where any image
            channel is above ``foreground_threshold`` (``"image"``), or where
            the label is > 0 (``"label"``; training only, since it needs a label).
        foreground_threshold: intensity threshold for ``foreground_from="image"``.
        bbox_mm: for ``crop="bbox"``, the box ``((x0, x1), (y0, y1), (z0, z1))``
            in world RAS mm; voxels whose centres lie inside it are kept.
        margin_vox: voxels added on each side of the foreground or the box.
        pad_to_shape: minimum spatial shape ``(X, Y, Z)``; smaller grids are
            padded symmetrically, larger ones are left alone.
        image_fill_value: image value for padding and for regions outside the
            scan; ``None`` uses the image's minimum (air for CT). Labels use 0.
    """

    orientation: str = "RAS"
    spacing_mm: tuple[float, float, float] | None = None
    image_interpolation: Literal["linear", "bspline"] = "linear"
    on_shear: Literal["resample", "error"] = "resample"
    crop: Literal["none", "foreground", "bbox"] = "none"
    foreground_from: Literal["image", "label"] = "image"
    foreground_threshold: float = 0.0
    bbox_mm: BBoxMM | None = None
    margin_vox: int = 0
    pad_to_shape: tuple[int, int, int] | None = None
    image_fill_value: float | None = None

    def __post_init__(self) -> None:
        _check_orientation(self.orientation)
        if self.spacing_mm is not None and (len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0):
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        _check_choice("image_interpolation", self.image_interpolation, ("linear", "bspline"))
        _check_choice("on_shear", self.on_shear, ("resample", "error"))
        _check_choice("crop", self.crop, ("none", "foreground", "bbox"))
        _check_choice("foreground_from", self.foreground_from, ("image", "label"))
        if self.crop == "bbox" and self.bbox_mm is None:
            raise ValueError('crop="bbox" needs bbox_mm=((x0, x1), (y0, y1), (z0, z1)) in world mm')
        if self.margin_vox < 0:
            raise ValueError(f"margin_vox must be >= 0, got {self.margin_vox}")
        if self.pad_to_shape is not None and (len(self.pad_to_shape) != 3 or min(self.pad_to_shape) < 1):
            raise ValueError(f"pad_to_shape must be three positive integers, got {self.pad_to_shape}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-serialisable values."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Rebuild a config from ``to_dict`` output; unknown keys are errors."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown preprocessing option(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("spacing_mm", "pad_to_shape"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("bbox_mm") is not None:
            values["bbox_mm"] = tuple(tuple(pair) for pair in values["bbox_mm"])
        return cls(**values)


@dataclass
class PreprocessRecord:
    """What ``preprocess`` did to one scan, enough to map predictions back.

    Attributes:
        source_shape: spatial shape ``(X, Y, Z)`` of the scan as given.
        source_affine: its 4×4 voxel→RAS mm affine (nested lists, exact floats).
        config: the ``PreprocessConfig`` as a dict.
        steps: one entry per step, in order: ``step`` (its name),
            ``input_shape``/``input_affine``, ``output_shape``/``output_affine``
            and the step's own parameters.
    """

    source_shape: tuple[int, int, int]
    source_affine: list[list[float]]
    config: dict[str, Any]
    steps: list[Entry] = field(default_factory=list)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the preprocessed grid."""
        shape = self.steps[-1]["output_shape"] if self.steps else self.source_shape
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    @property
    def output_affine(self) -> np.ndarray:
        """Voxel→RAS mm affine (4×4) of the preprocessed grid."""
        return np.array(self.steps[-1]["output_affine"] if self.steps else self.source_affine)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (``json.dumps`` round-trips them exactly)."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessRecord:
        """Rebuild a record from ``to_dict`` output (e.g. after ``json.loads``)."""
        x, y, z = data["source_shape"]
        return cls(
            source_shape=(int(x), int(y), int(z)),
            source_affine=[list(map(float, row)) for row in data["source_affine"]],
            config=dict(data["config"]),
            steps=[dict(entry) for entry in data["steps"]],
        )


def preprocess(
    image: Volume, label: Volume | None = None, config: PreprocessConfig | None = None
) -> tuple[Volume, Volume | None, PreprocessRecord]:
    """Reorient, resample, crop and pad an image (and its label) as ``config`` says.

    Args:
        image: the scan, array ``(C, X, Y, Z)``.
        label: its segmentation on the same grid, array ``(K, X, Y, Z)`` of
            integers (or ``None``); always resampled nearest neighbour.
        config: the steps to run; the default only reorients to RAS.

    Returns:
        The image and label on the new grid, and the record that ``invert``
        needs; the record is also stored as ``meta["preprocess"]`` of both.

    Raises:
        GeometryError: the label is not on the image's grid, the affine is
            sheared and ``config.on_shear == "error"``, or the image is a clip.
    """
    refuse_clip(image, "preprocess")
    config = config or PreprocessConfig()
    label = _label_on_image_grid(image, label)
    image_fill = float(image.array.min()) if config.image_fill_value is None else config.image_fill_value
    record = PreprocessRecord(image.shape, image.affine.tolist(), config.to_dict())

    image, entry = reorient(image, config.orientation)
    label = None if label is None else reorient(label, config.orientation)[0]
    record.steps.append(entry)

    image, entry = resample(
        image, config.spacing_mm, config.image_interpolation, fill_value=image_fill, on_shear=config.on_shear
    )
    if label is not None:
        label = resample(label, config.spacing_mm, "nearest", on_shear=config.on_shear)[0]
    record.steps.append(entry)

    if config.crop != "none":
        if config.crop == "bbox":
            assert config.bbox_mm is not None  # checked by PreprocessConfig
            bbox = bbox_from_mm(image, config.bbox_mm, config.margin_vox)
        elif config.foreground_from == "label":
            if label is None:
                raise ValueError('foreground_from="label" needs a label; use "image" at inference')
            bbox = foreground_bbox(np.any(label.array > 0, axis=0), config.margin_vox)
        else:
            mask = np.any(image.array > config.foreground_threshold, axis=0)
            bbox = foreground_bbox(mask, config.margin_vox)
        image, entry = crop(image, bbox)
        label = None if label is None else crop(label, bbox)[0]
        entry["mode"] = config.crop
        record.steps.append(entry)

    if config.pad_to_shape is not None:
        image, entry = pad(image, config.pad_to_shape, image_fill)
        label = None if label is None else pad(label, config.pad_to_shape, 0)[0]
        record.steps.append(entry)

    image.meta["preprocess"] = record.to_dict()
    if label is not None:
        label.meta["preprocess"] = record.to_dict()
    return image, label, record


def invert(
    prediction: Volume,
    record: PreprocessRecord,
    *,
    interpolation: Literal["nearest", "linear"] | None = None,
    fill_value: float | list[float] = 0.0,
) -> Volume:
    """Map a prediction on the preprocessed grid back onto the source grid.

    Args:
        prediction: array ``(K, X, Y, Z)`` on ``record``'s output grid: a label
            map or per-class probabilities.
        record: from ``preprocess`` (or ``PreprocessRecord.from_dict``).
        interpolation: ``"nearest"`` (default for integer and bool arrays) or
            ``"linear"`` (default for float arrays, e.g. probabilities).
        fill_value: value for source voxels outside the cropped region, one
            number or one per channel (e.g. ``[1, 0, 0]`` for softmax
            probabilities whose channel 0 is background).

    Returns:
        The prediction with the source's shape and exactly its affine.

    Raises:
        GeometryError: the prediction is not on the record's output grid.
    """
    if prediction.shape != record.output_shape or not np.allclose(
        prediction.affine, record.output_affine, atol=_GRID_TOLERANCE_MM
    ):
        raise GeometryError(
            prediction.meta.get("source_path"),
            f"the prediction (shape {prediction.shape}) is not on the preprocessed grid "
            f"(shape {record.output_shape}, affine {record.output_affine.tolist()}) of this record",
        )
    if interpolation is None:
        interpolation = "nearest" if prediction.array.dtype.kind in "biu" else "linear"
    _check_choice("interpolation", interpolation, ("nearest", "linear"))
    if np.size(fill_value) not in (1, prediction.num_channels):
        raise ValueError(f"fill_value needs 1 or {prediction.num_channels} values, got {fill_value}")
    meta = {key: value for key, value in prediction.meta.items() if key != "preprocess"}
    volume = Volume(prediction.array, prediction.affine, meta)
    for entry in reversed(record.steps):
        shape, affine = tuple(entry["input_shape"]), np.array(entry["input_affine"])
        if entry["step"] == "reorient":
            volume = reorient(volume, "".join(nib.orientations.aff2axcodes(affine)))[0]
        elif entry["step"] == "resample" and entry["resampled"]:
            volume = resample_to_grid(volume, affine, shape, interpolation, fill_value)
        elif entry["step"] == "crop":
            volume = _uncrop(volume, entry, fill_value)
        elif entry["step"] == "pad":
            (x0, _), (y0, _), (z0, _) = entry["pad_vox"]
            volume = crop(volume, ((x0, x0 + shape[0]), (y0, y0 + shape[1]), (z0, z0 + shape[2])))[0]
        volume = _onto_recorded_grid(volume, shape, affine, entry["step"])
    return volume


def refuse_clip(volume: Volume, step: str) -> None:
    """Raise ``GeometryError`` when ``volume`` is a clip (``meta["axes"] == "XYT"``): ``step`` would act
    along its time axis."""
    if volume.meta.get("axes") == "XYT":
        raise GeometryError(
            volume.meta.get("source_path"),
            f"is a clip (frames in time along the third axis): {step} treats the third axis as space "
            "and would act along time; clips are classified with data.clip, which resizes frames only",
        )


def reorient(volume: Volume, orientation: str = "RAS") -> tuple[Volume, Entry]:
    """Permute and flip the index axes so they point along ``orientation``.

    Exact: no interpolation; every voxel keeps its value and world position.
    An oblique grid goes to the nearest canonical axes (nibabel's rule).

    Args:
        volume: array ``(C, X, Y, Z)``.
        orientation: target axis codes, e.g. ``"RAS"``.

    Returns:
        The reoriented volume and its record entry.

    Raises:
        GeometryError: ``volume`` is a clip (``refuse_clip``).
    """
    refuse_clip(volume, "reorientation")
    _check_orientation(orientation)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(volume.affine), nib.orientations.axcodes2ornt(tuple(orientation))
    )
    channels_last = np.moveaxis(volume.array, 0, -1)
    array = np.moveaxis(nib.orientations.apply_orientation(channels_last, transform), -1, 0)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    result = Volume(np.ascontiguousarray(array), affine, dict(volume.meta))
    entry = _entry(
        "reorient", volume, result, from_orientation=volume.orientation, to_orientation=orientation
    )
    return result, entry


def resample(
    volume: Volume,
    spacing_mm: tuple[float, float, float] | None,
    interpolation: Interpolation = "linear",
    *,
    fill_value: float = 0.0,
    on_shear: Literal["resample", "error"] = "resample",
) -> tuple[Volume, Entry]:
    """Resample onto the target spacing over the same physical extent.

    The grid is given by ``target_grid``. When the input is not sheared and
    already has the target spacing (to 1e-5 relative), nothing is interpolated
    and the volume is returned as it is (``resampled: false`` in the entry).

    Args:
        volume: array ``(C, X, Y, Z)``.
        spacing_mm: target voxel size along x, y, z in mm; ``None`` keeps it.
        interpolation: ``"nearest"`` for labels (values and dtype kept),
            ``"linear"`` or ``"bspline"`` for images (float32 result).
        fill_value: value for points outside the scan (corners of a de-sheared grid).
        on_shear: what to do with a sheared affine: ``"resample"`` onto an
            orthogonal grid, or ``"error"``.

    Returns:
        The resampled volume and its record entry.

    Raises:
        GeometryError: the affine is sheared and ``on_shear == "error"``, or
            ``volume`` is a clip (``refuse_clip``).
    """
    refuse_clip(volume, "resampling")
    sheared = is_sheared(volume.affine)
    if sheared and on_shear == "error":
        raise GeometryError(
            volume.meta.get("source_path"),
            f"the affine is sheared by {_shear_deg(volume.affine):.2f}° (e.g. gantry tilt); "
            'set on_shear="resample" to resample it onto an orthogonal grid',
        )
    same_spacing = spacing_mm is None or np.allclose(volume.spacing, spacing_mm, rtol=1e-5, atol=0)
    resampled = sheared or not same_spacing
    result = volume
    if resampled:
        affine, shape = target_grid(volume.affine, volume.shape, spacing_mm)
        result = resample_to_grid(volume, affine, shape, interpolation, fill_value)
    entry = _entry(
        "resample",
        volume,
        result,
        resampled=bool(resampled),
        sheared=bool(sheared),
        spacing_mm=list(result.spacing),
        interpolation=interpolation,
        fill_value=fill_value,
    )
    return result, entry


def target_grid(
    affine: np.ndarray, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float] | None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The orthogonal grid with the target spacing that covers a grid's extent.

    Directions come from a Gram–Schmidt (QR) orthogonalisation of the affine's
    columns, starting with the two most nearly perpendicular ones; for an
    unsheared affine these are just its own directions. The new grid is
    centred on the old one and spans its bounding box along those directions
    (voxels count from edge to edge), with ``round(extent / spacing)`` voxels.

    Args:
        affine: 4×4 voxel→RAS mm affine of the input grid.
        shape: its spatial shape ``(X, Y, Z)``.
        spacing_mm: target spacing in mm; ``None`` keeps the spacing (for a
            sheared grid: in-plane spacings and the distance between slices).

    Returns:
        The new affine (4×4) and shape.
    """
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = matrix / np.linalg.norm(matrix, axis=0)
    first, second = min(
        itertools.combinations(range(3), 2), key=lambda ij: abs(unit[:, ij[0]] @ unit[:, ij[1]])
    )
    order = [first, second, 3 - first - second]
    q, r = np.linalg.qr(matrix[:, order])
    signs = np.sign(np.diag(r))
    directions, native_spacing = np.empty((3, 3)), np.empty(3)
    directions[:, order] = q * signs
    native_spacing[order] = np.abs(np.diag(r))
    spacing = native_spacing if spacing_mm is None else np.asarray(spacing_mm, dtype=np.float64)

    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape])))
    along = (corners @ matrix.T + affine[:3, 3]) @ directions  # corner coordinates along the new axes
    low, high = along.min(axis=0), along.max(axis=0)
    new_shape = np.maximum(np.round((high - low) / spacing), 1).astype(int)
    first_centre = (low + high) / 2 - (new_shape - 1) / 2 * spacing
    new_affine = np.eye(4)
    new_affine[:3, :3] = directions * spacing
    new_affine[:3, 3] = directions @ first_centre
    x, y, z = (int(n) for n in new_shape)
    return new_affine, (x, y, z)


def resample_to_grid(
    volume: Volume,
    affine: np.ndarray,
    shape: tuple[int, ...],
    interpolation: Interpolation,
    fill_value: float | list[float] = 0.0,
) -> Volume:
    """Sample a volume at the voxel centres of another grid (SimpleITK).

    Points within one voxel of the input grid take the nearest edge value, so
    a grid covering the same extent has no fill at its border; points further
    out get ``fill_value``.

    Args:
        volume: array ``(C, X, Y, Z)``.
        affine: 4×4 voxel→RAS mm affine of the target grid.
        shape: spatial shape ``(X, Y, Z)`` of the target grid.
        interpolation: ``"nearest"`` keeps values and dtype; ``"linear"`` and
            ``"bspline"`` give float32.
        fill_value: one value, or one per channel.

    Returns:
        The volume on the target grid, array ``(C, X', Y', Z')``, with ``affine``.
    """
    index_map = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=np.float64)
    transform = sitk.AffineTransform(index_map[:3, :3].flatten().tolist(), index_map[:3, 3].tolist())
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in shape])
    resampler.SetTransform(transform)
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    if interpolation != "nearest":
        resampler.SetOutputPixelType(sitk.sitkFloat32)
    fills = np.broadcast_to(np.asarray(fill_value, dtype=np.float64), (volume.num_channels,))

    source = volume.array
    if source.dtype == np.bool_:
        source = source.view(np.uint8)
    elif source.dtype == np.float16:
        source = source.astype(np.float32)
    channels = []
    for channel, fill in zip(source, fills, strict=True):
        image = sitk.GetImageFromArray(np.pad(channel, 1, mode="edge").T)  # ITK wants (Z, Y, X)
        image.SetOrigin((-1.0, -1.0, -1.0))  # world = voxel index of the unpadded array
        resampler.SetDefaultPixelValue(float(fill))
        channels.append(sitk.GetArrayFromImage(resampler.Execute(image)).T)
    array = np.stack(channels)
    if interpolation == "nearest":
        array = array.astype(volume.array.dtype, copy=False)
    return Volume(array, np.asarray(affine, dtype=np.float64), dict(volume.meta))


def foreground_bbox(mask: np.ndarray, margin_vox: int = 0) -> BBox:
    """Half-open voxel ranges ``((x0, x1), (y0, y1), (z0, z1))`` around a mask.

    Args:
        mask: boolean array ``(X, Y, Z)``.
        margin_vox: voxels added on each side, clipped to the grid.

    Returns:
        The bounding box; the whole grid when the mask is empty.
    """
    if not mask.any():
        return _bbox([(0, n) for n in mask.shape])
    ranges = []
    for axis, size in enumerate(mask.shape):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        ranges.append((max(int(hits[0]) - margin_vox, 0), min(int(hits[-1]) + 1 + margin_vox, size)))
    return _bbox(ranges)


def bbox_from_mm(volume: Volume, bbox_mm: BBoxMM, margin_vox: int = 0) -> BBox:
    """Voxel ranges of the voxels whose centres lie in a world box, plus a margin.

    Args:
        volume: the grid to crop (only its affine and shape are used).
        bbox_mm: ``((x0, x1), (y0, y1), (z0, z1))`` in world RAS mm.
        margin_vox: voxels added on each side, clipped to the grid.

    Raises:
        GeometryError: the box does not overlap the scan.
    """
    corners = np.array(list(itertools.product(*[sorted(pair) for pair in bbox_mm])))
    index = corners @ np.linalg.inv(volume.affine)[:3, :3].T + np.linalg.inv(volume.affine)[:3, 3]
    low = np.ceil(index.min(axis=0) - 1e-6).astype(int) - margin_vox
    high = np.floor(index.max(axis=0) + 1e-6).astype(int) + 1 + margin_vox
    low, high = np.maximum(low, 0), np.minimum(high, volume.shape)
    if np.any(high <= low):
        raise GeometryError(
            volume.meta.get("source_path"), f"the bounding box {bbox_mm} (mm, RAS) does not overlap the scan"
        )
    return _bbox(list(zip(low.tolist(), high.tolist(), strict=True)))


def crop(volume: Volume, bbox_vox: BBox) -> tuple[Volume, Entry]:
    """Keep the voxels in half-open ranges ``((x0, x1), (y0, y1), (z0, z1))``.

    Exact: the affine's origin moves to voxel ``(x0, y0, z0)``.
    """
    (x0, x1), (y0, y1), (z0, z1) = bbox_vox
    array = volume.array[:, x0:x1, y0:y1, z0:z1]
    result = Volume(
        np.ascontiguousarray(array), volume.affine @ _translation([x0, y0, z0]), dict(volume.meta)
    )
    return result, _entry("crop", volume, result, bbox_vox=[list(pair) for pair in bbox_vox])


def pad(volume: Volume, shape: tuple[int, int, int], value: float = 0.0) -> tuple[Volume, Entry]:
    """Pad symmetrically with a constant up to at least ``shape`` ``(X, Y, Z)``.

    Axes already as large are left alone; an odd difference puts the extra
    voxel at the end. Exact: the affine's origin moves by the leading pad.
    """
    widths = [
        ((need - n) // 2, need - n - (need - n) // 2) for n, need in zip(volume.shape, shape, strict=True)
    ]
    widths = [(max(before, 0), max(after, 0)) for before, after in widths]
    array = np.pad(volume.array, [(0, 0), *widths], constant_values=value)
    affine = volume.affine @ _translation([-before for before, _ in widths])
    result = Volume(array, affine, dict(volume.meta))
    return result, _entry("pad", volume, result, pad_vox=[list(w) for w in widths], value=value)


def crop_or_pad(volume: Volume, shape: tuple[int, int, int], value: float | None = None) -> Volume:
    """Centre-crop and pad a volume to exactly ``shape`` ``(X, Y, Z)`` voxels.

    Axes larger than ``shape`` keep their central voxels (an odd excess drops
    the extra voxel at the end); smaller axes are padded symmetrically with
    ``value`` (default: the minimum of the whole input volume). The affine follows exactly.
    This is the fixed input shape of file-trained classifiers, in training
    and at inference.
    """
    fill = float(volume.array.min()) if value is None else value
    excess = [max(n - need, 0) for n, need in zip(volume.shape, shape, strict=True)]
    if any(excess):
        bbox = _bbox(
            [(e // 2, e // 2 + min(n, need)) for e, n, need in zip(excess, volume.shape, shape, strict=True)]
        )
        volume, _ = crop(volume, bbox)
    if tuple(volume.shape) != tuple(shape):
        volume, _ = pad(volume, shape, fill)
    return volume


def _uncrop(volume: Volume, entry: Entry, fill_value: float | list[float]) -> Volume:
    """Put a cropped array back into the uncropped grid, filling the rest."""
    shape = (volume.num_channels, *entry["input_shape"])
    array = np.empty(shape, dtype=volume.array.dtype)
    array[...] = np.asarray(fill_value).reshape(-1, 1, 1, 1)
    (x0, x1), (y0, y1), (z0, z1) = entry["bbox_vox"]
    array[:, x0:x1, y0:y1, z0:z1] = volume.array
    return Volume(array, np.array(entry["input_affine"]), volume.meta)


def _onto_recorded_grid(volume: Volume, shape: tuple[int, ...], affine: np.ndarray, step: str) -> Volume:
    """Check an inverted step landed on the recorded grid, then use its exact affine."""
    if volume.shape != shape or not np.allclose(volume.affine, affine, atol=_GRID_TOLERANCE_MM):
        raise GeometryError(None, f"inverting the {step} step did not give back the recorded grid")
    return Volume(volume.array, affine, volume.meta)


def _label_on_image_grid(image: Volume, label: Volume | None) -> Volume | None:
    """The label with the image's affine, after checking they share a grid."""
    if label is None:
        return None
    problem = grid_difference(image, label)
    if problem:
        raise GeometryError(
            label.meta.get("source_path"), f"the label grid does not match the image grid: {problem}"
        )
    return Volume(label.array, image.affine, dict(label.meta))


def _entry(step: str, before: Volume, after: Volume, **params: Any) -> Entry:
    return json_safe(
        {
            "step": step,
            "input_shape": list(before.shape),
            "input_affine": before.affine.tolist(),
            "output_shape": list(after.shape),
            "output_affine": after.affine.tolist(),
            **params,
        }
    )


def _translation(offset_vox: list[int]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset_vox
    return matrix


def _bbox(ranges: list[tuple[int, int]]) -> BBox:
    (x0, x1), (y0, y1), (z0, z1) = ranges
    return ((int(x0), int(x1)), (int(y0), int(y1)), (int(z0), int(z1)))


def _shear_deg(affine: np.ndarray) -> float:
    """Largest deviation from 90° between two index axes, in degrees."""
    unit = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = [abs(unit[:, i] @ unit[:, j]) for i, j in itertools.combinations(range(3), 2)]
    return float(np.degrees(np.arcsin(min(max(cosines), 1.0))))


def _check_orientation(orientation: str) -> None:
    if len(orientation) != 3 or any(sum(code in pair for code in orientation) != 1 for pair in _AXIS_PAIRS):
        raise ValueError(
            f"orientation must name each of L/R, A/P, S/I once (e.g. 'RAS'), got {orientation!r}"
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
