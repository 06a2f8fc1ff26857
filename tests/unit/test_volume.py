"""DICOM series → volume: geometry from first principles, and every way a series can be broken."""

from __future__ import annotations

import random

import numpy as np
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.uid import RLELossless

from tests.dicom_factory import pydicom_read, to_bytes, volume_series
from tumorseg.errors import BrokenSeries
from tumorseg.imaging.volume import load_series


def field(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """A value that identifies the position: any axis mix-up or flip changes it."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return 3.0 * x - 2.0 * y + 5.0 * z + 1000.0


def unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    a = np.asarray(v, float)
    a = a / np.linalg.norm(a)
    return (float(a[0]), float(a[1]), float(a[2]))


OBLIQUE_ROW = unit((1.0, 0.0, 0.0))
OBLIQUE_COL = unit((0.0, np.cos(np.radians(20)), -np.sin(np.radians(20))))

GEOMETRIES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "oblique": (OBLIQUE_ROW, OBLIQUE_COL),
    "axial-reversed-normal": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
}


def make(geometry: str = "axial", slices: int = 6, **kwargs: object) -> list[bytes]:
    row_dir, col_dir = GEOMETRIES[geometry]
    options: dict[str, object] = {
        "rows": 5,
        "columns": 7,
        "slices": slices,
        "origin": (-10.0, 20.0, 30.0),
        "row_dir": row_dir,
        "col_dir": col_dir,
        "pixel_spacing": (0.8, 1.1),  # (row spacing, column spacing)
        "slice_spacing": 3.0,
    }
    options.update(kwargs)
    return volume_series(field, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_every_voxel_holds_the_value_of_its_physical_position(geometry: str) -> None:
    files = make(geometry)
    random.Random(0).shuffle(files)  # arrival order means nothing
    volume = load_series(files, "test")
    image = volume.image
    assert image.GetSize() == (7, 5, 6)
    assert image.GetSpacing() == pytest.approx((1.1, 0.8, 3.0))
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    for index in [(0, 0, 0), (6, 4, 5), (3, 2, 1), (6, 0, 2), (0, 4, 3)]:
        point = np.asarray(image.TransformIndexToPhysicalPoint(index))
        assert array[index[2], index[1], index[0]] == pytest.approx(field(point[None])[0], abs=0.51)
    # The slice normal of the volume is right-handed with row and column directions.
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2])
    assert len(volume.sop_instance_uids) == 6


def test_slices_are_sorted_by_position_not_instance_number() -> None:
    files = make()
    reversed_numbers = []
    for n, data in enumerate(files):
        ds = pydicom_read(data)
        ds.InstanceNumber = len(files) - n
        reversed_numbers.append(to_bytes(ds))
    volume = load_series(reversed_numbers, "test")
    assert volume.image.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0))
    first = pydicom_read(files[0]).SOPInstanceUID
    assert volume.sop_instance_uids[0] == first


def test_rescale_is_applied() -> None:
    volume = load_series(make(rescale=(2.0, -1024.0)), "test")
    image = volume.image
    point = np.asarray(image.TransformIndexToPhysicalPoint((2, 3, 4)))
    assert sitk.GetArrayFromImage(image)[4, 3, 2] == pytest.approx(field(point[None])[0], abs=1.01)


def test_compressed_transfer_syntax_decodes() -> None:
    files = []
    for data in make():
        ds = pydicom_read(data)
        ds.compress(RLELossless)
        files.append(to_bytes(ds))
    plain = sitk.GetArrayFromImage(load_series(make(), "plain").image)
    assert np.array_equal(sitk.GetArrayFromImage(load_series(files, "rle").image), plain)


def test_missing_slice_in_the_middle_is_broken() -> None:
    files = make(slices=8)
    del files[4]
    with pytest.raises(BrokenSeries, match=r"FLAIR \(1.2.3\).*not uniform.*missing slice"):
        load_series(files, "FLAIR (1.2.3)")


def test_duplicate_positions_are_broken() -> None:
    files = make()
    with pytest.raises(BrokenSeries, match="share a slice position"):
        load_series(files + make()[:1], "x")


def test_mixed_orientations_are_broken() -> None:
    with pytest.raises(BrokenSeries, match="different ImageOrientationPatient"):
        load_series(make("axial") + make("sagittal"), "x")


def test_too_few_slices_and_unreadable_files_are_broken() -> None:
    with pytest.raises(BrokenSeries, match="at least 2"):
        load_series(make()[:1], "x")
    with pytest.raises(BrokenSeries, match="not readable DICOM"):
        load_series([b"garbage" * 40, b"more garbage" * 40], "x")


def test_truncated_pixel_data_is_broken() -> None:
    files = make()
    ds = pydicom_read(files[2])
    ds.PixelData = ds.PixelData[:10]
    files[2] = to_bytes(ds)
    with pytest.raises(BrokenSeries, match="cannot be decoded"):
        load_series(files, "x")


def test_missing_geometry_is_broken() -> None:
    files = make()
    ds = pydicom_read(files[0])
    del ds.ImagePositionPatient
    files[0] = to_bytes(ds)
    with pytest.raises(BrokenSeries, match="ImagePositionPatient"):
        load_series(files, "x")
