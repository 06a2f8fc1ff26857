"""The few values a volume needs from one uncompressed instance, read without building a pydicom Dataset.

pydicom turns every element of an instance into Python objects (about 1 ms per instance, most of the load
stage for a 155-slice series). ``read_header`` walks the element stream of a Part-10 file in Explicit or
Implicit VR Little Endian with ``struct``, keeps the top-level elements of ``WANTED`` and the location of
the native PixelData, and skips everything else (sequences included, nested or of undefined length).

It returns None — and the caller uses pydicom — for anything else: no preamble, another transfer syntax
(compressed, deflated, big endian), encapsulated or missing pixel data, a length running past the end of
the file, or a wanted value it cannot convert. So it never decides a harder case than pydicom would.

``Header`` answers the part of pydicom's ``Dataset`` API that ``tumorseg.imaging.volume`` uses:
``get(keyword, default)``, attribute access, ``file_meta.get("TransferSyntaxUID")`` and ``PixelData``
(a zero-copy ``memoryview``).
"""

from __future__ import annotations

import math
import struct
from typing import Any

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

# (group, element) → (keyword, VR): geometry, pixel format, identity. Top level only.
WANTED: dict[tuple[int, int], tuple[str, str]] = {
    (0x0008, 0x0016): ("SOPClassUID", "UI"),
    (0x0008, 0x0018): ("SOPInstanceUID", "UI"),
    (0x0020, 0x000E): ("SeriesInstanceUID", "UI"),
    (0x0020, 0x0032): ("ImagePositionPatient", "DS"),
    (0x0020, 0x0037): ("ImageOrientationPatient", "DS"),
    (0x0020, 0x0052): ("FrameOfReferenceUID", "UI"),
    (0x0028, 0x0002): ("SamplesPerPixel", "US"),
    (0x0028, 0x0008): ("NumberOfFrames", "IS"),
    (0x0028, 0x0010): ("Rows", "US"),
    (0x0028, 0x0011): ("Columns", "US"),
    (0x0028, 0x0030): ("PixelSpacing", "DS"),
    (0x0028, 0x0100): ("BitsAllocated", "US"),
    (0x0028, 0x0101): ("BitsStored", "US"),
    (0x0028, 0x0103): ("PixelRepresentation", "US"),
    (0x0028, 0x1052): ("RescaleIntercept", "DS"),
    (0x0028, 0x1053): ("RescaleSlope", "DS"),
}
PIXEL_DATA = (0x7FE0, 0x0010)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAX_DEPTH = 16


class _Unsupported(Exception):
    """Leave this instance to pydicom."""


class Header:
    """Wanted values of one instance (see module docstring)."""

    def __init__(self, values: dict[str, Any], transfer_syntax: str) -> None:
        self._values = values
        self.file_meta = {"TransferSyntaxUID": transfer_syntax}

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self.__dict__["_values"][keyword]
        except KeyError:
            raise AttributeError(keyword) from None


_MULTI = {"ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"}  # always lists


def _value(raw: memoryview, keyword: str, vr: str) -> Any:
    if vr == "US":
        if len(raw) != 2:
            raise _Unsupported
        return _U16.unpack_from(raw)[0]
    text = bytes(raw).decode("ascii").strip("\x00 ")
    if vr == "UI":
        return text
    try:
        numbers = [float(v) for v in text.split("\\")] if text else []
    except ValueError as exc:
        raise _Unsupported from exc
    if not all(math.isfinite(v) for v in numbers):
        raise _Unsupported
    if keyword in _MULTI:
        return numbers
    if len(numbers) > 1:
        raise _Unsupported
    if not numbers:
        return None
    return int(numbers[0]) if vr == "IS" else numbers[0]


class _Reader:
    def __init__(self, data: memoryview, explicit: bool) -> None:
        self.data, self.explicit, self.end = data, explicit, len(data)

    def element(self, pos: int) -> tuple[tuple[int, int], bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at ``pos``."""
        if pos + 8 > self.end:
            raise _Unsupported
        tag = _TAG.unpack_from(self.data, pos)
        if tag[0] == 0xFFFE:  # item and delimiters: no VR in either syntax
            return tag, None, _U32.unpack_from(self.data, pos + 4)[0], pos + 8
        if not self.explicit:
            return tag, None, _U32.unpack_from(self.data, pos + 4)[0], pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > self.end:
                raise _Unsupported
            return tag, vr, _U32.unpack_from(self.data, pos + 8)[0], pos + 12
        return tag, vr, _U16.unpack_from(self.data, pos + 6)[0], pos + 8

    def check_undefined(self, vr: bytes | None) -> None:
        """Only a sequence may have an undefined length here (an explicit-VR UN of undefined length holds
        implicit-VR data: pydicom's job)."""
        if self.explicit and vr != b"SQ":
            raise _Unsupported

    def skip_undefined(self, pos: int, depth: int) -> int:
        """Past a sequence of undefined length starting at ``pos`` (its first item); returns the offset
        after its Sequence Delimitation Item."""
        if depth > _MAX_DEPTH:
            raise _Unsupported
        while True:
            tag, _, length, pos = self.element(pos)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Unsupported
            if length != _UNDEFINED:
                pos += length
                continue
            while True:  # an item of undefined length: a dataset up to the Item Delimitation Item
                tag, vr, length, pos = self.element(pos)
                if tag == _ITEM_END:
                    break
                if length == _UNDEFINED:
                    self.check_undefined(vr)
                    pos = self.skip_undefined(pos, depth + 1)
                else:
                    pos += length

    def walk(self, pos: int, values: dict[str, Any]) -> memoryview | None:
        """Top-level elements from ``pos``: fills ``values``; returns the native PixelData."""
        while pos < self.end:
            tag, vr, length, pos = self.element(pos)
            if tag == PIXEL_DATA:
                if length == _UNDEFINED or pos + length > self.end:
                    raise _Unsupported  # encapsulated (compressed) or truncated: pydicom decides
                return self.data[pos : pos + length]
            if length == _UNDEFINED:
                self.check_undefined(vr)
                pos = self.skip_undefined(pos, 1)
                continue
            if pos + length > self.end:
                raise _Unsupported
            wanted = WANTED.get(tag)
            if wanted is not None:
                keyword, wanted_vr = wanted
                if self.explicit and vr is not None and vr.decode("ascii", "replace") != wanted_vr:
                    raise _Unsupported
                values[keyword] = _value(self.data[pos : pos + length], keyword, wanted_vr)
            pos += length
        return None


def read_header(data: bytes) -> Header | None:
    """The wanted values and native pixels of one Part-10 instance, or None (see module docstring)."""
    view = memoryview(data)
    if len(view) < 132 or bytes(view[128:132]) != b"DICM":
        return None
    try:
        meta = _Reader(view, explicit=True)
        pos, syntax = 132, None
        while pos < len(view) and _TAG.unpack_from(view, pos)[0] == 0x0002:
            tag, _, length, start = meta.element(pos)
            if length == _UNDEFINED or start + length > len(view):
                return None
            if tag == (0x0002, 0x0010):
                syntax = bytes(view[start : start + length]).decode("ascii").strip("\x00 ")
            pos = start + length
        if syntax not in (EXPLICIT_LE, IMPLICIT_LE):
            return None
        values: dict[str, Any] = {}
        pixels = _Reader(view, explicit=syntax == EXPLICIT_LE).walk(pos, values)
    except (_Unsupported, struct.error, UnicodeDecodeError):
        return None
    if pixels is None:
        return None
    values["PixelData"] = pixels
    return Header(values, syntax)
