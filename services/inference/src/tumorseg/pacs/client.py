"""Orthanc REST client (httpx, synchronous).

What it does: system info, exact-PatientID study search, series listing with the instance-level tags
that modality mapping needs, whole-series download with bounded concurrency, instance upload.

Error contract: every httpx failure is wrapped at this boundary (see ``tumorseg.errors``):
connection refused/reset → ``PacsUnavailable``; read/write/pool timeout → ``PacsTimeout``;
401/403 → ``PacsRejected``; 404 → ``PacsNotFound``; any other non-2xx, non-JSON or empty answer →
``PacsProtocolError``.

Retries: a connection that cannot be opened is retried by the transport (``connect_retries``); an
idempotent request (every GET, the ``/tools/find`` query, an instance upload, which Orthanc answers
``AlreadyStored`` when re-sent) is sent once more when it broke on a stale pooled keep-alive connection.
Nothing else is retried (a DELETE, an HTTP error answer, a timeout): it may already have had an effect
on the server or will fail the same way again.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from tumorseg import functional_groups as fg
from tumorseg.errors import (
    PacsError,
    PacsNotFound,
    PacsProtocolError,
    PacsRejected,
    PacsTimeout,
    PacsUnavailable,
)
from tumorseg.records import SeriesInfo, StudyInfo
from tumorseg.validation import split_credentials

log = logging.getLogger(__name__)

# Characters with a meaning in Orthanc/DICOM matching: wildcards and the multi-value separator.
_MATCHING_SPECIALS = ("*", "?", "\\")
_DICM_OFFSET = 128
# A pooled keep-alive connection the server closed between two requests fails with one of these.
_STALE_CONNECTION = (httpx.ReadError, httpx.RemoteProtocolError)
_T = TypeVar("_T")


def _float_or_none(value: Any) -> float | None:
    """A DICOM DS/IS value from simplified-tags ("2500", "2500\\2600", "" or absent) as its first float."""
    if value is None:
        return None
    text = str(value).split("\\")[0].strip()
    try:
        return float(text)
    except ValueError:
        return None


def _floats(value: Any, length: int) -> tuple[float, ...] | None:
    """A multi-valued DS of ``length`` numbers, or None when absent, short or not numbers (the listing
    only informs the mapping and the limits; the loader refuses such a series with its reason)."""
    try:
        numbers = tuple(float(v) for v in _multi(value))
    except ValueError:
        return None
    return numbers if len(numbers) == length else None


def _multi(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    return tuple(part.strip() for part in str(value).split("\\"))


def study_from_orthanc(data: dict[str, Any]) -> StudyInfo:
    """A study record from Orthanc's ``/studies/{id}`` (or an expanded ``/tools/find``) answer."""
    tags = data.get("MainDicomTags", {})
    patient = data.get("PatientMainDicomTags", {})
    return StudyInfo(
        orthanc_id=data["ID"],
        study_instance_uid=tags.get("StudyInstanceUID", ""),
        patient_id=patient.get("PatientID", ""),
        study_date=tags.get("StudyDate", ""),
        study_time=tags.get("StudyTime", ""),
        study_description=tags.get("StudyDescription", ""),
        series_ids=tuple(data.get("Series", ())),
        is_stable=bool(data.get("IsStable", True)),
    )


