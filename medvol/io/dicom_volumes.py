"""Several volumes in one DICOM series: split by echo, time point, b-value, acquisition, image type.

A series, or one enhanced multi-frame file, may hold several volumes at the
same slice positions. ``split_volumes`` groups its images (files, or frames)
into volumes:

1. Images that differ in a key of ``VOLUME_KEYS`` (echo number or time,
   b-value, gradient, temporal position) are in different volumes.
2. Where images of one group still share a position, the first further key
   of ``LABEL_KEYS`` (trigger time, acquisition number, image type, stack,
   dimension index) that alone gives volumes of the same positions splits
   them; failing that, keys are added in that order while images collide.
3. Every volume must then hold one image at each position, at the same
   positions as the others; a series that cannot be split so is refused with
   the frames (or files) that break it.

Volumes are numbered from 1 in the order of the splitting keys' values (echo
1 before echo 2, time point 1 before 2; ``LABEL_KEYS`` order between keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medvol.errors import SeriesError
from medvol.io.dicom import POSITION_TOLERANCE_MM, _unit_axes
from medvol.io.dicom_headers import SliceHeader, image_name, pair_name
from medvol.io.dicom_labels import LABEL_KEYS, VOLUME_KEYS, Labels

LABEL_TEXT = {
    "echo": "echo {}",
    "echo_time": "TE {} ms",
    "b_value": "b {} s/mm²",
    "gradient": "gradient ({})",
    "temporal_position": "time point {}",
    "trigger_time": "trigger {} ms",
    "acquisition": "acquisition {}",
    "image_type": "image type {}",
    "stack": "stack {}",
    "dimension": "dimension index {}",
    "instance": "instance {}",
}

# ImageType / FrameType values and the file-name part dcm2niix gives them (magnitude: none).
IMAGE_TYPE_SUFFIX = {
    "P": "ph",
    "PHASE": "ph",
    "R": "real",
    "REAL": "real",
    "I": "imaginary",
    "IMAGINARY": "imaginary",
    "B0_MAP": "fieldmaphz",
    "FIELD_MAP": "fieldmaphz",
    "B0": "fieldmaphz",
}

IMAGE_TYPE_ORDER = ("", "ph", "real", "imaginary", "fieldmaphz")


@dataclass(frozen=True)
class VolumeGroup:
    """One volume of a series.

    Attributes:
        number: 1-based, in the documented order.
        images: its slices (files, or frames of one multi-frame file), unsorted.
        labels: the values it holds of the keys in which the volumes differ.
        suffix: the file-name part ``medvol convert`` adds, e.g. ``_e2`` (dcm2niix's convention).
    """

    number: int
    images: tuple[SliceHeader, ...]
    labels: Labels
    suffix: str

    def describe(self) -> str:
        """``echo 2, TE 9.6 ms``; ``all images`` for the only volume of a series."""
        parts = [LABEL_TEXT[key].format(_number_text(value)) for key, value in self.labels]
        return ", ".join(parts) or "all images"


def frame_images(header: SliceHeader) -> list[SliceHeader]:
    """The frames of an enhanced multi-frame file as images (``frame`` 1-based, as stored).

    Raises:
        SeriesError: the per-frame functional groups do not give every frame a position.
    """
    labels = header.frame_labels
    if labels is not None and len(labels) != header.frames:
        raise SeriesError(
            header.path,
            f"PerFrameFunctionalGroupsSequence has {len(labels)} item(s) for NumberOfFrames {header.frames}",
        )
    if header.frame_positions is None or len(header.frame_positions) != header.frames:
        raise SeriesError(
            header.path,
            f"multi-frame file with {header.frames} frames but no per-frame PlanePositionSequence",
        )
    return [
        replace(
            header,
            position=position,
            frames=1,
            frame_positions=None,
            frame_labels=None,
            labels=() if labels is None else labels[index],
            frame=index + 1,
            instance_number=index,
        )
        for index, position in enumerate(header.frame_positions)
    ]


def split_volumes(images: Sequence[SliceHeader], source: Path) -> list[VolumeGroup]:
    """Group a series' images (or one file's frames) into volumes, in the documented order.

    Args:
        images: single-frame images (``SliceHeader``), e.g. from ``frame_images``.
        source: what errors name: the series' folder or the multi-frame file.

    Raises:
        SeriesError: images share a position and nothing tells them apart, or
            the volumes do not hold the same positions (a slice missing from one).
    """
    slots = _position_slots(images)
    values = [dict(image.labels) for image in images]
    keys = _split_keys(values, slots)
    groups: dict[tuple[float | str | None, ...], list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault(tuple(value.get(key) for key in keys), []).append(index)
    ordered = sorted(groups, key=lambda group: [_sort_value(k, v) for k, v in zip(keys, group, strict=True)])
    members = [groups[group] for group in ordered]
    for indices in members:
        _check_one_per_position([images[i] for i in indices], slots[indices], source)
    shown = _shown_keys(values, members, keys)
    volumes = [
        VolumeGroup(
            number=number,
            images=tuple(images[i] for i in indices),
            labels=tuple((key, values[indices[0]][key]) for key in shown if key in values[indices[0]]),
            suffix="",
        )
        for number, indices in enumerate(members, 1)
    ]
    _check_same_positions(images, members, slots, volumes, source)
    _check_dimension_indices(images, values, members, volumes, source)
    return _with_suffixes(volumes, keys)


def mosaic_volumes(mosaics: Sequence[SliceHeader]) -> list[VolumeGroup]:
    """The Siemens mosaics of one series, one volume each, ordered by the keys in which they
    differ (``LABEL_KEYS`` order), then InstanceNumber."""
    values = [dict(mosaic.labels) for mosaic in mosaics]
    keys = tuple(key for key in LABEL_KEYS if len({v.get(key) for v in values}) > 1)

    def order(index: int) -> tuple[object, ...]:
        instance = mosaics[index].instance_number
        return (
            *(_sort_value(key, values[index].get(key)) for key in keys),
            instance or 0,
            mosaics[index].path,
        )

    volumes = []
    for number, index in enumerate(sorted(range(len(mosaics)), key=order), 1):
        labels = tuple((key, values[index][key]) for key in keys if key in values[index])
        if len(mosaics) > 1 and not labels:
            labels = (("instance", float(mosaics[index].instance_number or number)),)
        volumes.append(VolumeGroup(number=number, images=(mosaics[index],), labels=labels, suffix=""))
    return _with_suffixes(volumes, keys)


def choose_volume(volumes: Sequence[VolumeGroup], choice: int | str, source: Path) -> VolumeGroup:
    """The volume numbered ``choice`` (1-based, as listed)."""
    if isinstance(choice, int) or str(choice).isdigit():
        number = int(choice)
        if 1 <= number <= len(volumes):
            return volumes[number - 1]
    raise SeriesError(source, f"no volume {choice!r}; the volumes are:\n{volume_listing(volumes)}")


def volume_listing(volumes: Sequence[VolumeGroup]) -> str:
    """Numbered lines, one per volume: ``  2: echo 2, TE 9.6 ms (8 slices, suffix _e2)``."""
    lines = []
    for volume in volumes:
        suffix = f"suffix {volume.suffix}" if volume.suffix else "no suffix"
        lines.append(f"  {volume.number}: {volume.describe()} ({len(volume.images)} slices, {suffix})")
    return "\n".join(lines)


def _position_slots(images: Sequence[SliceHeader]) -> np.ndarray:
    """One slot number per image: images within POSITION_TOLERANCE_MM along the normal share one."""
    normal = _unit_axes(images[0])[2]
    for image in images:
        if image.position is None:
            raise SeriesError(
                image.path, f"{image.frame_prefix}no ImagePositionPatient: the slice cannot be placed"
            )
    distance = np.array([image.position for image in images], dtype=np.float64) @ normal
    order = np.argsort(distance, kind="stable")
    new_slot = np.concatenate([[0], np.diff(distance[order]) >= POSITION_TOLERANCE_MM])
    slots = np.empty(len(images), dtype=np.int64)
    slots[order] = np.cumsum(new_slot)
    return slots


def _split_keys(values: Sequence[dict[str, float | str]], slots: np.ndarray) -> tuple[str, ...]:
    """The keys that split the images: every volume key that varies, then what separates collisions.

    The first further key (``LABEL_KEYS`` order) that alone gives volumes of the same
    positions wins: a trigger time that changes from slice to slice does not cut a
    dynamic series into slivers when its acquisition numbers tell the volumes apart.
    Otherwise keys are added one by one while images still share a position.
    """
    keys = [key for key in LABEL_KEYS if key in VOLUME_KEYS and len({v.get(key) for v in values}) > 1]
    if not _collides(values, slots, keys):
        return tuple(keys)
    candidates = [
        key for key in LABEL_KEYS if key not in keys and _varies_at_a_position(values, slots, keys, key)
    ]
    for key in candidates:
        if _splits_evenly(values, slots, [*keys, key]):
            return tuple(k for k in LABEL_KEYS if k in (*keys, key))
    for key in candidates:
        if not _collides(values, slots, keys):
            break
        if _varies_at_a_position(values, slots, keys, key):
            keys.append(key)
    return tuple(key for key in LABEL_KEYS if key in keys)


def _splits_evenly(values: Sequence[dict[str, float | str]], slots: np.ndarray, keys: Sequence[str]) -> bool:
    """Grouping by ``keys`` gives one image per position in each group, at the same positions."""
    held: dict[tuple[float | str | None, ...], list[int]] = {}
    for v, slot in zip(values, slots, strict=True):
        held.setdefault(tuple(v.get(key) for key in keys), []).append(int(slot))
    positions = [sorted(group) for group in held.values()]
    return all(len(set(p)) == len(p) and p == positions[0] for p in positions)


def _collides(values: Sequence[dict[str, float | str]], slots: np.ndarray, keys: Sequence[str]) -> bool:
    seen = {(tuple(v.get(key) for key in keys), int(slot)) for v, slot in zip(values, slots, strict=True)}
    return len(seen) < len(values)


def _varies_at_a_position(
    values: Sequence[dict[str, float | str]], slots: np.ndarray, keys: Sequence[str], key: str
) -> bool:
    found: dict[tuple[object, ...], set[float | str | None]] = {}
    for v, slot in zip(values, slots, strict=True):
        found.setdefault((*(v.get(k) for k in keys), int(slot)), set()).add(v.get(key))
    return any(len(seen) > 1 for seen in found.values())


def _check_one_per_position(images: Sequence[SliceHeader], slots: np.ndarray, source: Path) -> None:
    first_at: dict[int, SliceHeader] = {}
    normal = _unit_axes(images[0])[2]
    for image, slot in zip(images, slots, strict=True):
        other = first_at.setdefault(int(slot), image)
        if other is not image:
            where = float(_position(image) @ normal)
            raise SeriesError(
                source,
                f"{pair_name(other, image, source)} share a position ({where:.3f} mm along the normal) and "
                "no echo, time point, b-value, acquisition number, image type or dimension index tells "
                "them apart",
            )


def _check_same_positions(
    images: Sequence[SliceHeader],
    members: Sequence[list[int]],
    slots: np.ndarray,
    volumes: Sequence[VolumeGroup],
    source: Path,
) -> None:
    """Every volume holds an image at every position of the others, at the same place."""
    if len(members) < 2:
        return
    normal = _unit_axes(images[0])[2]
    by_slot = [{int(slots[i]): images[i] for i in indices} for indices in members]
    every = set().union(*by_slot)
    for volume, held in zip(volumes, by_slot, strict=True):
        missing = sorted(every - set(held))
        if missing:
            other_volume, other = next(
                (v, h[missing[0]]) for v, h in zip(volumes, by_slot, strict=True) if missing[0] in h
            )
            where = float(np.asarray(other.position) @ normal)
            raise SeriesError(
                source,
                f"volume {volume.number} ({volume.describe()}) has no image at {where:.3f} mm along the "
                f"normal, where volume {other_volume.number} has {image_name(other, source)}; "
                f"{len(missing)} position(s) "
                "missing: the volumes do not hold the same slices",
            )
    reference = by_slot[0]
    for volume, held in zip(volumes[1:], by_slot[1:], strict=True):
        for slot, image in held.items():
            offset = float(np.linalg.norm(np.subtract(_position(image), _position(reference[slot]))))
            if offset > POSITION_TOLERANCE_MM:
                raise SeriesError(
                    source,
                    f"volume {volume.number} ({volume.describe()}) is not on volume 1's grid: "
                    f"{image_name(image, source)} lies {offset:.3f} mm from "
                    f"{image_name(reference[slot], source)}",
                )


def _check_dimension_indices(
    images: Sequence[SliceHeader],
    values: Sequence[dict[str, float | str]],
    members: Sequence[list[int]],
    volumes: Sequence[VolumeGroup],
    source: Path,
) -> None:
    """The frames of one volume have the same DimensionIndexValues (besides stack and position)."""
    if len(volumes) < 2:
        return
    for volume, indices in zip(volumes, members, strict=True):
        first_with: dict[float | str | None, int] = {}
        for index in indices:
            first_with.setdefault(values[index].get("dimension"), index)
        if len(first_with) > 1:
            (a, one), (b, other) = list(first_with.items())[:2]
            raise SeriesError(
                source,
                f"{pair_name(images[one], images[other], source)} are both in volume {volume.number} "
                f"({volume.describe()}) but their DimensionIndexValues differ ({a} and {b}): the per-frame "
                "functional groups disagree",
            )


def _position(image: SliceHeader) -> np.ndarray:
    """ImagePositionPatient (LPS, mm); ``_position_slots`` has checked it is there."""
    return np.asarray(image.position, dtype=np.float64)


def _shown_keys(
    values: Sequence[dict[str, float | str]], members: Sequence[list[int]], keys: Sequence[str]
) -> tuple[str, ...]:
    """The splitting keys, and every other key constant within each volume that differs between them."""
    if len(members) < 2:
        return ()
    shown = []
    for key in LABEL_KEYS:
        per_volume = [{values[i].get(key) for i in indices} for indices in members]
        constant = all(len(seen) == 1 for seen in per_volume)
        if key in keys or (constant and len(set().union(*per_volume)) > 1):
            shown.append(key)
    return tuple(shown)


def _with_suffixes(volumes: list[VolumeGroup], keys: Sequence[str]) -> list[VolumeGroup]:
    """Give each volume its file-name suffix (``_e1``, ``_t3``, ``_b1000``, ``_ph``...)."""
    if len(volumes) == 1:
        return [replace(volumes[0], suffix="")]
    ranks = {key: _ranks([dict(v.labels).get(key) for v in volumes]) for key in keys}
    names = []
    for index, volume in enumerate(volumes):
        labels = dict(volume.labels)
        parts = []
        for key in keys:
            value = labels.get(key)
            if key == "echo":
                parts.append(f"e{_number_text(value)}")
            elif key == "echo_time" and "echo" not in keys:
                parts.append(f"e{ranks[key][index]}")
            elif key == "temporal_position":
                parts.append(f"t{_number_text(value)}")
            elif key == "trigger_time" and "temporal_position" not in keys:
                parts.append(f"t{ranks[key][index]}")
            elif key == "b_value":
                parts.append(f"b{_number_text(value)}")
            elif key in ("gradient", "dimension"):
                parts.append(f"{key[0]}{ranks[key][index]}")
            elif key in ("acquisition", "stack"):
                parts.append(f"{key[0]}{_number_text(value)}")
        image_type = _image_type_suffix(labels.get("image_type"))
        parts += [image_type] if image_type else []
        names.append("_" + "_".join(parts) if parts else "")
    if len(set(names)) < len(names):  # one volume (a magnitude) may go without a suffix
        names = [f"_v{volume.number}" for volume in volumes]
    return [replace(volume, suffix=name) for volume, name in zip(volumes, names, strict=True)]


def _image_type_suffix(image_type: float | str | None) -> str:
    if not isinstance(image_type, str):
        return ""
    values = image_type.upper().split("\\")
    return next((IMAGE_TYPE_SUFFIX[v] for v in values if v in IMAGE_TYPE_SUFFIX), "")


def _ranks(values: Sequence[float | str | None]) -> list[int]:
    """1-based rank of each value among the distinct values."""
    distinct = sorted(set(values), key=lambda value: _sort_value("", value))
    return [distinct.index(value) + 1 for value in values]


def _sort_value(key: str, value: float | str | None) -> tuple[int, float, str]:
    """Missing values first, then numbers, then text; image types magnitude, phase, real,
    imaginary, field map, others."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, float):
        return (1, value, "")
    if key == "image_type":
        return (2, float(IMAGE_TYPE_ORDER.index(_image_type_suffix(value))), value)
    return (2, 0.0, value)


def _number_text(value: float | str | None) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)
