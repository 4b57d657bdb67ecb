"""The DICOM header scan: one open per file, no pixel data, and the same headers as pydicom gives.

``read_header`` reads the common file with ``medvol.io.dicom_elements`` (a
walk over the raw elements) and every other file with pydicom. These tests
guard the speed-up functionally, not by timing (``benchmarks/bench_dicom_scan.py``
times it): a scan opens each file once, reads at most one chunk past its
header, does not call pydicom's reader for common files, and gives exactly
the ``SliceHeader`` (or the error) that pydicom's reader gives, for every kind
of file medvol meets.
"""

from __future__ import annotations

import builtins
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.values import convert_value

from medvol.errors import MedvolError
from medvol.io import dicom_elements, dicom_headers
from medvol.io.dicom import scan_folder
from tests.dicom_factory import Geometry, write_dicomdir_like, write_enhanced, write_series, write_text_sr

BIG = Geometry(rows=96, columns=128, slices=4)  # 24 KiB of pixel data per file: more than one read


class CountingFile:
    """A file object that counts the bytes read through it."""

    def __init__(self, handle: Any, counts: dict[str, int]) -> None:
        self._handle, self._counts = handle, counts

    def read(self, *args: Any) -> bytes:
        data = self._handle.read(*args)
        self._counts["bytes"] += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.fixture
def file_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, int]]:
    """Per path: how often it was opened and how many bytes were read from it."""
    reads: dict[str, dict[str, int]] = {}
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, *args, **kwargs)
        if not isinstance(file, str | Path) or "b" not in (args[0] if args else kwargs.get("mode", "r")):
            return handle
        counts = reads.setdefault(str(file), {"opens": 0, "bytes": 0})
        counts["opens"] += 1
        return CountingFile(handle, counts)

    monkeypatch.setattr(builtins, "open", counting_open)
    return reads


def pixel_offset(path: Path) -> int:
    """Where a file's Pixel Data element starts (pydicom's own reading)."""
    with open(path, "rb") as handle:
        pydicom.dcmread(handle, stop_before_pixels=True)
        return handle.tell()


