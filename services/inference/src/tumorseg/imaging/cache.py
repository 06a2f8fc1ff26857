"""A bounded LRU of loaded series, so repeated requests for the same study skip fetch and decode.

Keyed by SeriesInstanceUID, Orthanc's LastUpdate and the instance count: a series that gains, loses or
replaces an instance gets a new key, so a stale volume is never served. Bounded by the bytes of the
volumes' pixels; ``max_bytes=0`` disables it. Cached volumes are shared: callers must not modify them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from tumorseg.imaging.volume import SeriesVolume
from tumorseg.records import SeriesInfo

CacheKey = tuple[str, str, int]


def cache_key(series: SeriesInfo) -> CacheKey:
    return (series.series_instance_uid, series.version, series.instance_count)


def volume_bytes(volume: SeriesVolume) -> int:
    image = volume.image
    return (
        int(image.GetNumberOfPixels())
        * int(image.GetSizeOfPixelComponent())
        * int(image.GetNumberOfComponentsPerPixel())
    )


class SeriesCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[CacheKey, SeriesVolume] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, series: SeriesInfo) -> SeriesVolume | None:
        key = cache_key(series)
        with self._lock:
            volume = self._items.get(key)
            if volume is not None:
                self._items.move_to_end(key)
            return volume

    def put(self, series: SeriesInfo, volume: SeriesVolume) -> None:
        size = volume_bytes(volume)
        if size > self.max_bytes:
            return
        key = cache_key(series)
        with self._lock:
            if key in self._items:
                self._bytes -= volume_bytes(self._items.pop(key))
            self._items[key] = volume
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= volume_bytes(evicted)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
