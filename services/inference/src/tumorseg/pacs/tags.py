"""DICOM tags as PACS answers give them → the records the service reads (``tumorseg.records``).

Both clients bring their answers to Orthanc's simplified form first (keyword → string, multiple values
joined by ``\\``, sequences as lists of objects): Orthanc REST's ``simplified-tags`` is that form, and
``tumorseg.pacs.dicomweb`` converts DICOM JSON (PS3.18 F.2) to it. That form stays inside ``tumorseg.pacs``:
what leaves it is a typed record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from tumorseg import functional_groups as fg
from tumorseg.records import InstanceInfo, PatientInfo, SeriesInfo, StudyInfo

# Characters with a meaning in DICOM matching (Orthanc's /tools/find, QIDO-RS): wildcards and the
# multi-value separator. Neither has an escape.
_MATCHING_SPECIALS = ("*", "?", "\\")
_DICM_OFFSET = 128
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT"})  # series that add no image to segment


def patient_id_query(patient_id: str) -> str:
    """``patient_id`` as a matching value that finds it: each special character queried as ``?`` (any one
    character); ``exactly_this_patient`` then drops what else matched."""
    return "".join("?" if ch in _MATCHING_SPECIALS else ch for ch in patient_id)


def exactly_this_patient(studies: Iterable[StudyInfo], patient_id: str) -> list[StudyInfo]:
    """The studies whose PatientID is exactly ``patient_id`` (case and all), oldest first."""
    exact = [s for s in studies if s.patient_id == patient_id]
    return sorted(exact, key=lambda s: (s.study_date, s.study_time, s.study_instance_uid))


def is_part10(data: bytes) -> bool:
    """Whether ``data`` is a DICOM Part-10 file (128-byte preamble, then ``DICM``)."""
    return len(data) >= _DICM_OFFSET + 4 and data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def float_or_none(value: Any) -> float | None:
    """A DICOM DS/IS value from simplified-tags ("2500", "2500\\2600", "" or absent) as its first float."""
    if value is None:
        return None
    text = str(value).split("\\")[0].strip()
    try:
        return float(text)
    except ValueError:
        return None


def floats(value: Any, length: int) -> tuple[float, ...] | None:
    """A multi-valued DS of ``length`` numbers, or None when absent, short or not numbers (the listing
    only informs the mapping and the limits; the loader refuses such a series with its reason)."""
    try:
        numbers = tuple(float(v) for v in multi(value))
    except ValueError:
        return None
    return numbers if len(numbers) == length else None


def multi(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    return tuple(part.strip() for part in str(value).split("\\"))


def describe_series(
    key: str,
    main: Mapping[str, Any],
    instance_tags: Mapping[str, Any],
    *,
    instance_count: int,
    version: str = "",
    is_stable: bool = True,
    study_instance_uid: str = "",
    orthanc_id: str | None = None,
) -> SeriesInfo:
    """A series from its series-level tags (``main``) and the tags of one of its instances, both as
    keyword → value in Orthanc's simplified form (strings, multiple values joined by ``\\``, sequences
    as lists of objects); the instance's tags win. A multi-frame instance's physics and geometry are
    read from its functional groups (``tumorseg.functional_groups``)."""
    enhanced = fg.is_multi_frame(instance_tags)  # physics and geometry in functional groups

    def tag(name: str) -> Any:
        value = instance_tags.get(name, main.get(name))
        return fg.find(instance_tags, name) if enhanced and value in (None, "") else value

    orientation = floats(tag("ImageOrientationPatient"), 6)
    rows, columns = float_or_none(tag("Rows")), float_or_none(tag("Columns"))
    return SeriesInfo(
        key=key,
        series_instance_uid=main.get("SeriesInstanceUID", ""),
        modality=str(tag("Modality") or ""),
        series_description=str(tag("SeriesDescription") or ""),
        protocol_name=str(tag("ProtocolName") or ""),
        series_number=str(tag("SeriesNumber") or ""),
        image_type=tuple(v.upper() for v in multi(tag("ImageType"))),
        repetition_time=float_or_none(tag("RepetitionTime")),
        echo_time=float_or_none(tag("EchoTime")),
        inversion_time=float_or_none(tag("InversionTime")),
        contrast_bolus_agent=fg.contrast_agent(instance_tags)
        if enhanced
        else str(tag("ContrastBolusAgent") or ""),
        mr_acquisition_type=str(tag("MRAcquisitionType") or ""),
        image_orientation_patient=orientation,
        slice_thickness=float_or_none(tag("SliceThickness")),
        spacing_between_slices=float_or_none(tag("SpacingBetweenSlices")),
        pixel_spacing=floats(tag("PixelSpacing"), 2),
        rows=int(rows) if rows is not None and math.isfinite(rows) else None,
        columns=int(columns) if columns is not None and math.isfinite(columns) else None,
        series_date=str(tag("SeriesDate") or ""),
        series_time=str(tag("SeriesTime") or ""),
        instance_count=instance_count,
        frames_per_instance=fg.frame_count(instance_tags),
        acquisition_datetime=fg.acquisition_datetime(instance_tags),
        acquisition_time=str(tag("AcquisitionTime") or "").strip(),
        version=version,
        is_stable=is_stable,
        study_instance_uid=study_instance_uid or str(tag("StudyInstanceUID") or ""),
        orthanc_id=orthanc_id,
    )


def describe_instance(tags: Mapping[str, Any], orthanc_id: str | None = None) -> InstanceInfo:
    """An instance from its tags in the simplified form (see ``describe_series``)."""
    return InstanceInfo(
        sop_instance_uid=str(tags.get("SOPInstanceUID", "")),
        series_instance_uid=str(tags.get("SeriesInstanceUID", "")),
        study_instance_uid=str(tags.get("StudyInstanceUID", "")),
        manufacturer=str(tags.get("Manufacturer", "")),
        device_serial_number=str(tags.get("DeviceSerialNumber", "")),
        referenced_series=frozenset(
            str(item.get("SeriesInstanceUID", ""))
            for item in tags.get("ReferencedSeriesSequence") or []
            if isinstance(item, dict)
        ),
        referenced_instances=frozenset(referenced_instances(tags)),
        orthanc_id=orthanc_id,
    )


def referenced_instances(tags: Mapping[str, Any]) -> set[str]:
    """Every ReferencedSOPInstanceUID in simplified tags, however deeply nested: an SR names its SEG in
    CurrentRequestedProcedureEvidenceSequence."""
    found: set[str] = set()
    for keyword, value in tags.items():
        if keyword == "ReferencedSOPInstanceUID" and isinstance(value, str):
            found.add(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found |= referenced_instances(item)
    return found


def describe_patient(tags: Mapping[str, Any]) -> PatientInfo:
    """A patient from its tags in the simplified form. Holds PHI: never log it."""
    return PatientInfo(
        patient_id=str(tags.get("PatientID", "")),
        patient_name=str(tags.get("PatientName", "")),
        patient_birth_date=str(tags.get("PatientBirthDate", "")),
        patient_sex=str(tags.get("PatientSex", "")),
    )


def series_order(info: SeriesInfo) -> tuple[float, str]:
    """How series are listed: by SeriesNumber (none last), then UID."""
    number = float_or_none(info.series_number)
    return (number if number is not None else float("inf"), info.series_instance_uid)