def test_scan_opens_each_file_once_and_reads_no_pixel_data(
    tmp_path: Path, file_reads: dict[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = write_series(tmp_path / "series", BIG)
    write_enhanced(tmp_path / "enhanced" / "multiframe.dcm", BIG)
    (tmp_path / "series" / "notes.txt").write_text("not DICOM\n")
    dcmread_calls: list[str] = []
    real_dcmread = pydicom.dcmread

    def spy(fp: Any, *args: Any, **kwargs: Any) -> Any:
        dcmread_calls.append(str(getattr(fp, "name", fp)))
        return real_dcmread(fp, *args, **kwargs)

    offsets = {path: pixel_offset(path) for path in (item.path for item in truth.slices)}
    monkeypatch.setattr(dicom_headers.pydicom, "dcmread", spy)
    file_reads.clear()
    series, skipped = scan_folder(tmp_path)

    assert [len(item.headers) for item in series] == [4, 1]
    assert [Path(item.path).name for item in skipped] == ["notes.txt"]
    for path, offset in offsets.items():
        counts = file_reads[str(path)]
        assert counts["opens"] == 1, f"{path.name} opened {counts['opens']} times"
        limit = offset + dicom_elements.FIRST_READ
        assert counts["bytes"] <= limit < path.stat().st_size, f"{path.name}: pixel data read"
    # Only the enhanced multi-frame file (sequences of per-frame geometry) needs pydicom's reader.
    assert [Path(name).name for name in dcmread_calls] == ["multiframe.dcm"]


def header_or_error(read: Any, path: Path) -> Any:
    try:
        return read(path)
    except MedvolError as error:
        return type(error).__name__, str(error)


def resave(source: Path, target: Path, syntax: UID) -> Path:
    """``source`` written again in another transfer syntax (pydicom converts the encoding)."""
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = syntax
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    pydicom.dcmwrite(target, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
    return target


def with_extras(source: Path, target: Path) -> Path:
    """``source`` with undefined-length sequences (one nested), a private block and a UN element."""
    ds = pydicom.dcmread(source)
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D0050", "SRT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.AnatomicRegionSequence = DicomSequence([inner])
    ds.ReferencedImageSequence = DicomSequence([item])
    for element in (ds["ReferencedImageSequence"], item["AnatomicRegionSequence"]):
        element.is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    block = ds.private_block(0x0029, "MEDVOL TEST", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 40)  # 10 KiB: longer than the first read
    block.add_new(0x11, "UN", b"\x01\x02\x03\x04")
    ds.save_as(target, enforce_file_format=True)
    return target


def edited(source: Path, target: Path, **values: Any) -> Path:
    ds = pydicom.dcmread(source)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return target


def varied_files(folder: Path) -> list[Path]:
    """One of each kind of file a scan meets, the broken ones included."""
    plain = write_series(folder / "plain", BIG).slices[0].path
    out = folder / "variants"
    out.mkdir()
    good = plain.read_bytes()
    files = [
        plain,
        resave(plain, out / "implicit.dcm", ImplicitVRLittleEndian),
        resave(plain, out / "big_endian.dcm", ExplicitVRBigEndian),
        with_extras(plain, out / "sequences_private_un.dcm"),
        edited(plain, out / "latin1.dcm", SpecificCharacterSet="ISO_IR 100", SeriesDescription="Schädel"),
        edited(plain, out / "multi_echo.dcm", EchoNumbers=2, EchoTime="4.5", ImageType=["DERIVED", "MOSAIC"]),
        write_enhanced(out / "enhanced.dcm", BIG).slices[0].path,
        write_text_sr(out / "report.dcm"),
        write_dicomdir_like(out / "DICOMDIR"),
    ]
    broken = {
        "empty.dcm": b"",
        "notes.txt": b"not DICOM at all\n",
        "cut_in_meta.dcm": good[:150],
        "cut_in_header.dcm": good[:400],
        "cut_in_pixels.dcm": good[:-100],
        "no_pixels.dcm": good[: pixel_offset(plain)],
    }
    for name, data in broken.items():
        (out / name).write_bytes(data)
        files.append(out / name)
    return files


def test_fast_headers_equal_pydicom_headers(tmp_path: Path) -> None:
    files = varied_files(tmp_path)
    for path in files:
        expected = header_or_error(dicom_headers._read_header_with_pydicom, path)
        assert header_or_error(dicom_headers.read_header, path) == expected, path.name
    tags = dicom_headers.HEADER_TAG_NUMBERS
    left_to_pydicom = {path.name for path in files if dicom_elements.read_elements(path, tags) is None}
    needs_pydicom = {"big_endian.dcm", "latin1.dcm", "enhanced.dcm", "cut_in_meta.dcm", "cut_in_header.dcm"}
    assert left_to_pydicom == needs_pydicom


def test_fast_headers_equal_pydicom_headers_on_real_files(shared_data: Path) -> None:
    files = sorted(path for path in (shared_data / "dicom").rglob("*") if path.is_file())
    assert files
    for path in files:
        expected = header_or_error(dicom_headers._read_header_with_pydicom, path)
        assert header_or_error(dicom_headers.read_header, path) == expected, path


@pytest.mark.parametrize(
    ("vr", "raw"),
    [
        ("DS", b"1.5\\-2.25 "),
        ("DS", b" 0.7\\0.70"),
        ("DS", b"-1024"),
        ("DS", b"1e-3\\+4.0E2"),
        ("IS", b"12 "),
        ("IS", b"+5\\-007"),
        ("CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
        ("CS", b" HFS"),
        ("UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
        ("LO", b"abc \\def "),
        ("SH", b"T1 "),
        ("US", b"\x01\x00\x02\x00"),
        ("SS", b"\xff\xff"),
        ("UL", b"\x00\x01\x00\x00"),
        ("FD", struct.pack("<2d", 0.5, -1.25)),
        ("FL", struct.pack("<f", 2.5)),
        ("DS", b""),
        ("IS", b""),
        ("CS", b""),
        ("US", b""),
    ],
)
def test_values_are_pydicoms(vr: str, raw: bytes) -> None:
    element = RawDataElement(Tag(0x00091001), vr, len(raw), raw, 0, False, True)
    expected = convert_value(vr, element)
    value = dicom_elements._value(vr, raw)
    if isinstance(expected, list | MultiValue):
        assert value == list(expected)
        assert all(isinstance(theirs, type(ours)) for ours, theirs in zip(value, expected, strict=True))
    else:
        assert value == expected
        assert isinstance(expected, type(value))  # pydicom gives a subclass (DSfloat, IS, UID)


@pytest.mark.parametrize(
    ("vr", "raw"),
    [
        ("IS", b"1.0"),  # pydicom keeps a float
        ("DS", b"1,5"),
        ("DS", b"1.5\\"),
        ("LO", "Schädel".encode("latin-1")),
        ("LO", b"\x1b$B"),  # ISO 2022 escape: the character set decides
        ("US", b"\x01\x00\x02"),
        ("PN", b"Doe^Jane"),  # never read by medvol; left to pydicom
        ("SQ", b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),
    ],
)
def test_unusual_values_are_left_to_pydicom(vr: str, raw: bytes) -> None:
    with pytest.raises(dicom_elements._Unusual):
        dicom_elements._value(vr, raw)
