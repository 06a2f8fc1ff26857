"""Fuzzing the DICOM headers of one series through ``load_series`` and ``check_overlap``.

A small valid series has one header attribute of one or all of its instances replaced by a hostile value
(NaN, infinities, zero, negative, huge, empty, text, binary junk, the wrong number of values), deleted,
or has a slice position duplicated; it is written as Explicit VR, Implicit VR or RLE-compressed
Part-10 bytes. Whatever the headers say, ``load_series`` either returns a volume with a finite,
positive-spaced, orthonormal lattice, or raises an error of the tumorseg tree (``TumorsegError``, HTTP
4xx) — never anything else, which the API would answer as a bare 500. ``check_overlap`` of such a
volume against a valid series answers the same way.

Values are written as raw element bytes (``RawDataElement``), so pydicom's own validation cannot soften
them: the files hold exactly what a broken modality or a crafted upload could send. A decompression bomb,
US values of the wrong byte length and the inputs the fuzz found (each answered 500 before it was fixed)
are explicit tests at the end.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.dicom_factory import pydicom_read, to_bytes, volume_series
from tumorseg.errors import SeriesApart, SeriesTooLarge, TumorsegError
from tumorseg.imaging.volume import SeriesVolume, check_overlap, load_series
from tumorseg.limits import InputLimits

LIMITS = InputLimits()
SLICES = 4


def _field(points: np.ndarray) -> np.ndarray:
    return 3.0 * points[:, 0] - 2.0 * points[:, 1] + 5.0 * points[:, 2] + 100.0


def base_series() -> list[bytes]:
    """Six rows, five columns, four slices, 20° oblique, anisotropic, with a modality rescale."""
    angle = math.radians(20)
    return volume_series(
        _field,
        rows=6,
        columns=5,
        slices=SLICES,
        origin=(-10.0, 20.0, 30.0),
        row_dir=(1.0, 0.0, 0.0),
        col_dir=(0.0, math.cos(angle), -math.sin(angle)),
        pixel_spacing=(0.9, 1.1),
        slice_spacing=2.5,
        rescale=(2.0, -10.0),
    )


BASE = base_series()
BASE_VOLUME = load_series(BASE, "base", limits=LIMITS)

# -- how a mutated series is written ------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """Replace (``raw`` bytes) or delete (``raw`` None) ``keyword`` in instance ``target`` (None: all)."""

    keyword: str
    raw: bytes | None
    target: int | None

    def applies_to(self, n: int) -> bool:
        return self.target is None or self.target == n


@dataclass(frozen=True)
class DuplicatePosition:
    """Instance ``target`` gets the ImagePositionPatient of instance ``source``."""

    source: int
    target: int


def set_raw(ds: Dataset, keyword: str, raw: bytes) -> None:
    tag = Tag(keyword)
    implicit = bool(ds.original_encoding[0])
    ds[tag] = RawDataElement(tag, None if implicit else dictionary_VR(tag), len(raw), raw, 0, implicit, True)


def rewritten(data: bytes, syntax: str) -> bytes:
    ds = pydicom_read(data)
    if syntax == RLELossless:
        ds.compress(RLELossless)
    else:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    return to_bytes(ds)


SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless)
# The base series in each transfer syntax. A mutation is applied to a dataset read from these bytes and
# written back in the same encoding, so pydicom writes the raw values verbatim (re-encoding would parse
# them, in the test instead of the service).
BASES: dict[str, list[bytes]] = {syntax: [rewritten(data, syntax) for data in BASE] for syntax in SYNTAXES}


def mutated(change: Mutation | DuplicatePosition, syntax: str) -> list[bytes]:
    """The base series in ``syntax`` with ``change`` applied (RLE: the pixel payload keeps the original
    matrix whatever the headers say)."""
    datasets = [pydicom_read(data) for data in BASES[syntax]]
    if isinstance(change, DuplicatePosition):
        set_raw(
            datasets[change.target], "ImagePositionPatient", _position_text(BASE_POSITIONS[change.source])
        )
    else:
        for n, ds in enumerate(datasets):
            if not change.applies_to(n):
                continue
            if change.raw is None:
                if change.keyword in ds:
                    del ds[change.keyword]
            else:
                set_raw(ds, change.keyword, change.raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values it writes: they are meant
        return [to_bytes(ds) for ds in datasets]


BASE_POSITIONS = [[float(v) for v in pydicom_read(data).ImagePositionPatient] for data in BASE]


def _position_text(position: list[float]) -> bytes:
    text = "\\".join(f"{v:.6f}" for v in position).encode()
    return text + (b" " if len(text) % 2 else b"")


# -- hostile values -----------------------------------------------------------------------------------

SPECIAL_NUMBERS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    -1.0,
    -2.5,
    1e-300,
    1e-7,
    3.5e38,  # over float32
    1e300,
    65535.0,
    0.9,
    1.0,
]
numbers = st.one_of(st.sampled_from(SPECIAL_NUMBERS), st.floats(allow_nan=True, allow_infinity=True))


def ds_text(values: list[float]) -> bytes:
    text = "\\".join(repr(v) for v in values).encode()
    return text + (b" " if len(text) % 2 else b"")


JUNK_TEXT = [
    b"",
    b" ",
    b"abc",
    b"NaN",
    b"Infinity",
    b"-inf",
    b"1E400",
    b"1E400\\1E400",
    b"1\\",
    b"\\\\",
    b"\\1\\1",
    b"1,5\\1,5",
    b"0x10",
    b"1 2",
    b"\x00\x00",
    b"\xff\xfe",
    b"1" * 400,
]
junk = st.one_of(st.sampled_from(JUNK_TEXT), st.binary(max_size=24))

# DS attributes and the number of values each should have; the strategies give 0–7 values.
DS_KEYWORDS = {
    "PixelSpacing": 2,
    "ImageOrientationPatient": 6,
    "ImagePositionPatient": 3,
    "RescaleSlope": 1,
    "RescaleIntercept": 1,
    "SliceThickness": 1,
}
US_KEYWORDS = [
    "Rows",
    "Columns",
    "BitsStored",
    "BitsAllocated",
    "HighBit",
    "SamplesPerPixel",
    "PixelRepresentation",
]
OTHER_KEYWORDS = ["NumberOfFrames", "SOPInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID"]
DELETABLE = [*DS_KEYWORDS, *US_KEYWORDS, *OTHER_KEYWORDS, "PixelData", "PhotometricInterpretation"]

US_WRONG_LENGTH = [b"\x01", b"\x01\x02\x03", b"\x01\x00\x02\x00\x03"]  # not a multiple of 2 bytes
"""Byte lengths pydicom refuses to convert (``BytesLengthException``): tested on their own below."""


def ds_values(keyword: str) -> st.SearchStrategy[bytes]:
    length = DS_KEYWORDS[keyword]
    right_length = st.lists(numbers, min_size=length, max_size=length).map(ds_text)
    any_length = st.lists(numbers, min_size=0, max_size=7).map(ds_text)
    return st.one_of(right_length, any_length, junk)


def us_values() -> st.SearchStrategy[bytes]:
    one = st.one_of(st.sampled_from([0, 1, 2, 7, 8, 15, 16, 17, 32, 64, 4096, 65535]), st.integers(0, 65535))
    return st.one_of(
        one.map(lambda v: struct.pack("<H", v)),
        st.lists(one, min_size=0, max_size=3).map(lambda vs: struct.pack(f"<{len(vs)}H", *vs)),
    )


def other_values(keyword: str) -> st.SearchStrategy[bytes]:
    if keyword == "NumberOfFrames":
        ints = st.sampled_from(["0", "-1", "1", "2", "4", "99999999999", "1.5", "nan"]).map(
            lambda s: s.encode() + (b" " if len(s) % 2 else b"")
        )
        return st.one_of(ints, junk)
    return st.one_of(st.sampled_from([b"", b"1.2.3\x00", b"1.2.840.10008.5.1.4.1.1.4\x00"]), junk)


targets = st.one_of(st.none(), st.integers(0, SLICES - 1))


@st.composite
def mutations(draw: st.DrawFn) -> Mutation | DuplicatePosition:
    kind = draw(st.sampled_from(["ds", "us", "other", "delete", "duplicate"]))
    if kind == "duplicate":
        source = draw(st.integers(0, SLICES - 1))
        return DuplicatePosition(source, draw(st.integers(0, SLICES - 1).filter(lambda t: t != source)))
    target = draw(targets)
    if kind == "delete":
        return Mutation(draw(st.sampled_from(DELETABLE)), None, target)
    if kind == "ds":
        keyword = draw(st.sampled_from(sorted(DS_KEYWORDS)))
        return Mutation(keyword, draw(ds_values(keyword)), target)
    if kind == "us":
        return Mutation(draw(st.sampled_from(US_KEYWORDS)), draw(us_values()), target)
    keyword = draw(st.sampled_from(OTHER_KEYWORDS))
    return Mutation(keyword, draw(other_values(keyword)), target)


syntaxes = st.sampled_from(SYNTAXES)

# -- the property -------------------------------------------------------------------------------------


def load_or_refuse(files: list[bytes]) -> SeriesVolume | None:
    """``load_series`` as the service runs it (warnings are not errors there); None when it refuses the
    series with a tumorseg error. Any other exception propagates: that is the failure the fuzz looks for."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_series(files, "fuzz", limits=LIMITS)
        except TumorsegError:
            return None


