"""The auto-trigger (``TUMORSEG_AUTO_SEGMENT=true``): every study the PACS holds complete becomes a job
that stores a DICOM SEG, without anyone asking. Two watchers, one per PACS protocol, share the job keys.

Over Orthanc REST (``OrthancTrigger``) it follows Orthanc's change log (REST ``GET /changes``, ``StableStudy`` events) from the last ``Seq`` it
handled, which it keeps in the job store, so a restart neither misses the studies that arrived while the
service was down nor handles an event twice. The first start begins at the log's end and reconciles: every
stable study with no job yet gets one.

A job's key is the StudyInstanceUID, the newest LastUpdate of the study's image series (SEG series, such
as the one this service stores, do not count), the model version and the options. A study that becomes
stable again without new images (our own SEG arriving) has the key of a job already made and gets none;
a study that gains a series gets a new job. A study with no brain MRI to segment ends ``skipped``.

Over DICOMweb (``DicomwebTrigger``), which has no change log and no notion of a complete study, it polls
QIDO-RS for the studies of the last ``window_days`` days (StudyDate) and the instance count of each image
series; a study whose counts are the same in two polls at least ``stable_s`` apart is complete. Its key has
the series UIDs and counts in place of LastUpdate. A study sent to the PACS with an older StudyDate than
the window is not seen: submit it with ``POST /jobs``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import date, timedelta

from tumorseg import metrics
from tumorseg.errors import InvalidInput, PacsNotFound, TumorsegError
from tumorseg.jobs import Jobs
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.dicomweb import DicomwebClient
from tumorseg.records import StudyInfo
from tumorseg.schema import JobRequest

log = logging.getLogger(__name__)

SEQ_KEY = "orthanc_changes_seq"
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT"})  # series that add no image to segment


def images_version(pacs: OrthancClient | DicomwebClient, study_key: str) -> str | None:
    """What a job key holds of a study's images (``study_key``: the client's id of the study): over Orthanc
    REST the newest LastUpdate of its image series, over DICOMweb a hash of its image series' UIDs and
    instance counts (what QIDO-RS shows changing while instances arrive); None without image series.
    The auto-trigger and the timeline's history both key jobs with it, so neither makes a job the other
    made. ``PacsNotFound`` when the study is gone."""
    versions = sorted(v for modality, v in pacs.series_versions(study_key) if modality not in NOT_IMAGES)
    if not versions:
        return None
    if isinstance(pacs, DicomwebClient):
        return hashlib.sha256("|".join(versions).encode()).hexdigest()[:16]
    return versions[-1]


def job_key(study_instance_uid: str, images_version: str, model_tag: str, request: JobRequest) -> str:
    options = request.model_dump_json(exclude={"patient_id", "study"})
    text = "|".join((study_instance_uid, images_version, model_tag, options))
    return hashlib.sha256(text.encode()).hexdigest()


class AutoTrigger:
    """The polling thread and the job submission; a subclass says what is new (``_begin``, ``follow``)."""

    def __init__(self, jobs: Jobs, model_tag: str, poll_s: float = 5.0) -> None:
        self.jobs = jobs
        self.model_tag = model_tag  # model name and version: a new model segments every study again
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tumorseg-auto", daemon=True)
        self._thread.start()
        metrics.trigger_leader(True)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        metrics.trigger_leader(False)

    def _loop(self) -> None:
        started = False
        while not self._stop.is_set():
            try:
                if not started:
                    self._begin()
                    started = True
                if self.follow():  # more changes waiting: no pause
                    continue
            except TumorsegError as exc:  # the PACS down or answering wrongly: try again later
                log.warning("auto-trigger: %s (%s); retrying", exc.code, exc.detail)
            self._stop.wait(self.poll_s)

    def _begin(self) -> None:
        """What the first pass does before following (nothing by default)."""

    def follow(self) -> bool:
        """Handle what is new; whether more is waiting right away."""
        raise NotImplementedError

    def submit(self, study: StudyInfo, images_version: str) -> None:
        """A job for ``study`` with its images at ``images_version``, unless one with that key exists."""
        if not study.study_instance_uid:
            return
        request = JobRequest(patient_id=study.patient_id, study=study.study_instance_uid, store_seg=True)
        key = job_key(study.study_instance_uid, images_version, self.model_tag, request)
        if self.jobs.store.has_key(key):
            return
        try:
            self.jobs.submit(request, origin="auto", key=key)
        except InvalidInput as exc:  # a PatientID or UID the pipeline refuses: nothing it could segment
            log.warning("auto-trigger: a study was not queued: %s", exc.code)


class OrthancTrigger(AutoTrigger):
    """Follows Orthanc's ``/changes`` (see the module docstring)."""

    def __init__(self, pacs: OrthancClient, jobs: Jobs, model_tag: str, poll_s: float = 5.0) -> None:
        super().__init__(jobs, model_tag, poll_s)
        self.pacs = pacs

    def _begin(self) -> None:
        """At the first start: remember the log's end, then give every stable study without a job one."""
        store = self.jobs.store
        if store.get_meta(SEQ_KEY) is None:
            store.set_meta(SEQ_KEY, str(int(self.pacs.changes()["Last"])))
        for study in self.pacs.list_studies():
            if study.is_stable and not store.has_study(study.study_instance_uid):
                self.consider(study.key)

    def follow(self) -> bool:
        """Handle one page of changes after the stored ``Seq``; whether more are waiting."""
        store = self.jobs.store
        seq = int(store.get_meta(SEQ_KEY) or 0)
        page = self.pacs.changes(since=seq)
        for change in page.get("Changes") or []:
            if change.get("ChangeType") == "StableStudy":
                self.consider(str(change["ID"]))
            store.set_meta(SEQ_KEY, str(int(change["Seq"])))
        return not page.get("Done", True)

    def consider(self, study_id: str) -> None:
        """A job for the study with this Orthanc id, unless one with the same key exists."""
        try:
            study = self.pacs.get_study(study_id)
            version = images_version(self.pacs, study_id)
        except PacsNotFound:  # deleted since the event
            return
        if version is not None:
            self.submit(study, version)


class DicomwebTrigger(AutoTrigger):
    """Polls QIDO-RS (see the module docstring)."""

    def __init__(
        self,
        pacs: DicomwebClient,
        jobs: Jobs,
        model_tag: str,
        poll_s: float = 5.0,
        *,
        window_days: int = 2,
        stable_s: float | None = None,
    ) -> None:
        super().__init__(jobs, model_tag, poll_s)
        self.pacs = pacs
        self.window_days = window_days
        self.stable_s = poll_s if stable_s is None else stable_s
        self._seen: dict[str, tuple[str, float]] = {}  # study UID → (images version, first seen at)

    def follow(self) -> bool:
        since = (date.today() - timedelta(days=self.window_days - 1)).strftime("%Y%m%d")
        now = time.monotonic()
        seen: dict[str, tuple[str, float]] = {}  # only the studies still in the window are remembered
        for study in self.pacs.recent_studies(since):
            try:
                version = images_version(self.pacs, study.key)
            except PacsNotFound:  # deleted since the search
                continue
            if version is None:
                continue
            before = self._seen.get(study.study_instance_uid)
            if before is None or before[0] != version:  # new, or still receiving instances
                seen[study.study_instance_uid] = (version, now)
                continue
            seen[study.study_instance_uid] = before
            if now - before[1] >= self.stable_s:
                self.submit(study, version)
        self._seen = seen
        return False
