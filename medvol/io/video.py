"""Video files as clips: ``.mp4``, ``.avi``, ``.mov``, ``.mkv``... read through PyAV (FFmpeg).

``load_video(path)`` decodes the first video stream into a ``Volume`` of shape
``(3, X, Y, T)`` uint8 R, G, B (x along the columns, y down the rows, frames
along the third axis), with the ``meta`` notes a DICOM clip has
(``medvol.io.dicom_clips``): ``axes`` ``"XYT"``, ``frames``,
``frame_interval_ms`` and ``frame_interval_from``, ``colour``,
``pixel_spacing_from`` and ``patient_geometry``. A video carries no pixel
spacing and no place in the patient: the affine is the identity (1 mm pixels,
said so in ``pixel_spacing_from: "none"``), its third column a unit step
standing for one frame.

The frame interval is 1000 / the stream's average frame rate (ms); when the
container does not state one, the mean step between frame timestamps. When
the timestamps step unevenly (variable frame rate), ``frame_interval_range_ms``
holds the smallest and largest step.

PyAV is an optional dependency (``pip install 'medvol[video]'``), imported
only when a video is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvol.errors import UnreadableFileError
from medvol.volume import Volume

MESSAGE_LENGTH = 300
"""Decoder messages are cut to this many characters, to keep errors to one line."""
UNEVEN_STEP = 0.05
"""Timestamp steps differing by more than this fraction of their mean count as a variable frame rate."""


def load_video(path: Path) -> Volume:
    """Every frame of the first video stream of ``path`` as a clip ``(3, X, Y, T)`` uint8 RGB.

    Raises:
        UnreadableFileError: PyAV is missing, the file is not a video (or has no
            video stream), holds no frame, or stops before the frames its
            header announces (a truncated file); naming the file.
    """
    av = _import_av(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({stream.type for stream in container.streams}) or ["none"]
                raise UnreadableFileError(path, f"no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            announced, said = _announced_frames(stream, container)
            frames, stamps = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                stamps.append(None if frame.time is None else float(frame.time))
            notes = _stream_notes(stream, av)
    except av.FFmpegError as error:
        raise UnreadableFileError(path, f"cannot read as a video ({_message(error)})") from error
    if not frames:
        raise UnreadableFileError(path, "the video stream holds no frame")
    if announced and len(frames) < announced:
        raise UnreadableFileError(path, f"decoded {len(frames)} frame(s), {said}: the file is truncated")
    array = np.stack(frames).transpose(3, 2, 1, 0)  # (T, rows, columns, RGB) -> (C, X, Y, T)
    affine = np.eye(4)
    meta: dict[str, Any] = {
        "source_path": str(path),
        "format": "video",
        "reader": f"PyAV {av.__version__}",
        "modality": None,
        "axes": "XYT",
        "frames": len(frames),
        **frame_interval(notes.pop("rate"), stamps),
        "colour": "RGB",
        **notes,
        "pixel_spacing_from": "none: a video file carries no pixel spacing, 1 mm assumed",
        "patient_geometry": False,
        "affine_from": "image axes: x along the columns, y down the rows, origin 0, one step per frame",
        "source_affine": affine.tolist(),
        "source_shape": list(array.shape[1:]),
    }
    return Volume(array=np.ascontiguousarray(array), affine=affine, meta=meta)


def _import_av(path: Path) -> Any:
    """The ``av`` module, or an error naming the file and the extra that installs it."""
    try:
        import av
    except ImportError as error:
        raise UnreadableFileError(
            path, "reading video files needs PyAV: pip install 'medvol[video]' (or pip install av)"
        ) from error
    return av


def _message(error: Any) -> str:
    """FFmpeg's reason, without the file name the error repeats."""
    text = str(getattr(error, "strerror", None) or error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:MESSAGE_LENGTH] if lines else type(error).__name__


def _announced_frames(stream: Any, container: Any) -> tuple[int, str]:
    """The fewest frames the header promises (0 when it promises none), and how it says so.

    The stream's frame count; else the container's duration times the
    average frame rate, less one frame for rounding.
    """
    if stream.frames:
        return int(stream.frames), f"the header announces {stream.frames}"
    rate = stream.average_rate
    if container.duration and rate:
        seconds = container.duration / 1_000_000
        expected = round(seconds * float(rate))
        return (
            expected - 1,
            f"the header's duration ({seconds:g} s at {float(rate):g} frames/s) makes {expected}",
        )
    return 0, ""


def _stream_notes(stream: Any, av: Any) -> dict[str, Any]:
    """The codec and the stated average frame rate (frames/s, ``None`` when unknown) of a stream."""
    rate = stream.average_rate or stream.guessed_rate
    return {
        "codec": stream.codec_context.name,
        "rate": float(rate) if rate else None,
    }


def frame_interval(rate: float | None, stamps: list[float | None]) -> dict[str, Any]:
    """``frame_interval_ms`` and where it came from, as ``medvol.io.dicom_clips.frame_interval`` says it.

    Args:
        rate: the stream's average frame rate in frames/s, ``None`` when unknown.
        stamps: each decoded frame's presentation time in s (``None`` when unknown).

    Returns:
        ``frame_interval_ms`` (``None`` for one frame or no timing),
        ``frame_interval_from``, and ``frame_interval_range_ms`` ``[min, max]``
        when the timestamps step unevenly.
    """
    if len(stamps) == 1:
        return {"frame_interval_ms": None, "frame_interval_from": "one frame"}
    known = [s for s in stamps if s is not None]
    steps = np.diff(np.sort(known)) * 1000.0 if len(known) == len(stamps) else np.zeros(0)
    notes: dict[str, Any] = {}
    if rate:
        notes = {"frame_interval_ms": round(1000.0 / rate, 6), "frame_interval_from": "average frame rate"}
    elif steps.size and steps.min() > 0:
        notes = {
            "frame_interval_ms": round(float(steps.mean()), 6),
            "frame_interval_from": "frame timestamps",
        }
    else:
        return {"frame_interval_ms": None, "frame_interval_from": "unknown: no frame rate nor timestamps"}
    if steps.size and steps.max() - steps.min() > UNEVEN_STEP * steps.mean():
        notes["frame_interval_range_ms"] = [round(float(steps.min()), 6), round(float(steps.max()), 6)]
    return notes
