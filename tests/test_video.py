"""Video files as clips: frames, timing and colour against the frames written, and broken files.

Videos are written with PyAV from known frames: ffv1 (lossless) must decode
exactly; H.264, MPEG-4 part 2 and motion JPEG within a few grey levels.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import medvol
from medvol.cli import main
from medvol.errors import UnreadableFileError
from medvol.io.video import frame_interval
from tests.video_factory import LOSSLESS, LOSSY, smooth_frames, write_video


def as_frames(volume: medvol.Volume) -> np.ndarray:
    """A clip ``(3, X, Y, T)`` back as ``(T, rows, columns, 3)``."""
    return volume.array.transpose(3, 2, 1, 0)


def test_lossless_video_loads_exactly_as_a_clip(tmp_path: Path) -> None:
    frames = smooth_frames(frames=10, rows=24, columns=40)
    suffix, codec, pixel_format = LOSSLESS
    volume = medvol.load(write_video(tmp_path / f"clip{suffix}", frames, codec, pixel_format, fps=25))
    assert volume.array.shape == (3, 40, 24, 10) and volume.array.dtype == np.uint8
    np.testing.assert_array_equal(as_frames(volume), frames)
    assert volume.meta["axes"] == "XYT" and volume.meta["frames"] == 10
    assert volume.meta["frame_interval_ms"] == 40.0
    assert volume.meta["frame_interval_from"] == "average frame rate"
    assert volume.meta["colour"] == "RGB" and volume.meta["codec"] == "ffv1"
    assert volume.meta["pixel_spacing_from"].startswith("none") and volume.spacing == (1.0, 1.0, 1.0)
    assert volume.meta["patient_geometry"] is False and volume.meta["format"] == "video"
    np.testing.assert_array_equal(volume.affine, np.eye(4))


@pytest.mark.parametrize(("suffix", "codec", "pixel_format"), LOSSY, ids=lambda v: str(v))
def test_lossy_videos_decode_close_to_the_frames_written(
    tmp_path: Path, suffix: str, codec: str, pixel_format: str
) -> None:
    frames = smooth_frames(frames=8)
    volume = medvol.load(write_video(tmp_path / f"clip{suffix}", frames, codec, pixel_format, fps=30))
    assert volume.array.shape == (3, 64, 48, 8)
    error = np.abs(as_frames(volume).astype(int) - frames)
    assert error.mean() < 6 and np.percentile(error, 99) < 35
    swapped = np.abs(as_frames(volume)[..., ::-1].astype(int) - frames)  # R and B exchanged
    assert swapped.mean() > 5 * error.mean()
    # each frame is closer to the frame written at its place than to its neighbours: none lost or reordered
    for t in range(1, 7):
        here = np.abs(as_frames(volume)[t].astype(int) - frames[t]).mean()
        assert here < np.abs(as_frames(volume)[t].astype(int) - frames[t - 1]).mean()
        assert here < np.abs(as_frames(volume)[t].astype(int) - frames[t + 1]).mean()
    assert volume.meta["frame_interval_ms"] == pytest.approx(1000 / 30, abs=1e-5)


def test_ntsc_frame_rate(tmp_path: Path) -> None:
    path = write_video(
        tmp_path / "ntsc.mp4", smooth_frames(frames=5), "libx264", "yuv420p", Fraction(30000, 1001)
    )
    assert medvol.load(path).meta["frame_interval_ms"] == pytest.approx(1001 / 30, abs=1e-5)


def test_info_describes_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_video(tmp_path / "clip.mp4", smooth_frames(frames=12), "libx264", "yuv420p", fps=25)
    assert main(["info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [64, 48, 12] and summary["channels"] == 3
    assert summary["frames"] == 12 and summary["frame_rate_hz"] == 25.0 and summary["duration_s"] == 0.48
    assert summary["colour"] == "RGB" and summary["codec"] == "h264" and summary["format"] == "video"
    assert main(["info", str(path)]) == 0
    assert "frame_rate_hz      25.0" in capsys.readouterr().out


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def _cut(path: Path, keep: int | float) -> Path:
    data = path.read_bytes()
    target = path.with_name("cut-" + path.name)
    target.write_bytes(data[: int(keep if isinstance(keep, int) else len(data) * keep)])
    return target


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: _cut(write_video(d / "v.mp4", smooth_frames(), "libx264", "yuv420p"), 0.5), "cannot read"),
        (lambda d: _cut(write_video(d / "v.mkv", smooth_frames()), 0.5), "the file is truncated"),
        (lambda d: _cut(write_video(d / "v.mkv", smooth_frames()), 700), "holds no frame"),
        (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "cannot read as a video"),
        (lambda d: _audio_only(d / "sound.mp4"), "no video stream (streams: audio)"),
    ],
    ids=["truncated-mp4", "truncated-mkv", "zero-frames", "not-a-video", "audio-only"],
)
def test_broken_videos_raise_one_line_naming_the_file(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(UnreadableFileError) as raised:
        medvol.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_missing_pyav_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_video(tmp_path / "clip.mkv", smooth_frames(frames=2))
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(
        UnreadableFileError, match=r"clip\.mkv: reading video files needs PyAV: pip install 'medvol\[video\]'"
    ):
        medvol.load(path)


def test_frame_interval_from_timestamps_and_variable_rate() -> None:
    assert frame_interval(None, [0.0, 0.04, 0.08]) == {
        "frame_interval_ms": 40.0,
        "frame_interval_from": "frame timestamps",
    }
    uneven = frame_interval(25.0, [0.0, 0.04, 0.12, 0.16])
    assert uneven["frame_interval_ms"] == 40.0 and uneven["frame_interval_range_ms"] == [40.0, 80.0]
    assert frame_interval(25.0, [0.0])["frame_interval_ms"] is None
    assert frame_interval(None, [None, None])["frame_interval_ms"] is None
