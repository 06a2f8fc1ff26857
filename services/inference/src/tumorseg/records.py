"""What a PACS lists of a patient, its studies, their series and instances: the value types study selection
reads.

They hold DICOM attributes (names as in the standard), the UIDs that name them in any PACS (a series record
carries its study's StudyInstanceUID too, so any client can fetch it without having listed it), and what
each client adds of its own: ``key``, the handle the client that listed them takes back (Orthanc REST:
Orthanc's resource id; DICOMweb: the UID), ``orthanc_id`` (Orthanc's id, reported in the result JSON; None
over DICOMweb), and ``version``, what changes when a series' instances change (Orthanc's LastUpdate; "" over
DICOMweb, which has no such attribute). They are built by ``tumorseg.pacs`` and read by ``tumorseg.study``,
the pipeline and the series cache, so none of these depends on the protocol that listed them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyInfo:
    """One study as the PACS lists it. Dates are DICOM DA/TM strings ("" when absent)."""

    key: str
    study_instance_uid: str
    patient_id: str
    study_date: str
    study_time: str
    study_description: str
    series_count: int
    is_stable: bool = True  # the PACS considers the study complete (Orthanc: StableAge without new instances)
    orthanc_id: str | None = None  # Orthanc's id of the study; None over DICOMweb


@dataclass(frozen=True)
class SeriesInfo:
    """A series with the tags modality mapping needs, read from the PACS's series record and from one of
    its instances (those tags are not series-level attributes). Times are in ms, as in DICOM."""

    key: str
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
    instance_count: int
    version: str = ""  # Orthanc's LastUpdate: changes whenever an instance is added or replaced
    is_stable: bool = True  # no new instance for the PACS's StableAge (DICOMweb cannot tell: always True)
    frames_per_instance: int = 1  # NumberOfFrames of the instance read: > 1 for a multi-frame series
    acquisition_datetime: str = ""  # DT: AcquisitionDateTime, a frame's, or AcquisitionDate+Time ("" unknown)
    acquisition_time: str = ""  # TM: AcquisitionTime ("" unknown)
    study_instance_uid: str = ""  # the study it belongs to
    orthanc_id: str | None = None  # Orthanc's id of the series; None over DICOMweb

    @property
    def slice_count(self) -> int:
        """How many slices the series holds: its instances, or the frames of its multi-frame instances."""
        return self.instance_count * self.frames_per_instance


@dataclass(frozen=True)
class InstanceInfo:
    """One instance of a series as the service reads a SEG or SR that it may have stored before: its UIDs,
    who made it, and what it references."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    manufacturer: str
    device_serial_number: str
    referenced_series: frozenset[str]  # SeriesInstanceUID of each ReferencedSeriesSequence item (a SEG's)
    referenced_instances: frozenset[str]  # every ReferencedSOPInstanceUID, however nested (an SR's SEG)
    orthanc_id: str | None = None  # Orthanc's id of the instance; None over DICOMweb


@dataclass(frozen=True)
class PatientInfo:
    """A study's patient. Holds PHI (name, birth date): never log it. Strings as in DICOM, "" when absent."""

    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
