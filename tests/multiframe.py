"""Multi-frame versions of classic MR series for tests: Legacy Converted Enhanced MR (highdicom's legacy
converter, as a PACS conversion writes it) with the frames in the source's order or shuffled."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.legacy import LegacyConvertedEnhancedMRImage
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import DSfloat


def legacy_converted(files: Sequence[bytes], *, shuffle_seed: int | None = None) -> Dataset:
    """One Legacy Converted Enhanced MR instance holding every slice of the classic series ``files`` (its
    SeriesInstanceUID and SeriesNumber kept). With ``shuffle_seed`` the frames (pixels and per-frame
    functional groups together) are put in a random order: a valid object whose frame order says nothing
    about the slice order (each frame keeps its own functional groups, dimension index included)."""
    datasets = [pydicom.dcmread(DicomBytesIO(data)) for data in files]
    first = datasets[0]
    converted = LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=str(first.SeriesInstanceUID),
        series_number=int(first.get("SeriesNumber") or 1),
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    # highdicom appends " (enhanced conversion)" to the description; scanners and PACS converters keep
    # it (and "enhanced" reads as post-contrast to the mapping's name rules).
    if "SeriesDescription" in first:
        converted.SeriesDescription = first.SeriesDescription
    # It replaces the classic series (same SeriesInstanceUID), so it does not reference those instances as
    # another series of the study (dciodvfy: "ReferencedSeriesSequence present but ... does not reference").
    if "ReferencedSeriesSequence" in converted:
        del converted.ReferencedSeriesSequence
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(int(converted.NumberOfFrames))
        frames = converted.pixel_array
        groups = list(converted.PerFrameFunctionalGroupsSequence)
        converted.PerFrameFunctionalGroupsSequence = DicomSequence([groups[i] for i in order])
        converted.PixelData = np.ascontiguousarray(frames[order]).tobytes()
    return converted


def shorten_decimals(ds: Dataset) -> Dataset:
    """``ds`` with every decimal string (DS) written in at most 16 characters, as the standard allows
    (tests' synthetic series write Python's full float digits), nested sequences included."""
    for element in ds.iterall():
        if element.VR == "DS" and element.value is not None and element.value != "":
            values = element.value if element.VM > 1 else [element.value]
            short = [DSfloat(float(v), auto_format=True) for v in values]
            element.value = short if element.VM > 1 else short[0]
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
