"""What tells the images at one position apart: echo, time point, b-value, acquisition, image type.

A DICOM series (or one enhanced multi-frame file) may hold several volumes
at the same slice positions: the echoes of a multi-echo sequence, the time
points of a dynamic series (DCE, perfusion, fMRI), the b-values and gradient
directions of a diffusion series, the magnitude, phase or field map of one
acquisition. Each image (a file, or a frame of a multi-frame file) gets a
``Labels`` record: ``(key, value)`` pairs, for the keys of :data:`LABEL_KEYS`
that its header holds. ``medvol.io.dicom_volumes`` splits a series by them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from medvol.io.dicom_elements import HeaderValues

Labels = tuple[tuple[str, float | str], ...]
"""``(key, value)`` pairs, keys in :data:`LABEL_KEYS` order; numbers are floats."""

LABEL_KEYS = (
    "echo",
    "echo_time",
    "b_value",
    "gradient",
    "temporal_position",
    "trigger_time",
    "acquisition",
    "image_type",
    "stack",
    "dimension",
)
"""Every key, in the order that splits a series and sorts its volumes:

- ``echo``: EchoNumbers; ``echo_time``: EchoTime, or MREchoSequence's
  EffectiveEchoTime (ms);
- ``b_value``: DiffusionBValue, top level or MRDiffusionSequence (s/mm²);
  ``gradient``: DiffusionGradientOrientation (unit vector, LPS);
- ``temporal_position``: TemporalPositionIdentifier, or FrameContentSequence's
  TemporalPositionIndex; ``trigger_time``: TriggerTime, or
  CardiacSynchronizationSequence's NominalCardiacTriggerDelayTime (ms);
- ``acquisition``: AcquisitionNumber, or FrameContentSequence's FrameAcquisitionNumber;
- ``image_type``: ImageType, or the frame's FrameType (``ORIGINAL\\PRIMARY\\M\\NONE``);
- ``stack``: FrameContentSequence's StackID;
- ``dimension``: FrameContentSequence's DimensionIndexValues without the
  stack and in-stack position (the last resort of an enhanced file).
"""

VOLUME_KEYS = frozenset({"echo", "echo_time", "b_value", "gradient", "temporal_position"})
"""Keys that are constant within one volume: images that differ in one of them are in
different volumes even when their positions do not collide. The others (acquisition
number, trigger time, image type, stack) vary from slice to slice in many single
volumes, so they split a series only where images share a position."""

CLASSIC_TAGS = [
    "EchoNumbers",
    "EchoTime",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "AcquisitionNumber",
    "DimensionIndexSequence",
]
"""Header tags ``image_labels`` reads (besides ImageType, which medvol reads anyway)."""

IN_STACK_POINTERS = {Tag("InStackPositionNumber"), Tag("ImagePositionPatient"), Tag("StackID")}


def image_labels(ds: Dataset | HeaderValues) -> Labels:
    """The labels of a single-frame image, from its top-level attributes."""
    found: dict[str, float | str] = {}
    _put_number(found, "echo", ds.get("EchoNumbers"))
    _put_number(found, "echo_time", ds.get("EchoTime"))
    _put_number(found, "b_value", ds.get("DiffusionBValue"))
    _put_vector(found, "gradient", ds.get("DiffusionGradientOrientation"))
    _put_number(found, "temporal_position", ds.get("TemporalPositionIdentifier"))
    _put_number(found, "trigger_time", ds.get("TriggerTime"))
    _put_number(found, "acquisition", ds.get("AcquisitionNumber"))
    _put_text(found, "image_type", ds.get("ImageType"))
    return _ordered(found)


def frame_labels(ds: Dataset | HeaderValues) -> tuple[Labels, ...] | None:
    """The labels of every frame of an enhanced multi-frame file, from its per-frame groups.

    Returns ``None`` when the file has no PerFrameFunctionalGroupsSequence.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    in_stack = _in_stack_indices(ds)
    return tuple(_one_frame(item, in_stack) for item in per_frame)


def _one_frame(item: Dataset, in_stack: set[int]) -> Labels:
    found: dict[str, float | str] = {}
    content = _first(item, "FrameContentSequence")
    if content is not None:
        _put_number(found, "temporal_position", content.get("TemporalPositionIndex"))
        _put_number(found, "acquisition", content.get("FrameAcquisitionNumber"))
        _put_text(found, "stack", content.get("StackID"))
        values = content.get("DimensionIndexValues")
        if values not in (None, ""):
            values = [values] if isinstance(values, int) else list(values)
            kept = [str(v) for i, v in enumerate(values) if i not in in_stack]
            if kept:
                found["dimension"] = ",".join(kept)
    echo = _first(item, "MREchoSequence")
    if echo is not None:
        _put_number(found, "echo_time", echo.get("EffectiveEchoTime"))
    diffusion = _first(item, "MRDiffusionSequence")
    if diffusion is not None:
        _put_number(found, "b_value", diffusion.get("DiffusionBValue"))
        direction = _first(diffusion, "DiffusionGradientDirectionSequence")
        if direction is not None:
            _put_vector(found, "gradient", direction.get("DiffusionGradientOrientation"))
    cardiac = _first(item, "CardiacSynchronizationSequence")
    if cardiac is not None:
        _put_number(found, "trigger_time", cardiac.get("NominalCardiacTriggerDelayTime"))
    for frame_type_macro in ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence"):
        frame_type = _first(item, frame_type_macro)
        if frame_type is not None:
            _put_text(found, "image_type", frame_type.get("FrameType"))
    return _ordered(found)


def _in_stack_indices(ds: Dataset | HeaderValues) -> set[int]:
    """Which DimensionIndexValues entries give the stack or the position in it (not a volume)."""
    pointers = ds.get("DimensionIndexSequence") or []
    return {i for i, item in enumerate(pointers) if item.get("DimensionIndexPointer") in IN_STACK_POINTERS}


def _first(item: Dataset, keyword: str) -> Dataset | None:
    sequence = item.get(keyword)
    return sequence[0] if sequence else None


def _put_number(found: dict[str, float | str], key: str, value: Any) -> None:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        if value not in (None, ""):
            found[key] = float(value)
    except (TypeError, ValueError):
        found[key] = str(value).strip()


def _put_vector(found: dict[str, float | str], key: str, value: Any) -> None:
    if value not in (None, ""):
        found[key] = ",".join(f"{float(v):.4f}" for v in value)


def _put_text(found: dict[str, float | str], key: str, value: Any) -> None:
    if value in (None, ""):
        return
    values = [value] if isinstance(value, str) else list(value)
    found[key] = "\\".join(str(v).strip() for v in values)


def _ordered(found: dict[str, float | str]) -> Labels:
    return tuple((key, found[key]) for key in LABEL_KEYS if key in found)
