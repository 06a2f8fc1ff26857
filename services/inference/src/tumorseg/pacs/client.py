"""Orthanc REST client (httpx, synchronous).

What it does: system info, exact-PatientID study search, series listing with the instance-level tags
that modality mapping needs, whole-series download, instance upload.

A series downloads in one WADO-RS request through Orthanc's DICOMweb plugin when Orthanc runs it (as the
compose stack's does), else (and for a series the plugin fails) one ``GET /instances/{id}/file`` per
instance with bounded concurrency; the same files either way. On 2 cores the plugin's multipart answers
took 0.10 s for a 69 MiB BraTS-like study against 0.50 s for 8 parallel instance requests (0.44 s for
``/series/{id}/archive``, a zip Orthanc builds first; 5.7 s on a clinical head's 100 MiB):
docs/benchmarks.md.

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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from tumorseg.errors import PacsError, PacsNotFound, PacsProtocolError, PacsRejected
from tumorseg.pacs.base import ChangeBatch, UploadResult
from tumorseg.pacs.dicomweb import DicomwebClient
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
from tumorseg.records import InstanceInfo, PatientInfo, SeriesInfo, StudyInfo

log = logging.getLogger(__name__)

WADO_RECHECK_S = 600.0  # how long a look-up of Orthanc's DICOMweb plugin holds (series_transport)
WADO_RETRY_S = 60.0  # ... and a failed one
WADO_LOOKUP_TIMEOUT_S = 5.0  # each request of the look-up (a slow Orthanc costs a download this, not more)


def study_from_orthanc(data: dict[str, Any]) -> StudyInfo:
    """A study record from Orthanc's ``/studies/{id}`` (or an expanded ``/tools/find``) answer."""
    tags = data.get("MainDicomTags", {})
    patient = data.get("PatientMainDicomTags", {})
    return StudyInfo(
        key=data["ID"],
        study_instance_uid=tags.get("StudyInstanceUID", ""),
        patient_id=patient.get("PatientID", ""),
        study_date=tags.get("StudyDate", ""),
        study_time=tags.get("StudyTime", ""),
        study_description=tags.get("StudyDescription", ""),
        series_count=len(data.get("Series", ())),
        is_stable=bool(data.get("IsStable", True)),
        orthanc_id=data["ID"],
    )


def series_from_orthanc(series: dict[str, Any], instance_tags: dict[str, Any]) -> SeriesInfo:
    """A series record from Orthanc's ``/series/{id}`` answer and the simplified tags of one of its
    instances (the physics tags are not series-level in Orthanc's index)."""
    return describe_series(
        series["ID"],
        series.get("MainDicomTags", {}),
        instance_tags,
        instance_count=len(series.get("Instances", ())),
        version=str(series.get("LastUpdate", "")),
        is_stable=bool(series.get("IsStable", True)),
        orthanc_id=series["ID"],
    )


