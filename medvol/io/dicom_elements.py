"""The few header elements medvol needs, read straight from a DICOM file's bytes.

pydicom's ``dcmread`` builds a ``Dataset`` of every element before medvol
asks for the twenty-odd it needs, and that is most of the cost of a header
scan (``docs/benchmarks.md``, "Large DICOM folders"). ``read_elements`` opens
the file once, walks its elements with ``struct`` (skipping the values of the
others, sequences included), stops before the pixel data and converts only
the wanted elements, to the values pydicom would give.

It takes the common file only: little endian (explicit or implicit VR), the
wanted elements plain numbers, ASCII strings or UIDs. For anything else (big
endian, deflated, a wanted element that is a sequence, as in enhanced
multi-frame files, non-ASCII text, an unusual VR, a number that does not
parse, a file cut short or unreadable) it returns ``None`` and the caller
reads the file with pydicom, so every check and error stays pydicom's.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import empty_value_for_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

FIRST_READ = 8 * 1024
"""Bytes read at once (one read of an unbuffered file): most headers fit, and a scan reads
at most this much beyond the header."""
PREAMBLE = 132  # 128-byte preamble and b"DICM"
UNDEFINED = 0xFFFFFFFF
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
"""Float, double float and integer pixel data: where pydicom's ``stop_before_pixels`` stops."""
ITEM, ITEM_END, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
SHORT_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_16)
LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
DS_CHARACTERS = frozenset("0123456789+-.eE ")
META_TAGS = (0x00020002, 0x00020010)  # MediaStorageSOPClassUID, TransferSyntaxUID
ELEMENT = struct.Struct("<HHI")  # implicit VR: group, element, 32-bit length
EXPLICIT = struct.Struct("<HH2sH")  # explicit VR: group, element, VR, 16-bit length
LONG_LENGTH = struct.Struct("<I")


class _Unusual(Exception):
    """The file needs pydicom's reader (internal: never leaves this module)."""


class HeaderValues:
    """Element values by keyword: the part of pydicom's ``Dataset`` medvol's header code uses.

    ``ds.get("Rows")``, ``"Rows" in ds``, ``ds.Rows`` and ``ds.file_meta`` work
    as on a ``Dataset``; values are ``str``, ``int``, ``float`` or lists of them
    (where pydicom gives its ``str``, ``int`` and ``float`` subclasses).
    """

    __slots__ = ("_values", "file_meta")

    def __init__(self, values: dict[str, Any], file_meta: HeaderValues | None = None) -> None:
        self._values = values
        self.file_meta: HeaderValues = self if file_meta is None else file_meta  # file meta: itself

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __contains__(self, keyword: object) -> bool:
        return keyword in self._values

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self._values[keyword]
        except KeyError:
            raise AttributeError(keyword) from None


@dataclass(frozen=True)
class RawHeader:
    """What ``read_elements`` found in one file.

    ``values`` is ``None`` for a file without the DICOM preamble. ``stop`` is
    the offset of the pixel data element (the file size when there is none),
    ``pixel_element`` the (up to) 12 bytes there: where pydicom's reader stops.
    """

    size: int
    values: HeaderValues | None
    stop: int = 0
    pixel_element: bytes = b""


class _Window:
    """The bytes of an open file around the walk's position, read in chunks as it moves on."""

    def __init__(self, handle: FileIO, size: int) -> None:
        self.handle, self.size = handle, size
        self.base = 0
        self.data = handle.read(FIRST_READ)

    def fetch(self, position: int, count: int) -> int:
        """Make ``count`` bytes from file offset ``position`` available; return their index in ``data``."""
        index = position - self.base
        if index >= 0 and index + count <= len(self.data):
            return index
        if position + count > self.size:
            raise _Unusual("the file ends inside an element")
        self.handle.seek(position)
        self.data, self.base = self.handle.read(max(count, FIRST_READ)), position
        if len(self.data) < count:
            raise _Unusual("the file changed while it was read")
        return 0


def read_elements(path: Path, tags: Sequence[int]) -> RawHeader | None:
    """Read the elements ``tags`` (file meta ones included) of one file without pydicom's reader.

    Returns:
        The values, or ``None`` when the file needs pydicom (see the module
        docstring). An empty file gives ``RawHeader(size=0, values=None)``.
    """
    wanted = _wanted(tuple(tags))
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            window = _Window(handle, size)
            if size < PREAMBLE or window.data[128:PREAMBLE] != b"DICM":
                return RawHeader(size, None)
            return _read(window, wanted)
    except (OSError, _Unusual, struct.error, ValueError):
        return None


@dataclass(frozen=True)
class _Wanted:
    """The wanted tags, their keywords, and their VRs for implicit VR files."""

    keywords: dict[int, str]
    implicit_vrs: dict[int, str]


NOTHING = _Wanted({}, {})


@functools.lru_cache(maxsize=8)
def _wanted(tags: tuple[int, ...]) -> _Wanted:
    keywords = {int(tag): keyword_for_tag(tag) for tag in tags}
    return _Wanted(keywords, {tag: dictionary_VR(tag) for tag in keywords})


