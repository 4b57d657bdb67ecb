"""Small video files written with PyAV from known frames, for the video reader and clip datasets."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: (suffix, codec, pixel format): the lossless one decodes to exactly the frames written.
LOSSLESS = (".mkv", "ffv1", "bgr0")
LOSSY = (
    (".mp4", "libx264", "yuv420p"),
    (".avi", "mpeg4", "yuv420p"),
    (".avi", "mjpeg", "yuvj420p"),
    (".mov", "mpeg4", "yuv420p"),
)


def smooth_frames(frames: int = 12, rows: int = 48, columns: int = 64, seed: int = 0) -> np.ndarray:
    """``(T, rows, columns, 3)`` uint8 RGB: smooth gradients that move and change colour with time
    (lossy codecs keep them within a few grey levels)."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    out = np.empty((frames, rows, columns, 3), dtype=np.uint8)
    for t in range(frames):
        for c in range(3):
            wave = np.sin(x / columns * 2 * np.pi + t * 0.3 + phase[c]) * np.cos(y / rows * np.pi + c)
            out[t, :, :, c] = np.round(127.5 + 100 * wave).astype(np.uint8)
    return out


def write_video(
    path: Path,
    frames: np.ndarray,
    codec: str = "ffv1",
    pixel_format: str = "bgr0",
    fps: Fraction | int = 25,
) -> Path:
    """Encode ``frames`` ``(T, rows, columns, 3)`` uint8 RGB into ``path`` (container from the suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pixel_format
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
