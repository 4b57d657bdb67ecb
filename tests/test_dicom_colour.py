"""Colour DICOM and clips: channel order, frame count, frame timing, spacing, and broken input.

Synthetic files are written with pydicom (JPEG baseline frames encoded by
Pillow and encapsulated by pydicom); every loaded value is compared with the
source array and with SimpleITK/GDCM and dcm2niix reading the same file. The
colour and ultrasound files that ship with pydicom (written by GDCM, DCMTK
and ultrasound scanners) are checked against SimpleITK too.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.tag import Tag
from pydicom.uid import JPEGBaseline8Bit

import medvol
from medvol.errors import MedvolError, SeriesError, UnreadableFileError
from medvol.io import load_all
from medvol.io.dicom_clips import PLANAR_MIN_PIXELS, _sample_layout
from tests.dicom_factory import IDENTIFIERS, base_dataset, write
from tests.test_dicom_synthetic import dcm2niix_executable

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
FRAMES, ROWS, COLUMNS = 5, 48, 64


def smooth_frames(frames: int = FRAMES, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """``(frames, rows, columns, 3)`` uint8 R, G, B: smooth, different in every channel and frame."""
    t, r, c = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(columns), indexing="ij")
    red = 30 + 150 * c / columns + 6 * t
    green = 50 + 120 * r / rows + 20 * np.sin(c / 9.0)
    blue = 120 + 60 * np.cos((r + c) / 15.0) - 4 * t
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def jpeg_frame(rgb: np.ndarray, subsampling: int) -> bytes:
    """One RGB frame as a JPEG baseline stream (YCbCr; subsampling 0 = 4:4:4, 1 = 4:2:2)."""
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "JPEG", quality=95, subsampling=subsampling)
    return out.getvalue()


def write_clip(
    path: Path,
    rgb: np.ndarray,
    *,
    photometric: str = "RGB",
    planar: int = 0,
    jpeg: int | None = None,
    sop_class: str = US_MULTIFRAME,
    timing: dict[str, object] | None = None,
    multiframe: bool = True,
) -> Path:
    """Write ``rgb`` ``(frames, rows, columns, 3)`` as a colour file.

    Args:
        photometric: ``RGB`` or ``YBR_FULL`` (native: converted here); for
            ``jpeg`` the interpretation matching the subsampling.
        planar: PlanarConfiguration of native data (0 interleaved, 1 by plane).
        jpeg: Pillow's subsampling (0 = 4:4:4, 1 = 4:2:2) to write JPEG baseline.
        timing: FrameTime, FrameTimeVector, CineRate... (default FrameTime 40 ms).
    """
    frames, rows, columns, _ = rgb.shape
    ds = base_dataset(sop_class)
    ds.Modality = "US" if sop_class == US_MULTIFRAME else "OT"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesNumber = 3
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = planar
    if multiframe:
        ds.NumberOfFrames = frames
        for keyword, value in (timing if timing is not None else {"FrameTime": 40.0}).items():
            setattr(ds, keyword, value)
        if "FrameTime" in ds or "FrameTimeVector" in ds:
            ds.FrameIncrementPointer = Tag("FrameTime" if "FrameTime" in ds else "FrameTimeVector")
    if jpeg is not None:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422" if jpeg == 1 else "YBR_FULL"
        ds.PlanarConfiguration = 0
        ds.PixelData = encapsulate([jpeg_frame(frame, jpeg) for frame in rgb])
        ds["PixelData"].VR = "OB"
    else:
        ds.PhotometricInterpretation = photometric
        stored = convert_color_space(rgb, "RGB", "YBR_FULL") if photometric != "RGB" else rgb
        if planar == 1:
            stored = stored.transpose(0, 3, 1, 2)  # all R, then all G, then all B, frame by frame
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        ds["PixelData"].VR = "OB"
    return write(ds, path)


def as_source(volume: medvol.Volume) -> np.ndarray:
    """A loaded clip ``(3, X, Y, T)`` back in the source's ``(frames, rows, columns, 3)`` order."""
    return volume.array.transpose(3, 2, 1, 0)