def _read(window: _Window, wanted: _Wanted) -> RawHeader:
    """File meta (always explicit VR little endian), then the data set up to the pixel data."""
    meta_wanted = _wanted(META_TAGS)
    meta: dict[int, tuple[str, bytes]] = {}
    position = _walk(window, PREAMBLE, False, meta_wanted, meta, meta_group=True)
    syntax = meta.get(0x00020010, ("UI", b""))[1].rstrip(b"\x00 ").decode("ascii", "replace")
    implicit = _syntax_is_implicit(syntax)
    found: dict[int, tuple[str, bytes]] = {}
    stop = _walk(window, position, implicit, wanted, found)
    index = window.fetch(stop, min(12, window.size - stop))
    pixel_element = bytes(window.data[index : index + min(12, window.size - stop)])
    file_meta = HeaderValues(_convert(meta, meta_wanted))
    return RawHeader(window.size, HeaderValues(_convert(found, wanted), file_meta), stop, pixel_element)


@functools.lru_cache(maxsize=64)
def _syntax_is_implicit(syntax: str) -> bool:
    """True for Implicit VR Little Endian; raises ``_Unusual`` for syntaxes pydicom must read."""
    uid = pydicom.uid.UID(syntax)
    if not uid.is_transfer_syntax or not uid.is_little_endian or uid.is_deflated:
        raise _Unusual(f"transfer syntax {syntax!r}")
    return bool(uid.is_implicit_VR)


def _walk(
    window: _Window,
    position: int,
    implicit: bool,
    wanted: _Wanted,
    found: dict[int, tuple[str, bytes]],
    meta_group: bool = False,
    in_item: bool = False,
) -> int:
    """Walk elements from ``position``, keeping the raw values of the wanted ones in ``found``.

    Stops at the first element that is not file meta (``meta_group``), at the
    end of a sequence item (``in_item``), else at the pixel data or the end of
    the file. Returns the offset where it stopped (after an item's end).
    """
    size = window.size
    while position < size:
        index, data = position - window.base, window.data
        if index < 0 or index + 12 > len(data):  # 12: the longest element header
            index, data = window.fetch(position, min(12, size - position)), window.data
        group, element, length = ELEMENT.unpack_from(data, index)
        tag = group << 16 | element
        if meta_group and group != 2:
            return position
        if in_item and (group, element) == ITEM_END:
            return position + 8
        if not in_item and tag in PIXEL_TAGS:
            return position
        vr_bytes, header = b"", 8
        if not implicit:
            _, _, vr_bytes, length = EXPLICIT.unpack_from(data, index)
            if vr_bytes in LONG_VRS:
                length, header = LONG_LENGTH.unpack_from(data, index + 8)[0], 12
            elif vr_bytes not in SHORT_VRS:
                raise _Unusual(f"VR {vr_bytes!r}")
        keep = tag in wanted.keywords
        if length == UNDEFINED:
            if keep:
                raise _Unusual("a wanted element is a sequence")
            position = _skip_items(window, position + header, implicit or vr_bytes == b"UN")
            continue
        if keep:
            vr = vr_bytes.decode() if vr_bytes else wanted.implicit_vrs[tag]
            start = window.fetch(position + header, length)
            found[tag] = (vr, bytes(window.data[start : start + length]))
        position += header + length
    if in_item or position > window.size:
        raise _Unusual("the file ends inside an element")
    return position


def _skip_items(window: _Window, position: int, implicit: bool) -> int:
    """Skip an undefined-length sequence's items (or pixel data fragments); return the offset after it."""
    while True:
        group, element, length = ELEMENT.unpack_from(window.data, window.fetch(position, 8))
        if (group, element) == SEQUENCE_END:
            return position + 8
        if (group, element) != ITEM:
            raise _Unusual("no item in a sequence")
        if length == UNDEFINED:
            position = _walk(window, position + 8, implicit, NOTHING, {}, in_item=True)
        else:
            position += 8 + length


def _convert(raw: dict[int, tuple[str, bytes]], wanted: _Wanted) -> dict[str, Any]:
    return {wanted.keywords[tag]: _value(vr, value) for tag, (vr, value) in raw.items()}


def _value(vr: str, raw: bytes) -> Any:
    """The value pydicom gives an element: one value, or a list for several; ``_Unusual`` when unsure."""
    if vr == "SQ":
        raise _Unusual("a wanted element is a sequence")
    if not raw:
        return empty_value_for_VR(vr)
    if vr in NUMBER_FORMATS:
        size = struct.calcsize("<" + NUMBER_FORMATS[vr])
        if len(raw) % size:
            raise _Unusual(f"{vr} value of {len(raw)} bytes")
        numbers = list(struct.unpack(f"<{len(raw) // size}{NUMBER_FORMATS[vr]}", raw))
        return numbers[0] if len(numbers) == 1 else numbers
    if not raw.isascii() or b"\x1b" in raw:
        raise _Unusual("text beyond ASCII: pydicom decodes it with the character set")
    text = raw.decode("ascii")
    if vr in ("UI", "CS"):  # interned: the slices of a series share one copy of each UID and code
        items: list[Any] = [sys.intern(item) for item in text.rstrip(" \x00").split("\\")]
    elif vr in ("SH", "LO"):
        items = [sys.intern(item.rstrip("\x00 ")) for item in text.split("\\")]
    elif vr == "DS":
        strings = text.strip().rstrip(" \x00").split("\\")
        if not all(item.strip() and DS_CHARACTERS.issuperset(item) for item in strings):
            raise _Unusual(f"DS value {text!r}")
        items = [float(item) for item in strings]
    elif vr == "IS":
        strings = text.rstrip(" \x00").split("\\")
        if not all(item.strip().lstrip("+-").isdigit() for item in strings):
            raise _Unusual(f"IS value {text!r}")
        items = [int(item) for item in strings]
    else:
        raise _Unusual(f"VR {vr}")
    return items[0] if len(items) == 1 else items
