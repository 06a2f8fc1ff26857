"""``SeriesInfo`` records as the Orthanc client builds them, and typical sequence physics (ms) per family,
for the series mapping, study choice and series cache tests (no Orthanc, no pixels)."""

from __future__ import annotations

import itertools
from typing import Any

from tumorseg.records import SeriesInfo

_counter = itertools.count(1)
ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")


def make_series(
    description: str = "",
    *,
    protocol: str = "",
    tr: float | None = None,
    te: float | None = None,
    ti: float | None = None,
    agent: str = "",
    acquisition: str = "2D",
    image_type: tuple[str, ...] = ORIGINAL,
    modality: str = "MR",
    slices: int = 30,
    thickness: float | None = 5.0,
    spacing: float | None = None,
    pixel: tuple[float, float] | None = (0.9, 0.9),
    number: str | None = None,
    uid: str | None = None,
    series_time: str = "101500",
    acquired: str = "",
    acquisition_time: str = "",
) -> SeriesInfo:
    """A SeriesInfo as Orthanc's client would build it; unique UIDs and series numbers by default.
    ``acquired``: its AcquisitionDateTime (DT)."""
    n = next(_counter)
    return SeriesInfo(
        key=f"orthanc-{n}",
        orthanc_id=f"orthanc-{n}",
        series_instance_uid=uid or f"1.2.826.0.1.3680043.10.{n}",
        modality=modality,
        series_description=description,
        protocol_name=protocol,
        series_number=number or str(n),
        image_type=image_type,
        repetition_time=tr,
        echo_time=te,
        inversion_time=ti,
        contrast_bolus_agent=agent,
        mr_acquisition_type=acquisition,
        image_orientation_patient=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        slice_thickness=thickness,
        spacing_between_slices=spacing,
        pixel_spacing=pixel,
        rows=256,
        columns=256,
        series_date="20240102",
        series_time=series_time,
        instance_count=slices,
        acquisition_datetime=acquired,
        acquisition_time=acquisition_time,
    )


# Typical physics (ms) per sequence family.
FLAIR2D: dict[str, Any] = {"tr": 9000, "te": 81, "ti": 2500}
FLAIR3D: dict[str, Any] = {
    "tr": 5000,
    "te": 387,
    "ti": 1800,
    "acquisition": "3D",
    "thickness": 1.0,
    "slices": 176,
}
MPRAGE: dict[str, Any] = {
    "tr": 2300,
    "te": 2.3,
    "ti": 900,
    "acquisition": "3D",
    "thickness": 1.0,
    "slices": 176,
}
SPGR3D: dict[str, Any] = {
    "tr": 8.2,
    "te": 3.2,
    "ti": 450,
    "acquisition": "3D",
    "thickness": 1.0,
    "slices": 170,
}
T1SE: dict[str, Any] = {"tr": 550, "te": 10}
T1FLAIR: dict[str, Any] = {"tr": 2000, "te": 12, "ti": 800}
T2TSE: dict[str, Any] = {"tr": 5000, "te": 100}