def series_from_orthanc(series: dict[str, Any], instance_tags: dict[str, Any]) -> SeriesInfo:
    """A series record from Orthanc's ``/series/{id}`` answer and the simplified tags of one of its
    instances (the physics tags are not series-level in Orthanc's index)."""
    main = series.get("MainDicomTags", {})
    enhanced = fg.is_multi_frame(instance_tags)  # physics and geometry in functional groups

    def tag(name: str) -> Any:
        value = instance_tags.get(name, main.get(name))
        return fg.find(instance_tags, name) if enhanced and value in (None, "") else value

    orientation = _floats(tag("ImageOrientationPatient"), 6)
    rows, columns = _float_or_none(tag("Rows")), _float_or_none(tag("Columns"))
    return SeriesInfo(
        orthanc_id=series["ID"],
        series_instance_uid=main.get("SeriesInstanceUID", ""),
        modality=str(tag("Modality") or ""),
        series_description=str(tag("SeriesDescription") or ""),
        protocol_name=str(tag("ProtocolName") or ""),
        series_number=str(tag("SeriesNumber") or ""),
        image_type=tuple(v.upper() for v in _multi(tag("ImageType"))),
        repetition_time=_float_or_none(tag("RepetitionTime")),
        echo_time=_float_or_none(tag("EchoTime")),
        inversion_time=_float_or_none(tag("InversionTime")),
        contrast_bolus_agent=fg.contrast_agent(instance_tags)
        if enhanced
        else str(tag("ContrastBolusAgent") or ""),
        mr_acquisition_type=str(tag("MRAcquisitionType") or ""),
        image_orientation_patient=orientation,
        slice_thickness=_float_or_none(tag("SliceThickness")),
        spacing_between_slices=_float_or_none(tag("SpacingBetweenSlices")),
        pixel_spacing=_floats(tag("PixelSpacing"), 2),
        rows=int(rows) if rows is not None and math.isfinite(rows) else None,
        columns=int(columns) if columns is not None and math.isfinite(columns) else None,
        series_date=str(tag("SeriesDate") or ""),
        series_time=str(tag("SeriesTime") or ""),
        instance_ids=tuple(series.get("Instances", ())),
        frames_per_instance=fg.frame_count(instance_tags),
        last_update=str(series.get("LastUpdate", "")),
        is_stable=bool(series.get("IsStable", True)),
    )


@dataclass(frozen=True)
class UploadResult:
    """Orthanc's answer to ``POST /instances``; ``status`` is "Success" or "AlreadyStored"."""

    instance_id: str
    study_id: str
    series_id: str
    status: str