def sitk_frames(path: Path) -> np.ndarray:
    """SimpleITK/GDCM's reading of a colour file: ``(frames, rows, columns, 3)``."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return array.reshape(-1, *array.shape[-3:])


def dcm2niix_frames(path: Path, out: Path) -> np.ndarray:
    """dcm2niix's RGB24 NIfTI of one file, as ``(frames, rows, columns, 3)`` (it stores rows bottom-up)."""
    source, out = out / "in", out / "out"
    source.mkdir(parents=True)
    out.mkdir()
    (source / path.name).write_bytes(path.read_bytes())
    result = subprocess.run(
        [dcm2niix_executable(), "-z", "n", "-f", "clip", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = np.asarray(nib.load(out / "clip.nii").dataobj)
    rgb = np.stack([data["R"], data["G"], data["B"]], axis=-1)  # (X, Y, T, 3), y flipped
    return rgb[:, ::-1].transpose(2, 1, 0, 3)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvol", *map(str, args)], capture_output=True, text=True, timeout=120
    )


# --- colour, uncompressed and JPEG baseline -------------------------------------------------


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_clip_loads_frames_along_the_third_axis_in_rgb_order(tmp_path: Path, planar: int) -> None:
    rgb = smooth_frames()
    path = write_clip(tmp_path / "clip.dcm", rgb, planar=planar)
    volume = medvol.load(path)
    assert volume.array.shape == (3, COLUMNS, ROWS, FRAMES)
    np.testing.assert_array_equal(as_source(volume), rgb)
    np.testing.assert_array_equal(sitk_frames(path), rgb)  # the oracle agrees with the source
    meta = volume.meta
    assert meta["axes"] == "XYT" and meta["frames"] == FRAMES and meta["colour"] == "RGB"
    assert meta["frame_interval_ms"] == 40.0 and meta["frame_interval_from"] == "FrameTime"
    assert meta["patient_geometry"] is False
    assert meta["pixel_spacing_from"].startswith("none") and volume.spacing == (1.0, 1.0, 1.0)


def test_rgb_clip_matches_dcm2niix(tmp_path: Path) -> None:
    rgb = smooth_frames()
    path = write_clip(tmp_path / "clip.dcm", rgb, planar=1)
    np.testing.assert_array_equal(as_source(medvol.load(path)), dcm2niix_frames(path, tmp_path / "d"))


def test_ybr_full_uncompressed_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = smooth_frames()
    path = write_clip(tmp_path / "ybr.dcm", rgb, photometric="YBR_FULL")
    volume = medvol.load(path)
    assert volume.meta["photometric_interpretation"] == "YBR_FULL"
    # YCbCr holds 8-bit values: rounding twice moves a channel by at most 2.
    assert np.abs(as_source(volume).astype(int) - rgb).max() <= 2
    assert np.abs(as_source(volume).astype(int) - sitk_frames(path)).max() <= 2


@pytest.mark.parametrize(("subsampling", "photometric"), [(0, "YBR_FULL"), (1, "YBR_FULL_422")])
def test_jpeg_baseline_clip_decodes_to_rgb(tmp_path: Path, subsampling: int, photometric: str) -> None:
    rgb = smooth_frames()
    path = write_clip(tmp_path / "jpeg.dcm", rgb, jpeg=subsampling)
    volume = medvol.load(path)
    assert volume.array.shape == (3, COLUMNS, ROWS, FRAMES)
    assert volume.meta["photometric_interpretation"] == photometric
    loaded = as_source(volume).astype(int)
    # Lossy: quality 95 keeps smooth frames within a few grey levels (channels swapped or left in
    # YCbCr would be off by tens).
    assert np.abs(loaded - rgb).mean() < 2.0 and np.abs(loaded - rgb).max() <= 16
    assert np.abs(loaded - sitk_frames(path)).max() <= 3
    assert np.abs(loaded - dcm2niix_frames(path, tmp_path / "d")).max() <= 6


def test_single_frame_colour_picture_is_one_frame(tmp_path: Path) -> None:
    rgb = smooth_frames(frames=1)
    path = write_clip(tmp_path / "sc.dcm", rgb, sop_class=SECONDARY_CAPTURE, multiframe=False)
    volume = medvol.load(path)
    assert volume.array.shape == (3, COLUMNS, ROWS, 1)
    np.testing.assert_array_equal(as_source(volume), rgb)
    assert volume.meta["frames"] == 1 and volume.meta["frame_interval_ms"] is None


def test_colour_slices_with_positions_load_as_a_spatial_volume(tmp_path: Path) -> None:
    rgb = smooth_frames(frames=3)
    for index, frame in enumerate(rgb):
        path = write_clip(tmp_path / "series" / f"{index}.dcm", frame[np.newaxis], multiframe=False)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [10, 20, 2.5 * (2 - index)]  # written in reverse order
        ds.PixelSpacing = [0.5, 0.8]
        ds.save_as(path)
    volume = medvol.load(tmp_path / "series")
    assert volume.array.shape == (3, COLUMNS, ROWS, 3) and "axes" not in volume.meta
    np.testing.assert_array_equal(as_source(volume), rgb[::-1])  # sorted along the normal
    np.testing.assert_allclose(volume.spacing, (0.8, 0.5, 2.5))


# --- clip timing and spacing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("timing", "interval", "source"),
    [
        ({"FrameTimeVector": [0, 40, 40, 40, 40]}, 40.0, "FrameTimeVector"),
        ({"CineRate": 25}, 40.0, "CineRate"),
        ({"RecommendedDisplayFrameRate": 50}, 20.0, "RecommendedDisplayFrameRate"),
        ({"FrameTime": 0, "CineRate": 20}, 50.0, "CineRate"),
        ({}, None, "unknown"),
    ],
)
def test_frame_interval_comes_from_the_timing_the_file_has(
    tmp_path: Path, timing: dict[str, object], interval: float | None, source: str
) -> None:
    volume = medvol.load(write_clip(tmp_path / "clip.dcm", smooth_frames(), timing=timing))
    assert volume.meta["frame_interval_ms"] == interval
    assert volume.meta["frame_interval_from"].startswith(source)