def assert_sound_lattice(volume: SeriesVolume) -> None:
    image = volume.image
    origin = np.asarray(image.GetOrigin())
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.isfinite(origin).all(), origin
    assert np.isfinite(spacing).all() and (spacing > 0).all(), spacing
    assert np.isfinite(direction).all(), direction
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-2), direction
    assert len(volume.sop_instance_uids) == image.GetSize()[2]


def assert_overlap_answers(volume: SeriesVolume) -> None:
    for reference in ("base", "fuzz"):
        try:
            check_overlap({"base": BASE_VOLUME, "fuzz": volume}, reference)
        except SeriesApart:
            pass


def underflowing_pixel_spacing(change: Mutation | DuplicatePosition) -> bool:
    """PixelSpacing of two positive numbers so small that the volume's spacing × direction matrix
    underflows to a zero determinant (SimpleITK refuses it): see ``test_a_vanishing_pixel_spacing_...``."""
    if not isinstance(change, Mutation) or change.keyword != "PixelSpacing" or not change.raw:
        return False
    try:
        values = [float(v) for v in change.raw.decode("ascii").strip("\x00 ").split("\\")]
    except (UnicodeDecodeError, ValueError):
        return False
    return len(values) == 2 and all(0 < v < 1e-100 for v in values)


@given(change=mutations(), syntax=syntaxes)
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_hostile_headers_give_a_volume_or_a_tumorseg_error(
    change: Mutation | DuplicatePosition, syntax: str
) -> None:
    volume = load_or_refuse(mutated(change, syntax))
    if volume is not None:
        assert_sound_lattice(volume)
        assert_overlap_answers(volume)


