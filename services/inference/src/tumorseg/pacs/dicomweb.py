"""DICOMweb client (httpx, synchronous): QIDO-RS to search, WADO-RS to retrieve, STOW-RS to store.

Any PACS that speaks DICOMweb works (PS3.18): Orthanc's DICOMweb plugin, dcm4chee, cloud healthcare APIs,
vendor archives. Keys are UIDs: ``StudyInfo.key`` is the StudyInstanceUID, ``SeriesInfo.key`` the
SeriesInstanceUID; WADO-RS paths are built from a record's UIDs alone (a series carries its study's), so a
series need not have been listed by this client to be fetched. There are no Orthanc ids (``orthanc_id``
None). DICOMweb has no notion of
a study being complete (Orthanc's ``StableAge``) nor of a series' last change, so ``is_stable`` is always
true and ``version`` is empty: a PACS should expose a study once it is complete.

Requests:
- ``find_studies``: ``GET /studies?PatientID=…`` (matched exactly as for Orthanc: ``tumorseg.pacs.tags``);
- ``list_series``: ``GET /studies/{study}/series``, then per series one instance's metadata
  (``…/instances?limit=1`` and ``…/instances/{sop}/metadata``): the physics tags the mapping reads are
  not series-level attributes;
- ``download_series``: ``GET /studies/{study}/series/{series}`` as ``multipart/related;
  type="application/dicom"`` in the stored transfer syntax, parsed part by part as it streams in;
- ``upload_instance``: ``POST /studies`` (STOW-RS), failures from the answer's FailedSOPSequence;
- ``version`` (the health check): ``GET /studies?limit=1``;
- ``changes`` (the auto-trigger's feed): ``GET /studies?StudyDate={since}-`` for the last ``recent_days``
  days, and each study's series with their instance counts; a study is complete once those counts are
  the same in two polls at least ``stable_s`` apart (``tumorseg.pacs.watch``). A study sent with a
  StudyDate older than the window is not seen.

Auth: HTTP basic (the username/password settings) or a bearer token. Errors as ``tumorseg.pacs.http``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any

import httpx
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.filebase import DicomBytesIO

from tumorseg.errors import PacsNotFound, PacsProtocolError
from tumorseg.pacs.base import ChangeBatch, UploadResult
from tumorseg.pacs.http import HttpPacs
from tumorseg.pacs.tags import (
    NOT_IMAGES,
    describe_instance,
    describe_patient,
    describe_series,
    exactly_this_patient,
    is_part10,
    patient_id_query,
    series_order,
)
from tumorseg.pacs.watch import QuietStudies
from tumorseg.records import InstanceInfo, PatientInfo, SeriesInfo, StudyInfo

DICOM_JSON = "application/dicom+json"
_MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
_STUDY_FIELDS = ("StudyDescription", "StudyDate", "StudyTime", "NumberOfStudyRelatedSeries")
_PATIENT_FIELDS = ("PatientName", "PatientBirthDate", "PatientSex")
_SERIES_FIELDS = ("SeriesDescription", "SeriesNumber", "Modality", "NumberOfSeriesRelatedInstances")


def simplified(dataset: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON dataset (PS3.18 F.2: ``{"00100020": {"vr": "LO", "Value": [...]}}``) in Orthanc's
    simplified form: keyword → string (multiple values joined by ``\\``; a person name's alphabetic
    group), sequences → lists of objects. Private and unknown tags and bulk data are left out."""
    out: dict[str, Any] = {}
    for tag, element in dataset.items():
        try:
            keyword = keyword_for_tag(int(tag, 16))
        except ValueError:
            continue
        if not keyword or not isinstance(element, dict):
            continue
        values = element.get("Value")
        if element.get("vr") == "SQ":
            out[keyword] = [simplified(item) for item in values or [] if isinstance(item, dict)]
        elif values is None:
            if "BulkDataURI" not in element and "InlineBinary" not in element:
                out[keyword] = ""
        elif element.get("vr") == "PN":
            out[keyword] = "\\".join(
                str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v) for v in values
            )
        else:
            out[keyword] = "\\".join("" if v is None else str(v) for v in values)
    return out


def _first(dataset: dict[str, Any], keyword: str) -> str:
    value = simplified(dataset).get(keyword, "")
    return str(value).split("\\")[0] if isinstance(value, str) else ""