class OrthancClient(HttpPacs):
    """A connection to one Orthanc (``HttpPacs``: pooling, timeouts, error mapping).

    Keys (``StudyInfo.key``, ``SeriesInfo.key``) and ``orthanc_id`` are Orthanc's resource ids; a series
    record without one (listed by another client) is found by its SeriesInstanceUID. The instance ids of
    each series listed are kept here for its download.
    """

    name = "Orthanc"
    credentials_hint = "check TUMORSEG_ORTHANC_USERNAME/PASSWORD and Orthanc's RegisteredUsers"
    protocol = "Orthanc REST"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instances: dict[str, tuple[str, ...]] = {}  # series id → its instance ids, as last listed
        self._wado_lock = threading.Lock()
        self._wado: DicomwebClient | None = None
        self._wado_until = 0.0  # time.monotonic() until which ``_wado`` holds (0: look it up)
        self._plugin_clients: dict[str, DicomwebClient] = {}  # by root: one each, closed with this one

    def close(self) -> None:
        for client in self._plugin_clients.values():
            client.close()
        super().close()

    def series_transport(self) -> DicomwebClient | None:
        """Orthanc's DICOMweb plugin as the way series are downloaded (one WADO-RS request each), or None
        (one request per instance). Looked up with short timeouts: the plugin listed in ``GET /plugins``,
        its root from the plugin's RootUri (``DicomWeb.Root``, default ``/dicom-web/``), and a QIDO-RS
        search there answered. The answer holds for ``WADO_RECHECK_S`` (Orthanc may be restarted with other
        plugins), a failed look-up for ``WADO_RETRY_S``, and a download the plugin failed drops it at once
        (``_drop_wado``)."""
        with self._wado_lock:
            if time.monotonic() >= self._wado_until:
                try:
                    self._wado = self._find_wado()
                    self._wado_until = time.monotonic() + WADO_RECHECK_S
                except PacsError as exc:
                    log.info("series download one instance at a time for now: %s", exc)
                    self._wado, self._wado_until = None, time.monotonic() + WADO_RETRY_S
            return self._wado

    def _drop_wado(self, client: DicomwebClient) -> None:
        """``client`` failed a download: look the plugin up again at the next one."""
        with self._wado_lock:
            if self._wado is client:
                self._wado, self._wado_until = None, 0.0

    def _find_wado(self) -> DicomwebClient | None:
        """The plugin's client, None when Orthanc runs no such plugin; ``PacsError`` when the look-up
        failed (Orthanc away, slow, or an error answer)."""
        quick = min(self._timeout, WADO_LOOKUP_TIMEOUT_S)
        if "dicom-web" not in (self._json("GET", "/plugins", timeout=quick) or ()):
            return None
        info = self._json("GET", "/plugins/dicom-web", timeout=quick)
        root = _plugin_root(info.get("RootUri") if isinstance(info, dict) else None)
        client = self._plugin_clients.get(root)
        if client is None:  # one client per root for this client's life, however often it is looked up
            client = self._plugin_clients[root] = self.sibling(DicomwebClient, root)
            # Its errors are Orthanc's: the same settings to check
            client.name = f"{self.name}'s DICOMweb plugin"
            client.url_setting, client.credentials_hint = self.url_setting, self.credentials_hint
        client.version(timeout=quick)
        log.info("series download through Orthanc's DICOMweb plugin at %s", client.url)
        return client

    # -- queries -----------------------------------------------------------------------------------

    def system(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /system``: Version, Name, DicomAet, ... ``timeout`` overrides the client's (health checks)."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        data = self._json("GET", "/system", **kwargs)
        if not isinstance(data, dict) or "Version" not in data:
            raise PacsProtocolError(f"{self.url}/system does not look like Orthanc's answer")
        return data

    def version(self, timeout: float | None = None) -> str | None:
        """Orthanc's version (``GET /system``)."""
        return str(self.system(timeout)["Version"])

    def find_studies(self, patient_id: str) -> list[StudyInfo]:
        """Every study whose PatientID is exactly ``patient_id`` (case and all), oldest first.

        Orthanc treats ``*``/``?`` as wildcards and ``\\`` as a value separator and has no escape, so each
        such character is queried as ``?`` (any one character) and the answer is filtered exactly.
        """
        body = {"Level": "Study", "Query": {"PatientID": patient_id_query(patient_id)}, "Expand": True}
        answer = self._json("POST", "/tools/find", json=body, idempotent=True)  # a query, changes nothing
        if not isinstance(answer, list):
            raise PacsProtocolError("Orthanc answered /tools/find with something other than a list")
        return exactly_this_patient((study_from_orthanc(item) for item in answer), patient_id)

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

    def images_version(self, study: StudyInfo) -> str | None:
        """The newest LastUpdate of the study's image series (SEG and other derived series do not count):
        what a job key holds of the study's images. None without image series."""
        versions = [v for modality, v in self.series_versions(study.key) if modality not in NOT_IMAGES]
        return max(versions) if versions else None

    def changes(self, cursor: str | None) -> ChangeBatch:
        """The change feed from Orthanc's change log (``GET /changes``): the studies of the ``StableStudy``
        events after the ``Seq`` in ``cursor``, one page at a time. ``None``: every stable study, and the
        log's last ``Seq``; a cursor that is no ``Seq``: nothing, and the log's last ``Seq``."""
        seq = _seq(cursor)
        if seq is None:
            end = str(int(self._change_log({"last": ""})["Last"]))
            studies = self.list_studies() if cursor is None else []
            return ChangeBatch(tuple(s for s in studies if s.is_stable), end)
        page = self._change_log({"since": seq, "limit": 100})
        events = page.get("Changes") or []
        stable = dict.fromkeys(str(c["ID"]) for c in events if c.get("ChangeType") == "StableStudy")
        studies = []
        for study_id in stable:
            try:
                studies.append(self.get_study(study_id))
            except PacsNotFound:  # deleted since the event
                continue
        last = max((int(c["Seq"]) for c in events), default=seq)
        return ChangeBatch(tuple(studies), str(last), more=not page.get("Done", True))

    def _change_log(self, params: dict[str, Any]) -> dict[str, Any]:
        """``GET /changes``: ``Changes`` (each with ``Seq``, ``ChangeType``, ``ID``), ``Done``, ``Last``."""
        answer = self._json("GET", "/changes", params=params)
        if not isinstance(answer, dict) or "Last" not in answer:
            raise PacsProtocolError("Orthanc answered /changes with something other than its change log")
        return answer

    def patient_of_study(self, study_id: str) -> PatientInfo:
        """The patient of a study, from its patient-level main tags. Holds PHI: never log it."""
        data = self._json("GET", f"/studies/{study_id}/patient")
        if not isinstance(data, dict):
            raise PacsProtocolError(
                "Orthanc answered /studies/{id}/patient with something other than an object"
            )
        return describe_patient(data.get("MainDicomTags", {}))

    def list_series(self, study_id: str) -> list[SeriesInfo]:
        """The series of a study, each with the tags of its first instance merged in, by SeriesNumber."""
        series = self._json("GET", f"/studies/{study_id}/series")
        if not isinstance(series, list):
            raise PacsProtocolError("Orthanc answered /studies/{id}/series with something other than a list")

        def describe(item: dict[str, Any]) -> SeriesInfo:
            instances = item.get("Instances") or []
            self._instances[str(item["ID"])] = tuple(instances)
            tags = self.instance_tags(instances[0]) if instances else {}
            return series_from_orthanc(item, tags)

        with ThreadPoolExecutor(max_workers=min(self.download_workers, max(len(series), 1))) as pool:
            infos = list(pool.map(describe, series))

        return sorted(infos, key=series_order)

    def instance_ids(self, series_id: str) -> tuple[str, ...]:
        """The ids of a series' instances: as listed by ``list_series``, else asked of Orthanc."""
        known = self._instances.get(series_id)
        if known is not None:
            return known
        record = self._json("GET", f"/series/{series_id}")
        return tuple(record.get("Instances", ())) if isinstance(record, dict) else ()

    def series_id(self, series: SeriesInfo) -> str:
        """Orthanc's id of a series: the record's, else looked up by its SeriesInstanceUID."""
        if series.orthanc_id:
            return series.orthanc_id
        found = self._json("POST", "/tools/lookup", content=series.series_instance_uid, idempotent=True)
        ids = [
            str(item.get("ID"))
            for item in found or []
            if isinstance(item, dict) and item.get("Type") == "Series"
        ]
        if not ids:
            raise PacsNotFound(f"Orthanc has no series {series.series_instance_uid}")
        return ids[0]

    def first_instance(self, series: SeriesInfo) -> InstanceInfo:
        """One instance of ``series`` (a SEG's references, say)."""
        series_id = self.series_id(series)
        ids = self.instance_ids(series_id)
        if not ids:
            raise PacsProtocolError(f"series {series_id}: Orthanc lists no instance")
        return describe_instance(self.instance_tags(ids[0]), orthanc_id=ids[0])

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
        if not is_part10(data):
            raise PacsProtocolError(f"{what}: the answer is not a DICOM file ({len(data)} bytes)")
        return data

    def download_series(
        self, series: SeriesInfo | str, progress: Callable[[int], None] | None = None
    ) -> list[bytes]:
        """Every instance of a series as DICOM bytes, in no particular order (not slice order).

        Through the DICOMweb plugin (``series_transport``) when Orthanc has it and the record carries its
        study's UID, else ``download_workers`` downloads at a time, one per instance Orthanc listed for the
        series; an instance deleted since the listing raises ``PacsNotFound``, so a series never comes
        back short.
        A series with no instance raises ``PacsProtocolError``. ``progress`` is called with 1 after each
        instance.
        """
        series_id = series if isinstance(series, str) else self.series_id(series)
        instance_ids = self.instance_ids(series_id)
        if isinstance(series, SeriesInfo) and series.study_instance_uid:
            files = self._download_through_plugin(series, len(instance_ids), progress)
            if files is not None:
                return files

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

    def _download_through_plugin(
        self, series: SeriesInfo, listed: int, progress: Callable[[int], None] | None
    ) -> list[bytes] | None:
        """The series in one WADO-RS request, or None: no plugin, or the plugin failed it. A failure is not
        the series' (the plugin finds a series by its UIDs, and refuses one that Orthanc holds twice, under
        two PatientIDs; a plugin switched off since its look-up answers 404; one restricted by an
        authorization plugin 401/403): the caller downloads it one instance at a time, which says whether
        the series itself changed."""
        wado = self.series_transport()
        if wado is None:
            return None
        try:
            return wado.download_series(replace(series, instance_count=listed), progress)
        except (PacsNotFound, PacsProtocolError, PacsRejected) as exc:
            log.warning("series %s one instance at a time: %s", series.series_instance_uid, exc)
            self._drop_wado(wado)
            return None

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
            orthanc_id=answer["ID"],
        )

    def delete(self, level: str, orthanc_id: str) -> None:
        """``DELETE /{patients|studies|series|instances}/{id}``; used by tests and clean-up tools."""
        self._json("DELETE", f"/{level}/{orthanc_id}")


def _seq(cursor: str | None) -> int | None:
    """The ``Seq`` a change-feed cursor of this client holds; None for no cursor or another's."""
    try:
        return int(cursor) if cursor is not None else None
    except ValueError:
        return None


def _plugin_root(root_uri: object) -> str:
    """The DICOMweb plugin's root from its RootUri (``../dicom-web/app/client/index.html``, relative to
    Orthanc Explorer's ``/app/``): ``/dicom-web``; that default when it says something else."""
    if isinstance(root_uri, str) and root_uri.startswith("../") and "/app/client/" in root_uri:
        return "/" + root_uri.removeprefix("../").split("/app/client/")[0].strip("/")
    return "/dicom-web"
