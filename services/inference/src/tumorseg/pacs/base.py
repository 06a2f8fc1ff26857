"""The PACS as the service uses it: one interface, two implementations.

``OrthancClient`` (``tumorseg.pacs.client``) speaks Orthanc's REST API; ``DicomwebClient``
(``tumorseg.pacs.dicomweb``) speaks QIDO-RS, WADO-RS and STOW-RS to any DICOMweb PACS (Orthanc's plugin,
dcm4chee, cloud healthcare APIs). The pipeline, ``inspect``, the health check and the series cache use
only what ``Pacs`` declares, and so does the auto-trigger (``tumorseg.jobs.trigger``), which follows the change
feed (``changes``): Orthanc's change log, or a poll of DICOMweb's recent studies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tumorseg.records import InstanceInfo, PatientInfo, SeriesInfo, StudyInfo


@dataclass(frozen=True)
class UploadResult:
    """A stored instance: the client's keys of it, its study and series (Orthanc ids; UIDs over DICOMweb),
    ``status`` ("Success" or, from Orthanc, "AlreadyStored"), and ``orthanc_id``, Orthanc's id of the
    instance for the result JSON (None over DICOMweb)."""

    instance_id: str
    study_id: str
    series_id: str
    status: str
    orthanc_id: str | None = None


@dataclass(frozen=True)
class ChangeBatch:
    """What a PACS's change feed gives since a cursor: the studies that became complete (Orthanc: stable;
    DICOMweb: unchanged over two polls) in the order seen, ``cursor`` to ask from next (opaque: keep it,
    give it back), and whether ``more`` is waiting right away."""

    studies: tuple[StudyInfo, ...]
    cursor: str
    more: bool = False


class Pacs(Protocol):
    url: str
    protocol: str  # "Orthanc REST" or "DICOMweb", for messages

    def close(self) -> None: ...

    def __enter__(self) -> Pacs: ...

    def __exit__(self, *exc: object) -> None: ...

    def version(self, timeout: float | None = None) -> str | None:
        """Reachability: the PACS's software version (None where the protocol has none), or a PacsError.
        ``timeout`` overrides the client's (health checks)."""
        ...

    def find_studies(self, patient_id: str) -> list[StudyInfo]:
        """Every study whose PatientID is exactly ``patient_id``, oldest first."""
        ...

    def get_study(self, key: str) -> StudyInfo:
        """A study by its key (``StudyInfo.key``)."""
        ...

    def patient_of_study(self, key: str) -> PatientInfo:
        """The patient of a study (PHI: never log it)."""
        ...

    def list_series(self, study_key: str) -> list[SeriesInfo]:
        """The series of a study with the tags of one instance each, by SeriesNumber."""
        ...

    def first_instance(self, series: SeriesInfo) -> InstanceInfo:
        """One instance of ``series`` (a SEG's or SR's references, say)."""
        ...

    def download_series(
        self, series: SeriesInfo, progress: Callable[[int], None] | None = None
    ) -> list[bytes]:
        """Every instance of ``series`` as Part-10 bytes, any order; ``progress(1)`` after each. The
        record's UIDs are enough: the series need not have been listed by this client."""
        ...

    def upload_instance(self, data: bytes) -> UploadResult: ...

    def changes(self, cursor: str | None) -> ChangeBatch:
        """The change feed: the studies that became complete since ``cursor``. ``None`` (a start) gives
        every study complete now, with the cursor at the feed's end; a cursor the PACS did not give starts
        the feed afresh. A batch is given again until its cursor comes back."""
        ...

    def images_version(self, study: StudyInfo) -> str | None:
        """What changes when the study's images change (a job key holds it); None without image series.
        ``PacsNotFound`` when the study is gone."""
        ...
