"""The fast header reader against pydicom: same values where it reads, None (pydicom decides) elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.dicom_factory import mr_instance, pydicom_read, to_bytes
from tumorseg.imaging.header import WANTED, read_header
from tumorseg.imaging.volume import _native_pixels, load_series

KEYWORDS = [keyword for keyword, _ in WANTED.values()]


def instance(**changes: object) -> Dataset:
    ds = pydicom_read(mr_instance("HDR", "1.2.3", "1.2.3.4", 5))
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-10"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def nested_sequences() -> Sequence:
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "123", "SCT"
    inner.ImagePositionPatient = [9, 9, 9]  # inside a sequence: must not count
    outer = Dataset()
    outer.ConceptNameCodeSequence = Sequence([inner])
    outer.Rows = 999
    return Sequence([outer, Dataset()])


def assert_same_as_pydicom(data: bytes) -> None:
    header, ds = read_header(data), pydicom_read(data)
    assert header is not None
    for keyword in KEYWORDS:
        expected = ds.get(keyword)
        got = header.get(keyword)
        if isinstance(expected, (list, tuple)) or type(expected).__name__ == "MultiValue":
            assert got == [float(v) for v in expected], keyword
        elif expected is None or expected == "":
            assert got in (None, ""), keyword
        else:
            assert got == type(got)(expected), keyword
    assert bytes(header.PixelData) == ds.PixelData
    np.testing.assert_array_equal(_native_pixels(header), ds.pixel_array)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"]
)
@pytest.mark.parametrize("undefined_lengths", [False, True], ids=["defined", "undefined"])
def test_values_equal_pydicom_with_sequences_skipped(syntax: str, undefined_lengths: bool) -> None:
    ds = instance(ReferencedImageSequence=nested_sequences(), NumberOfFrames=1)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.is_little_endian, ds.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    if undefined_lengths:
        ds.ReferencedImageSequence.is_undefined_length = True
        for item in ds.ReferencedImageSequence:
            item.is_undefined_length_sequence_item = True
        ds.ReferencedImageSequence[0].ConceptNameCodeSequence.is_undefined_length = True
    data = to_bytes(ds)
    assert_same_as_pydicom(data)
    header = read_header(data)
    assert header is not None and header.Rows == 8 and header.ImagePositionPatient == [0.0, 0.0, 5.0]


@pytest.mark.parametrize("signed", [0, 1])
def test_bits_above_bits_stored_are_handled_as_pydicom_does(signed: int) -> None:
    raw = np.array([0x0FFF, 0xF123, 0x0800, 0x1005] * 16, dtype=np.uint16)
    ds = instance(BitsStored=12, HighBit=11, PixelRepresentation=signed, PixelData=raw.tobytes())
    assert_same_as_pydicom(to_bytes(ds))


def test_what_it_cannot_read_is_left_to_pydicom() -> None:
    plain = to_bytes(instance())
    assert read_header(plain) is not None
    assert read_header(plain[:-10]) is None  # truncated pixel data
    assert read_header(plain[128:]) is None  # no preamble
    assert read_header(b"\0" * 100) is None
    compressed = instance()
    compressed.compress(RLELossless)
    assert read_header(to_bytes(compressed)) is None
    assert b"0.0\\0.0\\5.0" in plain
    assert read_header(plain.replace(b"0.0\\0.0\\5.0", b"0.0\\0.0\\x.0")) is None  # not a number
    no_pixels = instance()
    del no_pixels.PixelData
    assert read_header(to_bytes(no_pixels)) is None


def test_a_series_loads_the_same_with_and_without_the_fast_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [mr_instance("HDR", "1.2.3", "1.2.3.9", i) for i in range(6)]
    fast = load_series(files, "fast")
    monkeypatch.setattr("tumorseg.imaging.volume.read_header", lambda data: None)
    slow = load_series(files, "slow")
    import SimpleITK as sitk

    np.testing.assert_array_equal(sitk.GetArrayFromImage(fast.image), sitk.GetArrayFromImage(slow.image))
    assert fast.image.GetOrigin() == slow.image.GetOrigin()
    assert fast.image.GetSpacing() == slow.image.GetSpacing()
    assert fast.image.GetDirection() == slow.image.GetDirection()
    assert fast.sop_instance_uids == slow.sop_instance_uids
    assert (fast.series_instance_uid, fast.frame_of_reference_uid, fast.sop_class_uid) == (
        slow.series_instance_uid,
        slow.frame_of_reference_uid,
        slow.sop_class_uid,
    )


def test_an_undefined_length_un_element_is_left_to_pydicom() -> None:
    """Explicit VR UN of undefined length holds implicit-VR items: not for the fast reader."""
    import struct

    plain = to_bytes(instance())
    start = 144 + struct.unpack_from("<I", plain, 140)[0]  # after the file meta group (its length at 140)
    item = b"\x10\x00\x10\x00" + struct.pack("<I", 4) + b"ABCD"  # implicit VR (0010,0010)
    un = (
        b"\x09\x00\x01\x10UN\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + item
        + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    assert read_header(plain[:start] + un + plain[start:]) is None
