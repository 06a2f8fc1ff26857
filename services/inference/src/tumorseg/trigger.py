"""The auto-trigger (``TUMORSEG_AUTO_SEGMENT=true``): every study Orthanc marks stable becomes a job that
stores a DICOM SEG, without anyone asking.

It follows Orthanc's change log (REST ``GET /changes``, ``StableStudy`` events) from the last ``Seq`` it
handled, which it keeps in the job store, so a restart neither misses the studies that arrived while the
service was down nor handles an event twice. The first start begins at the log's end and reconciles: every
stable study with no job yet gets one.

A job's key is the StudyInstanceUID, the newest LastUpdate of the study's image series (SEG series, such
as the one this service stores, do not count), the model version and the options. A study that becomes
stable again without new images (our own SEG arriving) has the key of a job already made and gets none;
a study that gains a series gets a new job. A study with no brain MRI to segment ends ``skipped``.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from tumorseg.errors import InvalidInput, PacsNotFound, TumorsegError
from tumorseg.jobs import Jobs
from tumorseg.pacs import OrthancClient
from tumorseg.schema import JobRequest

log = logging.getLogger(__name__)

SEQ_KEY = "orthanc_changes_seq"
NOT_IMAGES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT"})  # series that add no image to segment


def job_key(study_instance_uid: str, images_version: str, model_tag: str, request: JobRequest) -> str:
    options = request.model_dump_json(exclude={"patient_id", "study"})
    text = "|".join((study_instance_uid, images_version, model_tag, options))
    return hashlib.sha256(text.encode()).hexdigest()


class AutoTrigger:
    def __init__(self, pacs: OrthancClient, jobs: Jobs, model_tag: str, poll_s: float = 5.0) -> None:
        self.pacs = pacs
        self.jobs = jobs
        self.model_tag = model_tag  # model name and version: a new model segments every study again
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tumorseg-auto", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        started = False
        while not self._stop.is_set():
            try:
                if not started:
                    self._begin()
                    started = True
                if self.follow():  # more changes waiting: no pause
                    continue
            except TumorsegError as exc:  # Orthanc down or answering wrongly: try again later
                log.warning("auto-trigger: %s (%s); retrying", exc.code, exc.detail)
            self._stop.wait(self.poll_s)

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
            versions = [
                v for modality, v in self.pacs.series_versions(study_id) if modality not in NOT_IMAGES
            ]
        except PacsNotFound:  # deleted since the event
            return
        if not versions or not study.study_instance_uid:
            return
        request = JobRequest(patient_id=study.patient_id, study=study.study_instance_uid, store_seg=True)
        key = job_key(study.study_instance_uid, max(versions), self.model_tag, request)
        if self.jobs.store.has_key(key):
            return
        try:
            self.jobs.submit(request, origin="auto", key=key)
        except InvalidInput as exc:  # a PatientID or UID the pipeline refuses: nothing it could segment
            log.warning("auto-trigger: study %s not queued: %s", study_id, exc.code)