def test_uneven_frame_times_give_their_mean_and_range(tmp_path: Path) -> None:
    timing = {"FrameTimeVector": [0, 30, 40, 50, 40]}
    volume = medvol.load(write_clip(tmp_path / "clip.dcm", smooth_frames(), timing=timing))
    assert volume.meta["frame_interval_ms"] == 40.0
    assert volume.meta["frame_interval_range_ms"] == [30.0, 50.0]


def test_ultrasound_region_gives_the_pixel_spacing(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.dcm", smooth_frames())
    ds = pydicom.dcmread(path)
    doppler, image = Dataset(), Dataset()
    doppler.update({"PhysicalUnitsXDirection": 4, "PhysicalUnitsYDirection": 7})  # seconds, cm/s
    doppler.PhysicalDeltaX, doppler.PhysicalDeltaY = 0.01, 0.5
    image.PhysicalUnitsXDirection = image.PhysicalUnitsYDirection = 3  # cm
    image.PhysicalDeltaX, image.PhysicalDeltaY = 0.025, 0.03
    image.RegionLocationMinX0, image.RegionLocationMinY0 = 0, 0
    image.RegionLocationMaxX1, image.RegionLocationMaxY1 = COLUMNS - 1, ROWS - 1
    ds.SequenceOfUltrasoundRegions = [doppler, image]
    ds.save_as(path)
    volume = medvol.load(path)
    np.testing.assert_allclose(volume.spacing, (0.25, 0.3, 1.0))
    assert volume.meta["pixel_spacing_from"].startswith("SequenceOfUltrasoundRegions (region 2 of 2")


def test_grey_cine_without_positions_is_a_one_channel_clip(tmp_path: Path) -> None:
    ds = base_dataset(XA)
    ds.Modality, ds.SeriesInstanceUID = "XA", pydicom.uid.generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.3, 0.2]
    ds.FrameTimeVector = [0, 66.7, 66.7, 66.7]
    ds.FrameIncrementPointer = Tag("FrameTimeVector")
    grey = smooth_frames(frames=4)[..., 0]
    ds.PixelData = grey.tobytes()
    volume = medvol.load(write(ds, tmp_path / "xa.dcm"))
    assert volume.array.shape == (1, COLUMNS, ROWS, 4) and "colour" not in volume.meta
    np.testing.assert_array_equal(volume.array[0].transpose(2, 1, 0), grey)
    np.testing.assert_allclose(volume.spacing, (0.2, 0.3, 1.0))
    assert volume.meta["frame_interval_ms"] == 66.7