class OrthancClient:
    """A connection to one Orthanc. Thread-safe (one ``httpx.Client`` with a connection pool).

    ``timeout`` bounds one call (connect, read, write, pool); the connect part is capped at 10 s so an
    unreachable host is reported quickly. ``transport`` is for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        timeout: float = 60.0,
        *,
        download_workers: int = 8,
        connect_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Credentials written into the URL (http://user:pass@host) never reach a message or a log line.
        self.url, url_auth = split_credentials(url.rstrip("/"))
        self.download_workers = download_workers
        # Every download of this client, over all series fetched side by side, waits here rather than for
        # a pooled connection (whose wait counts against the timeout and turned waiting into 504s).
        self._download_slots = threading.BoundedSemaphore(download_workers)
        self._client = httpx.Client(
            base_url=self.url,
            auth=auth or url_auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport or httpx.HTTPTransport(retries=connect_retries),
            limits=httpx.Limits(max_connections=max(download_workers, 4) + 2),
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport and error mapping ---------------------------------------------------------------

    @contextmanager
    def _mapped_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except PacsError:
            raise
        except httpx.ConnectTimeout as exc:
            raise PacsUnavailable(
                f"Orthanc at {self.url} cannot be reached ({what}): connect timed out"
            ) from exc
        except httpx.TimeoutException as exc:
            raise PacsTimeout(
                f"Orthanc at {self.url} did not answer in time ({what}); "
                "raise TUMORSEG_ORTHANC_TIMEOUT if it is just slow"
            ) from exc
        except httpx.TransportError as exc:
            raise PacsUnavailable(
                f"Orthanc at {self.url} cannot be reached ({what}): {type(exc).__name__}: {exc}; "
                "check that it runs and TUMORSEG_ORTHANC_URL"
            ) from exc

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        if status in (401, 403):
            raise PacsRejected(
                f"Orthanc at {self.url} refused the credentials ({what}: HTTP {status}); "
                "check TUMORSEG_ORTHANC_USERNAME/PASSWORD and Orthanc's RegisteredUsers"
            )
        if status == 404:
            raise PacsNotFound(f"Orthanc has no such resource ({what})")
        raise PacsProtocolError(f"Orthanc answered HTTP {status} to {what}: {response.text[:200]}")

    def _once_more_if_stale(self, what: str, call: Callable[[], _T]) -> _T:
        """``call()``, and once more if it broke on a stale pooled keep-alive connection.

        A read that fails on a connection the server closed between two requests ("Bad file descriptor",
        "Server disconnected") is retried once on a fresh connection; only idempotent requests come here.
        If Orthanc is really gone, the retry fails to connect and says so."""
        try:
            return call()
        except PacsUnavailable as exc:
            if not isinstance(exc.__cause__, _STALE_CONNECTION):
                raise
            log.info("retrying %s after %s", what, type(exc.__cause__).__name__)
            return call()

    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """One request whose answer is JSON. GET (or ``idempotent=True``) is retried on a stale connection."""
        what = f"{method} {path}"

        def send() -> httpx.Response:
            with self._mapped_errors(what):
                return self._client.request(method, path, **kwargs)

        retry = method == "GET" if idempotent is None else idempotent
        response = self._once_more_if_stale(what, send) if retry else send()
        self._check(response, what)
        try:
            return response.json()
        except ValueError as exc:
            raise PacsProtocolError(f"Orthanc answered {what} with a body that is not JSON") from exc

    # -- queries -----------------------------------------------------------------------------------

    def system(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /system``: Version, Name, DicomAet, ... ``timeout`` overrides the client's (health checks)."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        data = self._json("GET", "/system", **kwargs)
        if not isinstance(data, dict) or "Version" not in data:
            raise PacsProtocolError(f"{self.url}/system does not look like Orthanc's answer")
        return data

    def find_studies(self, patient_id: str) -> list[StudyInfo]:
        """Every study whose PatientID is exactly ``patient_id`` (case and all), oldest first.

        Orthanc treats ``*``/``?`` as wildcards and ``\\`` as a value separator and has no escape, so each
        such character is queried as ``?`` (any one character) and the answer is filtered exactly.
        """
        query = "".join("?" if ch in _MATCHING_SPECIALS else ch for ch in patient_id)
        body = {"Level": "Study", "Query": {"PatientID": query}, "Expand": True}
        answer = self._json("POST", "/tools/find", json=body, idempotent=True)  # a query, changes nothing
        if not isinstance(answer, list):
            raise PacsProtocolError("Orthanc answered /tools/find with something other than a list")
        studies = [study_from_orthanc(item) for item in answer]
        exact = [s for s in studies if s.patient_id == patient_id]
        return sorted(exact, key=lambda s: (s.study_date, s.study_time, s.study_instance_uid))

    def get_study(self, study_id: str) -> StudyInfo:
        return study_from_orthanc(self._json("GET", f"/studies/{study_id}"))

    def list_studies(self) -> list[StudyInfo]:
        """Every study Orthanc holds (``GET /studies?expand``): what the auto-trigger reconciles at start."""
        answer = self._json("GET", "/studies", params={"expand": ""})
        if not isinstance(answer, list):
            raise PacsProtocolError("Orthanc answered /studies with something other than a list")
        return [study_from_orthanc(item) for item in answer]

    def series_versions(self, study_id: str) -> list[tuple[str, str]]:
        """(Modality, LastUpdate) of each series of a study, in one request (no instance tags)."""
        answer = self._json("GET", f"/studies/{study_id}/series", params={"expand": ""})
        if not isinstance(answer, list):
            raise PacsProtocolError("Orthanc answered /studies/{id}/series with something other than a list")
        return [
            (str(item.get("MainDicomTags", {}).get("Modality", "")), str(item.get("LastUpdate", "")))
            for item in answer
        ]

    def changes(self, since: int | None = None, limit: int = 100) -> dict[str, Any]:
        """``GET /changes``: ``Changes`` (each with ``Seq``, ``ChangeType``, ``ID``, ``ResourceType``),
        ``Done``, ``Last``. ``since=None`` asks only for the newest ``Seq`` (``?last``)."""
        params: dict[str, Any] = {"last": ""} if since is None else {"since": since, "limit": limit}
        answer = self._json("GET", "/changes", params=params)
        if not isinstance(answer, dict) or "Last" not in answer:
            raise PacsProtocolError("Orthanc answered /changes with something other than its change log")
        return answer

    def patient_of_study(self, study_id: str) -> dict[str, str]:
        """The patient-level main tags of a study's patient. Holds PHI (name, birth date): never log it."""
        data = self._json("GET", f"/studies/{study_id}/patient")
        if not isinstance(data, dict):
            raise PacsProtocolError(
                "Orthanc answered /studies/{id}/patient with something other than an object"
            )
        return dict(data.get("MainDicomTags", {}))

    def list_series(self, study_id: str) -> list[SeriesInfo]:
        """The series of a study, each with the tags of its first instance merged in, by SeriesNumber."""
        series = self._json("GET", f"/studies/{study_id}/series")
        if not isinstance(series, list):
            raise PacsProtocolError("Orthanc answered /studies/{id}/series with something other than a list")

        def describe(item: dict[str, Any]) -> SeriesInfo:
            instances = item.get("Instances") or []
            tags = self.instance_tags(instances[0]) if instances else {}
            return series_from_orthanc(item, tags)

        with ThreadPoolExecutor(max_workers=min(self.download_workers, max(len(series), 1))) as pool:
            infos = list(pool.map(describe, series))

        def order(info: SeriesInfo) -> tuple[float, str]:
            number = _float_or_none(info.series_number)
            return (number if number is not None else float("inf"), info.series_instance_uid)

        return sorted(infos, key=order)

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """``GET /instances/{id}/simplified-tags``: tag keyword → value (strings; sequences as lists)."""
        data = self._json("GET", f"/instances/{instance_id}/simplified-tags")
        if not isinstance(data, dict):
            raise PacsProtocolError("Orthanc answered simplified-tags with something other than an object")
        return data

    # -- transfer ----------------------------------------------------------------------------------

    def download_instance(self, instance_id: str) -> bytes:
        """The DICOM file of one instance, streamed, checked to be complete and to be DICOM Part 10
        (retried once on a stale connection, like every idempotent request)."""
        return self._once_more_if_stale(
            f"GET /instances/{instance_id}/file", lambda: self._download_instance(instance_id)
        )

    def _download_instance(self, instance_id: str) -> bytes:
        what = f"GET /instances/{instance_id}/file"
        with (
            self._mapped_errors(what),
            self._client.stream(
                "GET",
                f"/instances/{instance_id}/file",
                # DICOM pixel data barely compresses; gzip would only cost CPU on both sides.
                headers={"Accept": "application/dicom", "Accept-Encoding": "identity"},
            ) as response,
        ):
            self._check(response, what)
            data = b"".join(response.iter_bytes())
            expected = response.headers.get("Content-Length")
            # Content-Length counts the bytes on the wire, before any content decoding.
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            received = response.num_bytes_downloaded if encoded else len(data)
        if expected is not None and received != int(expected):
            raise PacsProtocolError(f"{what}: got {received} bytes of {expected}")
        if len(data) < _DICM_OFFSET + 4 or data[_DICM_OFFSET : _DICM_OFFSET + 4] != b"DICM":
            raise PacsProtocolError(f"{what}: the answer is not a DICOM file ({len(data)} bytes)")
        return data

    def download_series(
        self, series: SeriesInfo | str, progress: Callable[[int], None] | None = None
    ) -> list[bytes]:
        """Every instance of a series as DICOM bytes, in Orthanc's instance order (not slice order).

        Downloads run ``download_workers`` at a time, one per instance Orthanc listed for the series; an
        instance deleted since the listing raises ``PacsNotFound``, so a series never comes back short.
        A series with no instance raises ``PacsProtocolError``. ``progress`` is called with 1 after each
        instance.
        """
        if isinstance(series, str):
            record = self._json("GET", f"/series/{series}")
            series_id, instance_ids = series, tuple(record.get("Instances", ()))
        else:
            series_id, instance_ids = series.orthanc_id, series.instance_ids

        def fetch(instance_id: str) -> bytes:
            with self._download_slots:
                data = self.download_instance(instance_id)
            if progress is not None:
                progress(1)
            return data

        with ThreadPoolExecutor(max_workers=self.download_workers) as pool:
            files = list(pool.map(fetch, instance_ids))
        if not files:
            raise PacsProtocolError(f"series {series_id}: Orthanc lists no instance")
        return files

    def upload_instance(self, data: bytes) -> UploadResult:
        """``POST /instances`` with one DICOM file. Re-sending a stored instance gives ``AlreadyStored``, so
        the upload is idempotent and retried once on a stale connection like a query."""
        answer = self._json(
            "POST",
            "/instances",
            idempotent=True,
            content=data,
            headers={"Content-Type": "application/dicom"},
        )
        if not isinstance(answer, dict) or "ID" not in answer:
            raise PacsProtocolError("Orthanc answered POST /instances without an instance ID")
        return UploadResult(
            instance_id=answer["ID"],
            study_id=answer.get("ParentStudy", ""),
            series_id=answer.get("ParentSeries", ""),
            status=answer.get("Status", ""),
        )

    def delete(self, level: str, orthanc_id: str) -> None:
        """``DELETE /{patients|studies|series|instances}/{id}``; used by tests and clean-up tools."""
        self._json("DELETE", f"/{level}/{orthanc_id}")