class DicomwebClient(HttpPacs):
    """A connection to one DICOMweb service (base URL: the path before ``/studies``)."""

    name = "the DICOMweb PACS"
    url_setting = "TUMORSEG_DICOMWEB_URL"
    credentials_hint = "check TUMORSEG_DICOMWEB_TOKEN or TUMORSEG_ORTHANC_USERNAME/PASSWORD"
    protocol = "DICOMweb"

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        timeout: float = 60.0,
        *,
        token: str | None = None,
        recent_days: int = 2,
        stable_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        headers = {"Accept": DICOM_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        super().__init__(url, None if token else auth, timeout, headers=headers, **kwargs)
        self.recent_days = recent_days  # the change feed's window (StudyDate)
        self._quiet = QuietStudies(stable_s)  # the change feed's state: what the last polls saw

    # -- QIDO-RS -----------------------------------------------------------------------------------

    def _qido(self, path: str, params: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """A QIDO-RS search: the matches as DICOM JSON datasets (204 No Content: none)."""
        what = f"GET {path}"

        def send() -> httpx.Response:
            with self._mapped_errors(what):
                return self._client.get(path, params=params, **kwargs)

        response = self._once_more_if_stale(what, send)
        self._check(response, what)
        if response.status_code == 204 or not response.content.strip():
            return []
        try:
            answer = response.json()
        except ValueError as exc:
            raise PacsProtocolError(f"{self.name} answered {what} with a body that is not JSON") from exc
        if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
            raise PacsProtocolError(f"{self.name} answered {what} with something other than a list")
        return answer

    def version(self, timeout: float | None = None) -> str | None:
        """Reachability: a one-study search answers (DICOMweb has no version to report: None)."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        self._qido("/studies", {"limit": 1}, **kwargs)
        return None

    def _studies(self, params: dict[str, Any]) -> list[StudyInfo]:
        fields = [*_STUDY_FIELDS, "PatientID"]
        answer = self._qido("/studies", {**params, "includefield": fields})
        return [self._study(item) for item in answer]

    @staticmethod
    def _study(item: dict[str, Any]) -> StudyInfo:
        tags = simplified(item)
        uid = str(tags.get("StudyInstanceUID", ""))
        try:
            series_count = int(str(tags.get("NumberOfStudyRelatedSeries") or 0))
        except ValueError:
            series_count = 0
        return StudyInfo(
            key=uid,
            study_instance_uid=uid,
            patient_id=str(tags.get("PatientID", "")),
            study_date=str(tags.get("StudyDate", "")),
            study_time=str(tags.get("StudyTime", "")),
            study_description=str(tags.get("StudyDescription", "")),
            series_count=series_count,
        )

    def find_studies(self, patient_id: str) -> list[StudyInfo]:
        """Every study whose PatientID is exactly ``patient_id``, oldest first."""
        return exactly_this_patient(self._studies({"PatientID": patient_id_query(patient_id)}), patient_id)

    def get_study(self, key: str) -> StudyInfo:
        found = [s for s in self._studies({"StudyInstanceUID": key}) if s.study_instance_uid == key]
        if not found:
            raise PacsNotFound(f"{self.name} has no study {key}")
        return found[0]

    def recent_studies(self, since: str) -> list[StudyInfo]:
        """The studies with a StudyDate on or after ``since`` (YYYYMMDD): what the watcher polls."""
        return self._studies({"StudyDate": f"{since}-"})

    def series_versions(self, study_key: str) -> list[tuple[str, str]]:
        """(Modality, "SeriesInstanceUID:instances") of each series of a study, in one request: what
        changes when a series gains or loses instances (DICOMweb has no LastUpdate)."""
        listed = self._qido(
            f"/studies/{study_key}/series", {"includefield": ["Modality", "NumberOfSeriesRelatedInstances"]}
        )
        versions = []
        for item in listed:
            tags = simplified(item)
            count = tags.get("NumberOfSeriesRelatedInstances", "")
            versions.append((str(tags.get("Modality", "")), f"{tags.get('SeriesInstanceUID', '')}:{count}"))
        return versions

    def images_version(self, study: StudyInfo) -> str | None:
        """A hash of the study's image series' UIDs and instance counts (SEG and other derived series do not
        count): what QIDO-RS shows changing while instances arrive. None without image series."""
        versions = sorted(v for modality, v in self.series_versions(study.key) if modality not in NOT_IMAGES)
        return hashlib.sha256("|".join(versions).encode()).hexdigest()[:16] if versions else None

    def changes(self, cursor: str | None) -> ChangeBatch:
        """The change feed by polling the recent studies (see the module docstring); the first poll of
        this client finds none complete."""
        since = (date.today() - timedelta(days=self.recent_days - 1)).strftime("%Y%m%d")
        studies: dict[str, StudyInfo] = {}
        versions: dict[str, str] = {}
        for study in self.recent_studies(since):
            try:
                version = self.images_version(study)
            except PacsNotFound:  # deleted since the search
                continue
            if version is not None:
                studies[study.study_instance_uid] = study
                versions[study.study_instance_uid] = version
        ready, after = self._quiet.poll(versions, cursor)
        return ChangeBatch(tuple(studies[uid] for uid in ready), after)

    def patient_of_study(self, key: str) -> PatientInfo:
        """The patient as the study search gives it. Holds PHI: never log it."""
        answer = self._qido("/studies", {"StudyInstanceUID": key, "includefield": list(_PATIENT_FIELDS)})
        if not answer:
            raise PacsNotFound(f"{self.name} has no study {key}")
        return describe_patient(simplified(answer[0]))

    def list_series(self, study_key: str) -> list[SeriesInfo]:
        """The series of a study, each with one instance's tags merged in, by SeriesNumber."""
        listed = self._qido(f"/studies/{study_key}/series", {"includefield": list(_SERIES_FIELDS)})

        def describe(item: dict[str, Any]) -> SeriesInfo:
            main = simplified(item)
            uid = str(main.get("SeriesInstanceUID", ""))
            instances = self._qido(f"/studies/{study_key}/series/{uid}/instances")
            tags = self._metadata(study_key, uid, _first(instances[0], "SOPInstanceUID")) if instances else {}
            return describe_series(
                uid, main, tags, instance_count=len(instances), study_instance_uid=study_key
            )

        with ThreadPoolExecutor(max_workers=min(self.download_workers, max(len(listed), 1))) as pool:
            return sorted(pool.map(describe, listed), key=series_order)

    def _metadata(self, study: str, series: str, sop: str) -> dict[str, Any]:
        """WADO-RS metadata of one instance, simplified."""
        answer = self._qido(f"/studies/{study}/series/{series}/instances/{sop}/metadata")
        if not answer:
            raise PacsNotFound(f"{self.name} has no metadata for instance {sop}")
        return simplified(answer[0])

    @staticmethod
    def _series_path(series: SeriesInfo) -> str:
        """The WADO-RS path of a series, from the record's UIDs."""
        if not series.study_instance_uid or not series.series_instance_uid:
            raise PacsProtocolError(f"series {series.key}: the record lacks its study's or its own UID")
        return f"/studies/{series.study_instance_uid}/series/{series.series_instance_uid}"

    def first_instance(self, series: SeriesInfo) -> InstanceInfo:
        path = self._series_path(series)
        instances = self._qido(f"{path}/instances", {"limit": 1})
        if not instances:
            raise PacsProtocolError(f"series {series.series_instance_uid}: {self.name} lists no instance")
        sop = _first(instances[0], "SOPInstanceUID")
        return describe_instance(self._metadata(series.study_instance_uid, series.series_instance_uid, sop))

    # -- WADO-RS -----------------------------------------------------------------------------------

    def download_series(
        self, series: SeriesInfo, progress: Callable[[int], None] | None = None
    ) -> list[bytes]:
        """Every instance of ``series`` (one WADO-RS request, parts parsed as they arrive). Fewer
        instances than listed raises ``PacsNotFound`` (the series changed meanwhile), none at all
        ``PacsProtocolError``."""
        path = self._series_path(series)
        what = f"GET {path}"

        def fetch(accept: str) -> list[bytes] | None:
            """The parts, or None when the PACS cannot send that media type (406, 400, 415)."""
            files = []
            with (
                self._mapped_errors(what),
                self._download_slots,
                self._client.stream(
                    "GET", path, headers={"Accept": accept, "Accept-Encoding": "identity"}
                ) as response,
            ):
                if response.status_code in (400, 406, 415):
                    return None
                self._check(response, what)
                for part in multipart_parts(response.headers.get("Content-Type", ""), response.iter_bytes()):
                    if not is_part10(part):
                        raise PacsProtocolError(f"{what}: a part is not a DICOM file ({len(part)} bytes)")
                    files.append(part)
                    if progress is not None:
                        progress(1)
            return files

        def fetch_any() -> list[bytes]:
            # As stored (no transcoding) where the PACS allows it; else its default, Explicit VR LE.
            for accept in (f"{_MULTIPART_DICOM}; transfer-syntax=*", _MULTIPART_DICOM):
                files = fetch(accept)
                if files is not None:
                    return files
            raise PacsProtocolError(f"{self.name} sends no {_MULTIPART_DICOM} answer to {what}")

        files = self._once_more_if_stale(what, fetch_any)
        if not files:
            raise PacsProtocolError(f"series {series.series_instance_uid}: {self.name} sent no instance")
        if len(files) < series.instance_count:
            raise PacsNotFound(f"{what}: {len(files)} instances of the {series.instance_count} listed")
        return files

    # -- STOW-RS -----------------------------------------------------------------------------------

    def upload_instance(self, data: bytes) -> UploadResult:
        """STOW-RS of one Part-10 file into its study; a failure the PACS reports (FailedSOPSequence)
        raises ``PacsProtocolError`` with its reason code."""
        try:
            header = pydicom.dcmread(
                DicomBytesIO(data),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
        except Exception as exc:  # pydicom raises many types for a damaged file
            raise PacsProtocolError(f"not a DICOM file: {exc}") from exc
        study = str(header.get("StudyInstanceUID", ""))
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        path = f"/studies/{study}" if study else "/studies"
        what = f"POST {path}"

        def send() -> httpx.Response:
            with self._mapped_errors(what):
                return self._client.post(
                    path,
                    content=body,
                    headers={"Content-Type": f"{_MULTIPART_DICOM}; boundary={boundary}"},
                )

        response = self._once_more_if_stale(what, send)  # storing the same instance twice is harmless
        answer: dict[str, Any] = {}
        if response.content.strip():
            try:
                parsed = response.json()
                answer = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                answer = {}
        failed = simplified(answer).get("FailedSOPSequence") or []
        if failed:
            reason = failed[0].get("FailureReason", "?") if isinstance(failed[0], dict) else "?"
            raise PacsProtocolError(f"{self.name} refused the instance ({what}: failure reason {reason})")
        self._check(response, what)
        return UploadResult(
            instance_id=str(header.get("SOPInstanceUID", "")),
            study_id=study,
            series_id=str(header.get("SeriesInstanceUID", "")),
            status="Success",
        )


def multipart_parts(content_type: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The bodies of a ``multipart/related`` stream (RFC 2046), one at a time as the chunks arrive,
    keeping no more than the part being read (and scanning each byte for the delimiter once).
    ``PacsProtocolError`` when the stream is not multipart or ends before its closing delimiter."""
    delimiter = b"\r\n--" + _boundary(content_type)
    buffer = bytearray(b"\r\n")  # the first delimiter has no line break before it
    scan = 0  # where the next search starts: nothing before it can begin a delimiter
    in_part = False  # past the first delimiter (what comes before it is a preamble)
    for chunk in chunks:
        buffer += chunk
        while True:
            at = buffer.find(delimiter, scan)
            if at < 0:
                scan = max(0, len(buffer) - len(delimiter) + 1)
                break
            after = at + len(delimiter)
            if len(buffer) < after + 2:  # is it the closing delimiter ("--" follows)? wait and see
                scan = at
                break
            if in_part:
                yield _part_body(bytes(buffer[:at]))
            if buffer[after : after + 2] == b"--":
                return
            in_part = True
            del buffer[:after]
            scan = 0
    raise PacsProtocolError("the multipart answer ended before its closing boundary")


def _boundary(content_type: str) -> bytes:
    kind, _, parameters = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        raise PacsProtocolError(f"expected multipart/related, got {content_type or 'no Content-Type'}")
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode()
    raise PacsProtocolError("the multipart answer names no boundary")


def _part_body(part: bytes) -> bytes:
    """A part (after its delimiter line): headers, a blank line, the body."""
    head_end = part.find(b"\r\n\r\n")
    if head_end < 0:
        raise PacsProtocolError("a multipart part has no header block")
    return part[head_end + 4 :]