def test_info_describes_a_clip(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.dcm", smooth_frames(), jpeg=1)
    result = run_cli("info", path, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["shape"] == [COLUMNS, ROWS, FRAMES] and summary["channels"] == 3
    assert summary["axes"] == "XYT" and summary["frames"] == FRAMES
    assert summary["frame_interval_ms"] == 40.0 and summary["frame_rate_hz"] == 25.0
    assert summary["duration_s"] == 0.2
    assert summary["colour"] == "RGB" and summary["photometric_interpretation"] == "YBR_FULL_422"
    text = run_cli("info", path).stdout
    assert "frame_rate_hz      25.0" in text and not any(value in text for value in IDENTIFIERS)


# --- several pictures in one folder -------------------------------------------------------


def test_a_folder_of_pictures_is_not_stacked(tmp_path: Path) -> None:
    rgb = smooth_frames(frames=3)
    for index, frame in enumerate(rgb):
        path = write_clip(tmp_path / "photos" / f"{index}.dcm", frame[np.newaxis], multiframe=False)
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.InstanceNumber = "1.2.3.4", index + 1
        ds.save_as(path)
    with pytest.raises(SeriesError, match=r"3 of them are single 2D pictures .* never stacks"):
        medvol.load(tmp_path / "photos")
    volumes = load_all(tmp_path / "photos")
    assert [v.array.shape for v in volumes] == [(3, COLUMNS, ROWS, 1)] * 3
    assert sorted(as_source(v)[0, 0, 0].tolist() for v in volumes) == sorted(
        frame[0, 0].tolist() for frame in rgb
    )


# --- files written by other tools (shipped with pydicom) ----------------------------------


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not among pydicom's installed test files")
    return Path(str(path))


@pytest.mark.parametrize(
    ("name", "shape", "tolerance"),
    [
        ("examples_ybr_color.dcm", (3, 320, 240, 30), 3),  # ultrasound cine, JPEG baseline YBR_FULL_422
        ("examples_rgb_color.dcm", (3, 320, 240, 1), 0),  # ultrasound, RGB
        ("ExplVR_BigEnd.dcm", (3, 80, 60, 1), 0),  # ultrasound, RGB by plane, big endian
        ("examples_jpeg2k.dcm", (3, 640, 480, 1), 0),  # ultrasound, JPEG 2000 YBR_RCT
        ("SC_rgb_rle_2frame.dcm", (3, 100, 100, 2), 0),  # secondary capture, RLE
        ("SC_ybr_full_422_uncompressed.dcm", (3, 100, 100, 1), 0),
        ("SC_rgb_jpeg_dcmtk.dcm", (3, 100, 100, 1), 0),  # DCMTK, JPEG baseline YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", (3, 100, 100, 1), 2),  # DCMTK, JPEG baseline YBR_FULL_422
        ("SC_jpeg_no_color_transform.dcm", (3, 256, 256, 1), 1),  # JPEG baseline holding RGB
    ],
)
def test_colour_files_from_other_tools_match_simpleitk(
    name: str, shape: tuple[int, ...], tolerance: int
) -> None:
    path = pydicom_file(name)
    volume = medvol.load(path)
    assert volume.array.shape == shape and volume.meta["colour"] == "RGB"
    assert np.abs(as_source(volume).astype(int) - sitk_frames(path)).max() <= tolerance


def test_real_ultrasound_cine_timing_and_spacing() -> None:
    volume = medvol.load(pydicom_file("examples_ybr_color.dcm"))
    assert volume.meta["frame_interval_ms"] == pytest.approx(33.333)
    region = pydicom.dcmread(pydicom_file("examples_ybr_color.dcm")).SequenceOfUltrasoundRegions[0]
    np.testing.assert_allclose(volume.spacing[:2], (region.PhysicalDeltaX * 10, region.PhysicalDeltaY * 10))


# --- broken input ------------------------------------------------------------------------


def _truncated_native(tmp_path: Path) -> Path:
    path = write_clip(tmp_path / "broken.dcm", smooth_frames())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - int(2.5 * ROWS * COLUMNS * 3)])  # 2.5 frames cut off
    return path


