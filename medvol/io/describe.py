"""What ``medvol info`` says about a loaded scan: geometry and intensities, no patient data.

``describe(volume)`` gives a JSON-ready summary (shape, spacing in mm, RAS
orientation, voxel→RAS affine, dtype, intensity range and the provenance
fields the readers record); ``format_summary`` lays it out as aligned text.
The CLI's ``info`` verb and ``medvol demo`` print both through here.
"""

from __future__ import annotations

from typing import Any

from medvol.volume import Volume

# Provenance keys of ``Volume.meta`` shown when a reader recorded them (none names the patient).
META_KEYS = (
    "patient_position",
    "patient_position_per_slice",
    "image_type",
    "image_type_per_slice",
    "series_uid",
    "series_number",
    "series_description",
    "volume",
    "volume_suffix",
    "channel_volumes",
    "transfer_syntax",
    "gantry_tilt_deg",
    "slice_position_residual_mm",
    "slice_direction_residual_deg",
    "orientation_residual_deg",
    "mosaic",
    "multiframe",
    "colour",
    "photometric_interpretation",
    "codec",
    "axes",
    "frames",
    "frame_interval_ms",
    "frame_rate_hz",
    "duration_s",
    "frame_interval_from",
    "frame_interval_range_ms",
    "frame_interval_skipped",
    "pixel_spacing_from",
    "patient_geometry",
    "slice_step_from",
    "affine_from",
    "sidecar",
)


def describe(volume: Volume) -> dict[str, Any]:
    """The geometry and intensity summary of ``volume``.

    Returns:
        ``path``, ``format``, ``reader``, ``modality``, ``shape`` (X, Y, Z),
        ``channels``, ``spacing`` (mm), ``orientation`` (axis codes, e.g.
        ``"LAS"``), ``affine`` (4×4, voxel → RAS mm), ``dtype``,
        ``intensity_range`` (min, max; ``None`` for an empty array), then any
        of :data:`META_KEYS` the reader recorded (DICOM PatientPosition and
        ImageType, series, geometry notes, colour, and for a clip its frames,
        frame interval, ``frame_rate_hz`` and ``duration_s``, the JSON sidecar
        read) and ``skipped_files`` (a count).
    """
    array = volume.array
    meta = dict(volume.meta)
    interval = meta.get("frame_interval_ms")
    if meta.get("axes") == "XYT" and interval:
        meta["frame_rate_hz"] = round(1000.0 / interval, 3)
        meta["duration_s"] = round(interval * volume.shape[2] / 1000.0, 3)
    summary: dict[str, Any] = {
        "path": meta.get("source_path"),
        "format": meta.get("format"),
        "reader": meta.get("reader"),
        "modality": meta.get("modality"),
        "shape": list(volume.shape),
        "channels": volume.num_channels,
        "spacing": [round(s, 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
        "dtype": str(array.dtype),
        "intensity_range": [_number(array.min()), _number(array.max())] if array.size else None,
    }
    for key in META_KEYS:
        if meta.get(key) is not None:
            summary[key] = meta[key]
    if meta.get("skipped_files"):
        summary["skipped_files"] = len(meta["skipped_files"])
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """``describe``'s summary as indented ``key  value`` lines, the affine as a 4-row block."""
    lines = []
    for key, value in summary.items():
        if key == "affine":
            rows = ["[" + ", ".join(f"{v:10.4f}" for v in row) + "]" for row in value]
            lines.append(f"  {'affine':<18} " + f"\n  {'':<18} ".join(rows))
        elif key == "image_type":
            lines.append(f"  {key:<18} " + "\\".join(value))  # as DICOM writes it: ORIGINAL\PRIMARY
        else:
            lines.append(f"  {key:<18} {value}")
    return "\n".join(lines)


def _number(value: Any) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 6)
