"""The auto-trigger (``TUMORSEG_AUTO_SEGMENT=true``): every study the PACS holds complete becomes a job
that stores a DICOM SEG, without anyone asking.

It follows the PACS's change feed (``Pacs.changes``: Orthanc's change log, or DICOMweb's recent studies
polled until they stop changing) from the cursor it keeps in the job store, so a restart neither misses the
studies that arrived while the service was down nor handles a change twice. Each start reconciles: every
complete study with no job yet gets one; the first start then follows from the feed's end.

A job's key is the StudyInstanceUID, the study's images version (``Pacs.images_version``: over Orthanc
REST the newest LastUpdate of its image series, over DICOMweb a hash of their UIDs and instance counts;
SEG series, such as the one this service stores, do not count), the model version and the options. A study
that becomes complete again without new images (our own SEG arriving) has the key of a job already made and
gets none; a study that gains a series gets a new job. A study with no brain MRI to segment ends
``skipped``. Over DICOMweb a study sent with a StudyDate older than the polled window is not seen: submit
it with ``POST /jobs``.

Every API process runs the thread, and only the one that leads acts (``tumorseg.jobs.leader``: always the
one process of the embedded mode; with PostgreSQL, the holder of the trigger's lock). Each job it submits
and each move of the cursor is fenced (``Leadership.fenced``: with PostgreSQL, written over the lock's own
session), and it abandons the batch the moment it no longer leads, so the
cursor only ever passes studies whose jobs exist; the next leader reconciles when it takes over and
follows on from the stored cursor. No study is missed and none gets two jobs: the job key is UNIQUE in the
store, and a second submit of a key returns the job that has it. The thread outlives any error of a pass
and says ``alive`` to its leadership at each one: a replica whose trigger thread has ended or hangs gives
up the lead to another.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from tumorseg.errors import InvalidInput, PacsNotFound, TumorsegError
from tumorseg.jobs.leader import Leadership, NotLeading, SoleLeader
from tumorseg.jobs.runner import Jobs
from tumorseg.pacs import Pacs
from tumorseg.records import StudyInfo
from tumorseg.schema import JobRequest

log = logging.getLogger(__name__)

# The job store's name for the feed's cursor: the name from when it held only Orthanc's Seq, which is
# still the Orthanc cursor, so an upgrade follows on from where it stopped.
CURSOR_KEY = "orthanc_changes_seq"
STANDBY_POLL_S = 0.5  # how often a process that does not lead looks whether it leads now


def job_key(study_instance_uid: str, images_version: str, model_tag: str, request: JobRequest) -> str:
    options = request.model_dump_json(exclude={"patient_id", "study"})
    text = "|".join((study_instance_uid, images_version, model_tag, options))
    return hashlib.sha256(text.encode()).hexdigest()


class AutoTrigger:
    """The polling thread: follows ``pacs``'s change feed and submits a job per complete study while
    ``leader`` says this process leads (by default it always does: one process)."""

    def __init__(
        self,
        pacs: Pacs,
        jobs: Jobs,
        model_tag: str,
        poll_s: float = 5.0,
        leader: Leadership | None = None,
        pacs_timeout_s: float = 60.0,
    ) -> None:
        self.pacs = pacs
        self.jobs = jobs
        self.model_tag = model_tag  # model name and version: a new model segments every study again
        self.poll_s = poll_s
        self.leader = leader or SoleLeader()
        # a pass that does not end within this is hung: the leader then gives up the lead
        self.stall_s = poll_s + pacs_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tumorseg-auto", daemon=True)
        self.leader.watch(self._thread, self.stall_s)
        self._thread.start()
        self.leader.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.leader.stop()

    def _loop(self) -> None:
        begun = False  # reconciled since this process took the lead
        while not self._stop.is_set():
            self.leader.alive()
            if not self.leader.holding():
                begun = False
                self._stop.wait(min(self.poll_s, STANDBY_POLL_S))
                continue
            try:
                if not begun:
                    self._begin()
                    begun = True
                if self.follow():  # more changes waiting: no pause
                    continue
            except TumorsegError as exc:  # the PACS down or answering wrongly: try again later
                log.warning("auto-trigger: %s (%s); retrying", exc.code, exc.detail)
            except NotLeading:
                log.warning("auto-trigger: the lead was lost in the middle of a batch; abandoned")
            except Exception:  # a bug or a database fault: this pass is lost, the thread goes on
                log.exception("auto-trigger: a pass failed; retrying")
            self._stop.wait(self.poll_s)

    def _begin(self) -> None:
        """At each start: every complete study with no job gets one; the first start then follows from
        the feed's end."""
        store = self.jobs.store
        batch = self.pacs.changes(None)
        if store.get_meta(CURSOR_KEY) is None:
            with self.leader.fenced():
                store.set_meta(CURSOR_KEY, batch.cursor)
        for study in batch.studies:
            if not store.has_study(study.study_instance_uid):
                self.consider(study)

    def follow(self) -> bool:
        """Handle one batch of the feed after the stored cursor; whether more is waiting right away."""
        store = self.jobs.store
        batch = self.pacs.changes(store.get_meta(CURSOR_KEY))
        for study in batch.studies:
            self.consider(study)
        with self.leader.fenced():
            store.set_meta(CURSOR_KEY, batch.cursor)
        return batch.more

    def consider(self, study: StudyInfo) -> None:
        """A job for ``study`` with its images as they are now, unless one with that key exists."""
        self.leader.alive()  # a long batch is progress too
        try:
            version = self.pacs.images_version(study)
        except PacsNotFound:  # deleted since the change
            return
        if version is not None:
            self.submit(study, version)

    def submit(self, study: StudyInfo, images_version: str) -> None:
        """A job for ``study`` with its images at ``images_version``, unless one with that key exists."""
        if not study.study_instance_uid:
            return
        request = JobRequest(patient_id=study.patient_id, study=study.study_instance_uid, store_seg=True)
        key = job_key(study.study_instance_uid, images_version, self.model_tag, request)
        if self.jobs.store.has_key(key):
            return
        try:
            with self.leader.fenced():  # the job's insert only while this process holds the lead
                self.jobs.submit(request, origin="auto", key=key)
        except InvalidInput as exc:  # a PatientID or UID the pipeline refuses: nothing it could segment
            log.warning("auto-trigger: a study was not queued: %s", exc.code)