def _short_native(tmp_path: Path) -> Path:
    path = write_clip(tmp_path / "broken.dcm", smooth_frames())
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: 3 * ROWS * COLUMNS * 3]  # a complete element holding 3 frames
    ds.save_as(path)
    return path


def _truncated_jpeg(tmp_path: Path) -> Path:
    path = write_clip(tmp_path / "broken.dcm", smooth_frames(), jpeg=1)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])  # inside the fifth frame's fragment
    return path


def _missing_fragments(tmp_path: Path) -> Path:
    path = write_clip(tmp_path / "broken.dcm", smooth_frames(), jpeg=1)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([jpeg_frame(frame, 1) for frame in smooth_frames()[:3]])
    ds.save_as(path)
    return path


def _planar_lie(stated: int) -> object:
    def write_lie(tmp_path: Path) -> Path:
        path = write_clip(tmp_path / "broken.dcm", smooth_frames(), planar=1 - stated)
        ds = pydicom.dcmread(path)
        ds.PlanarConfiguration = stated
        ds.save_as(path)
        return path

    return write_lie


def _edit(**values: object) -> object:
    def write_edited(tmp_path: Path) -> Path:
        path = write_clip(tmp_path / "broken.dcm", smooth_frames())
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        return path

    return write_edited


BROKEN = [
    (
        "truncated-native",
        _truncated_native,
        r"NumberOfFrames is 5 but the file ends after 2 whole frame\(s\)",
    ),
    ("short-native", _short_native, r"NumberOfFrames is 5 but the data holds 3 whole frame\(s\)"),
    (
        "truncated-jpeg",
        _truncated_jpeg,
        r"NumberOfFrames is 5 but the file ends inside compressed fragment 5 \(4 complete\)",
    ),
    ("missing-fragments", _missing_fragments, "NumberOfFrames is 5 but the compressed pixel data holds 3"),
    ("planar-says-0", _planar_lie(0), r"PlanarConfiguration is 0 .* laid out as one plane per colour"),
    ("planar-says-1", _planar_lie(1), r"PlanarConfiguration is 1 .* laid out as interleaved R,G,B"),
    ("zero-frames", _edit(NumberOfFrames=0), "NumberOfFrames is 0"),
    (
        "colour-as-grey",
        _edit(PhotometricInterpretation="MONOCHROME2"),
        "SamplesPerPixel is 3 but Photometric",
    ),
    ("not-time", _edit(FrameIncrementPointer=Tag("SliceLocationVector")), "follow SliceLocationVector"),
]


@pytest.mark.parametrize(("case", "make", "message"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_broken_colour_input_is_refused_in_one_line(tmp_path: Path, case: str, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(MedvolError, match=message) as raised:
        medvol.load(path)
    assert isinstance(raised.value, UnreadableFileError | SeriesError)
    assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)
    target = tmp_path / "out.nii.gz"
    result = run_cli("convert", path, target)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and str(path) in result.stderr
    assert not target.exists() and not (tmp_path / "out.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.dcm"]


def test_layout_check_never_claims_the_wrong_layout() -> None:
    """pydicom's colour files, each frame re-laid both ways: the check may abstain, never be wrong."""
    folder = pydicom_file("SC_rgb_rle.dcm").parent
    recognised = {0: 0, 1: 0}
    files = 0
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            if ds.get("SamplesPerPixel") != 3:
                continue
            image = ds.pixel_array
        except Exception:  # pydicom's corrupt-on-purpose files
            continue
        image = image[0] if image.ndim == 4 else image
        if image.shape[0] * image.shape[1] < PLANAR_MIN_PIXELS:
            continue
        files += 1
        for layout, stream in ((0, image.reshape(-1)), (1, image.transpose(2, 0, 1).reshape(-1))):
            found = _sample_layout(stream.astype(np.float64))
            assert found in (None, layout), f"{path.name}: layout {layout} read as {found}"
            recognised[layout] += found == layout
    assert files >= 25 and recognised[0] >= 20 and recognised[1] >= 3, (files, recognised)
