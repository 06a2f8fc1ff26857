"""What a PACS lists of a patient's studies and their series: the value types study selection reads.

They hold DICOM attributes (names as in the standard) and the PACS's own identifiers (``orthanc_id``,
``instance_ids``, ``last_update``) that the fetch stage hands back to the PACS client. They are built by
``tumorseg.pacs`` (from Orthanc's REST answers) and read by ``tumorseg.study`` and the series cache, so
study selection does not depend on the protocol that listed them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyInfo:
    """One study as Orthanc lists it. Dates are DICOM DA/TM strings ("" when absent)."""

    orthanc_id: str
    study_instance_uid: str
    patient_id: str
    study_date: str
    study_time: str
    study_description: str
    series_ids: tuple[str, ...]
    is_stable: bool = True  # the PACS considers the study complete (Orthanc: StableAge without new instances)


@dataclass(frozen=True)
class SeriesInfo:
    """A series with the tags modality mapping needs, read from Orthanc's series record and from one
    of its instances (those tags are not series-level in Orthanc's index). Times are in ms, as in DICOM."""

    orthanc_id: str
    series_instance_uid: str
    modality: str
    series_description: str
    protocol_name: str
    series_number: str
    image_type: tuple[str, ...]
    repetition_time: float | None
    echo_time: float | None
    inversion_time: float | None
    contrast_bolus_agent: str
    mr_acquisition_type: str
    image_orientation_patient: tuple[float, ...] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    pixel_spacing: tuple[float, ...] | None
    rows: int | None
    columns: int | None
    series_date: str
    series_time: str
    instance_ids: tuple[str, ...]
    last_update: str = ""  # Orthanc's LastUpdate: changes whenever an instance is added or replaced
    is_stable: bool = True  # no new instance for the PACS's StableAge
    frames_per_instance: int = (
        1  # NumberOfFrames of the instance read: > 1 for an enhanced (multi-frame) series
    )

    @property
    def instance_count(self) -> int:
        return len(self.instance_ids)

    @property
    def slice_count(self) -> int:
        """How many slices the series holds: its instances, or the frames of its multi-frame instances."""
        return self.instance_count * self.frames_per_instance
