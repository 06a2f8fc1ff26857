from __future__ import annotations

import dataclasses

import SimpleITK as sitk

from tests.series_info import make_series
from tumorseg.imaging.cache import SeriesCache, volume_bytes
from tumorseg.imaging.volume import SeriesVolume


def volume(n: int) -> SeriesVolume:
    image = sitk.Image([10, 10, n], sitk.sitkFloat32)
    return SeriesVolume(image, "1.2", "1.3", "1.4", tuple(str(i) for i in range(n)), "x")


def test_hit_miss_and_invalidation_by_version_and_count() -> None:
    cache = SeriesCache(10**6)
    series = dataclasses.replace(make_series("t2", uid="1.2.3"), version="20260101T120000")
    cache.put(series, volume(5))
    assert cache.get(series) is not None
    assert cache.get(dataclasses.replace(series, version="20260101T120500")) is None
    assert cache.get(dataclasses.replace(series, instance_count=series.instance_count - 1)) is None


def test_least_recently_used_is_evicted_within_the_byte_budget() -> None:
    one = volume(10)
    cache = SeriesCache(2 * volume_bytes(one))
    a, b, c = (make_series("t2", uid=f"1.2.{i}") for i in range(3))
    cache.put(a, one)
    cache.put(b, volume(10))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, volume(10))
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    assert cache.size_bytes == 2 * volume_bytes(one) and len(cache) == 2


def test_disabled_or_oversized_volumes_are_not_kept() -> None:
    cache = SeriesCache(0)
    series = make_series("t2", uid="1.2.9")
    cache.put(series, volume(3))
    assert cache.get(series) is None and len(cache) == 0