def test_the_base_series_loads() -> None:
    """The fuzz starts from a series that loads: refusals come from the mutation, not the base."""
    assert_sound_lattice(BASE_VOLUME)
    assert BASE_VOLUME.shape_ijk == (5, 6, SLICES)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless):
        volume = load_or_refuse(mutated(Mutation("SliceThickness", b"2.5 ", None), syntax))
        assert volume is not None and volume.shape_ijk == (5, 6, SLICES)


# -- explicit hostile cases ----------------------------------------------------------------------------


def bomb_series(rows: int = 65535, columns: int = 65535) -> list[bytes]:
    """Every instance claims ``rows`` × ``columns`` 16-bit pixels behind a 70-byte RLE fragment: decoded,
    one frame would take 8 GiB."""
    files = []
    for data in BASE:
        ds = pydicom_read(data)
        ds.Rows, ds.Columns = rows, columns
        header = struct.pack("<16I", 2, 64, 66, *([0] * 13))
        ds.PixelData = encapsulate([header + b"\x81\x00\x81\x00" + b"\x00" * 2])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = RLELossless
        files.append(to_bytes(ds))
    return files


def test_a_decompression_bomb_is_refused_from_its_headers_without_allocating() -> None:
    files = bomb_series()
    tracemalloc.start()
    try:
        with pytest.raises(SeriesTooLarge, match=r"series bomb: .*65535x65535.*TUMORSEG_MAX_FRAME_PIXELS"):
            load_series(files, "bomb", limits=LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse a bomb"


@pytest.mark.parametrize(
    ("keyword", "raw"),
    [
        (k, v)
        for k in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")
        for v in (b"nan\\nan", b"1E400\\1E400\\1E400")
    ]
    + [("RescaleSlope", b"nan "), ("RescaleIntercept", b"-inf"), ("Rows", struct.pack("<H", 0))],
)
def test_non_finite_or_zero_geometry_is_a_tumorseg_error(keyword: str, raw: bytes) -> None:
    for target in (None, 2):
        assert load_or_refuse(mutated(Mutation(keyword, raw, target), ExplicitVRLittleEndian)) is None


@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
@pytest.mark.parametrize("raw", US_WRONG_LENGTH, ids=["1-byte", "3-bytes", "5-bytes"])
def test_rows_or_columns_of_the_wrong_byte_length_are_a_tumorseg_error(keyword: str, raw: bytes) -> None:
    assert load_or_refuse(mutated(Mutation(keyword, raw, 1), ExplicitVRLittleEndian)) is None


@pytest.mark.parametrize("keyword", ["BitsStored", "BitsAllocated", "SamplesPerPixel", "PixelRepresentation"])
@pytest.mark.parametrize("raw", US_WRONG_LENGTH, ids=["1-byte", "3-bytes", "5-bytes"])
def test_pixel_format_values_of_the_wrong_byte_length_are_a_tumorseg_error(keyword: str, raw: bytes) -> None:
    """These are read where the pixel decoder's errors become ``BrokenSeries``."""
    for target in (None, 1):
        assert load_or_refuse(mutated(Mutation(keyword, raw, target), ExplicitVRLittleEndian)) is None


def test_a_vanishing_pixel_spacing_is_a_tumorseg_error() -> None:
    change = Mutation("PixelSpacing", b"1e-300\\1e-300 ", None)  # every instance: one alone differs
    assert underflowing_pixel_spacing(change)
    assert load_or_refuse(mutated(change, ExplicitVRLittleEndian)) is None


@pytest.mark.parametrize("raw", [b"Infinity", b"1E400", b"-inf", b"nan "])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_an_unreadable_number_of_frames_gives_a_volume_or_a_tumorseg_error(raw: bytes, syntax: str) -> None:
    """Found by the fuzz above: NumberOfFrames that pydicom cannot turn into an int (OverflowError)."""
    for target in (None, 0):
        volume = load_or_refuse(mutated(Mutation("NumberOfFrames", raw, target), syntax))
        if volume is not None:
            assert_sound_lattice(volume)
