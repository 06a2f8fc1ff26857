"""The embedded runner (the default, no ``TUMORSEG_QUEUE_URL``): jobs run in the API process itself.

A runner thread takes the oldest queued job from the store, one at a time; when none is queued, it takes
over a job whose heartbeat is stale (a run cut off by a database outage, or a replica that died: with
PostgreSQL several API replicas may run embedded runners on one store). Jobs that a crashed process was
running are queued again when the runner starts, those with a stale heartbeat only, so that a replica
starting leaves the jobs of a live one alone. ``POST /segment`` runs in the request's own thread after taking a place in the
``Segmenter``'s line (``Busy`` when it is full).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tumorseg.errors import DatabaseUnavailable
from tumorseg.jobs.runner import Jobs, segment_request
from tumorseg.jobstore import JobStore
from tumorseg.pipeline import Segmenter
from tumorseg.results import new_result_id
from tumorseg.schema import Job, JobRequest, SegmentResult

log = logging.getLogger(__name__)

IDLE_POLL_S = 5.0  # the runner also looks for queued jobs this often (one queued by another process)
STALE_S = (
    60.0  # a running job whose heartbeat is older than this is taken over (a run cut off, a dead replica)
)


class EmbeddedRunner(Jobs):
    def __init__(self, store: JobStore, segmenter: Callable[[], Segmenter]) -> None:
        super().__init__(store, segmenter, STALE_S)
        self._wake = threading.Event()

    def _dispatch(self, job: Job) -> None:
        self._wake.set()

    def start(self) -> None:
        requeued = self.store.requeue_running(self.stale_s)
        if requeued:
            log.warning("%d job(s) left running by a previous process queued again", requeued)
        super().start()

    def stop(self, timeout: float = 10.0) -> bool:
        self._stop.set()
        self._wake.set()
        return super().stop(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next() or self._stale()
                if job is not None:
                    self.run(job)
                    continue
            except DatabaseUnavailable as exc:  # PostgreSQL restarting: the thread lives on and tries again
                log.warning("job runner: %s; retrying", exc.detail)
            self._wake.wait(IDLE_POLL_S)
            self._wake.clear()

    def _stale(self) -> Job | None:
        """A running job whose heartbeat is stale, now claimed by this runner (the queued sweep's
        takeover, in process); ``None`` when there is none."""
        for job_id in self.store.unfinished(self.stale_s):
            job = self.store.claim(job_id, self.stale_s)
            if job is not None:
                if job.attempts > 1:
                    log.warning("job %s: taken over (attempt %d)", job_id, job.attempts)
                return job
        return None

    def segment(self, request: JobRequest) -> SegmentResult:
        segment_request(request)  # InvalidInput before any job exists
        segmenter = self._segmenter()  # ModelError before any job exists
        with segmenter.admitted():  # Busy when the line is full
            job = self.store.create(request, "segment", new_result_id(), running=True)
            return self._execute(job, lambda: segmenter)
