"""Jobs: segmentations asked for now and run later, each recorded in the ``JobStore`` from the start.

``Jobs.submit`` validates a ``JobRequest``, gives it its result id at once and records it ``queued``.
Who runs it depends on the mode:

- **embedded** (the default): a runner thread in the API process takes the oldest queued job. Jobs a
  crashed process was running are queued again when the runner starts.
- **distributed** (``TUMORSEG_QUEUE_URL``): the job id goes to Redis (``tumorseg.queue``), and a
  ``tumorseg worker`` takes it (``work``). A job is claimed in the store before it runs, so a second
  delivery of a job that has ended, or that a live worker is running, does nothing; a dead worker's job
  (heartbeat older than half the queue's heartbeat timeout) is claimed by the worker it is redelivered to.

However it runs, a job ends ``done``; ``skipped`` when the study has no brain MRI to segment
(``modality_missing``: not a fault, nothing to retry); or ``failed`` with the error's code and message.
``POST /segment`` is a job too (``segment``): run in the request's thread in embedded mode (after taking
a place in line: ``Busy`` when it is full), or queued and waited for in distributed mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import get_args

import redis

from tumorseg import metrics
from tumorseg.errors import (
    Busy,
    ModalityMissing,
    QueueUnavailable,
    ResultPending,
    TumorsegError,
    error_from_code,
)
from tumorseg.jobstore import JobStore
from tumorseg.pipeline import Segmenter, SegmentRequest
from tumorseg.queue import JobQueue
from tumorseg.results import ResultStore, new_result_id
from tumorseg.schema import Job, JobOrigin, JobRequest, JobState, SegmentResult

log = logging.getLogger(__name__)

IDLE_POLL_S = 5.0  # the embedded runner also looks for queued jobs this often (one queued elsewhere)
WAIT_POLL_S = 0.5  # how often a synchronous request looks whether its queued job has ended
MAX_BEAT_S = 5.0  # a running job's heartbeat in the store, at most this far apart
EMBEDDED_STALE_S = 60.0  # embedded mode: only the unlikely second runner on a store would read it
SYNC_WAIT_S = 3600.0  # distributed mode: how long POST /segment waits for its job before answering 409

SKIPPED_ERRORS: tuple[type[TumorsegError], ...] = (ModalityMissing,)
"""Errors that mean "nothing here to segment": the job is ``skipped``, not ``failed``."""


def segment_request(request: JobRequest) -> SegmentRequest:
    """The pipeline's request for a job (``InvalidInput`` for a malformed PatientID or UID)."""
    return SegmentRequest(
        patient_id=request.patient_id,
        study_instance_uid=request.study,
        reference=request.reference,
        explicit_series={str(m): uid for m, uid in (request.series or {}).items()} or None,
        store_seg=request.store_seg,
        registration=request.registration,
        wait=request.wait,
    )


class Jobs:
    def __init__(
        self,
        store: JobStore,
        segmenter: Callable[[], Segmenter],
        queue: JobQueue | None = None,
        results: ResultStore | None = None,
        max_waiting: int = 4,
    ) -> None:
        self.store = store
        self.queue = queue
        self.results = results  # where a synchronous request reads its queued job's result
        # Distributed mode: synchronous requests that may wait for their job at once (each holds a thread
        # of the API); more are answered Busy, as TUMORSEG_QUEUE_SIZE says. Embedded: ``Segmenter`` decides.
        self._waiting = threading.BoundedSemaphore(max_waiting + 1)
        self._segmenter = segmenter  # raises ModelError while no model is loaded: the job fails with it
        # A job whose heartbeat is older than this has no live process; the queue redelivers a dead
        # worker's job only after ``heartbeat_s`` without a sign of it, by when its heartbeat here is stale.
        self.stale_s = EMBEDDED_STALE_S if queue is None else queue.heartbeat_s / 2
        self.beat_s = min(MAX_BEAT_S, self.stale_s / 3)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, request: JobRequest, origin: JobOrigin = "api", key: str | None = None) -> Job:
        segment_request(request)  # refuse a malformed request now, not when it runs
        job = self.store.create(request, origin, new_result_id(), key)
        if self.queue is not None:
            try:
                self.queue.send(job.job_id)
            except redis.RedisError as exc:
                self.store.delete(job.job_id)  # no job that nothing will run
                raise QueueUnavailable(
                    f"the job queue (Redis) cannot be reached: {type(exc).__name__}; retry later",
                    retry_after_s=10,
                ) from exc
        log.info("job %s queued", job.job_id, extra={"fields": {"job_id": job.job_id}})
        self._wake.set()
        return job

    def start(self) -> None:
        """Embedded: start the runner thread. Distributed: start the sweep (``sweep``, now and every
        ``stale_s``). Either way this process exports the store's jobs by state (``tumorseg_jobs``)."""
        self._stop.clear()
        metrics.watch_jobs(self.counts)
        if self.queue is not None:
            self._thread = threading.Thread(target=self._sweep_loop, name="tumorseg-sweep", daemon=True)
        else:
            requeued = self.store.requeue_running()
            if requeued:
                log.warning("%d job(s) left running by a previous process queued again", requeued)
            self._thread = threading.Thread(target=self._loop, name="tumorseg-jobs", daemon=True)
        self._thread.start()

    def sweep(self) -> int:
        """Distributed mode: send again every job that no process has in hand and no message in Redis
        stands for (a send lost with a crash, a Redis that lost its data, a message dropped as a
        duplicate whose holder then died). Returns how many were sent."""
        assert self.queue is not None
        pending = self.queue.pending()
        lost = [job_id for job_id in self.store.unfinished(self.stale_s) if job_id not in pending]
        for job_id in lost:
            self.queue.send(job_id)
        if lost:
            log.warning("%d job(s) with no message in Redis sent again", len(lost))
        return len(lost)

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception as exc:  # Redis or the store unavailable for now: the next sweep tries again
                log.warning("job sweep failed: %s", type(exc).__name__)
            self._stop.wait(self.stale_s)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop taking jobs; whether the runner has stopped. A job still running goes on in its daemon
        thread until the process exits, and a job cut off that way is queued again at the next start."""
        self._stop.set()
        self._wake.set()
        metrics.unwatch_jobs(self.counts)
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def counts(self) -> dict[str, int]:
        """How many jobs the store has in each state."""
        return {state: self.store.list(state=state, limit=1)[1] for state in get_args(JobState)}

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            self.run(job)

    def work(self, job_id: str) -> None:
        """A worker's handler of one delivery of ``job_id``: claim the job and run it, or do nothing for a
        job that has ended or that a live process runs."""
        try:
            job = self.store.claim(job_id, self.stale_s)
        except Exception:  # the store is busy or unreachable: deliver it again a little later
            log.warning("job %s: not claimed, delivered again in %g s", job_id, self.stale_s, exc_info=True)
            assert self.queue is not None
            self.queue.send(job_id, delay_s=self.stale_s)
            return
        if job is None:
            log.info("job %s: delivered again, but ended or running elsewhere; dropped", job_id)
            return
        if job.attempts > 1:
            log.warning("job %s: taken over (attempt %d)", job_id, job.attempts)
        self.run(job)

    def run(self, job: Job) -> None:
        """Run one claimed job to its end state; never raises for the job's own errors."""
        try:
            self._execute(job, self._segmenter)
        except Exception:  # recorded in the store and logged by _execute
            pass

    def segment(self, request: JobRequest) -> SegmentResult:
        """``POST /segment``: a job the caller waits for; its error is raised as it was recorded."""
        segment_request(request)  # InvalidInput before any job exists
        if self.queue is None:
            segmenter = self._segmenter()  # ModelError before any job exists
            with segmenter.admitted():  # Busy when the line is full
                job = self.store.create(request, "segment", new_result_id(), running=True)
                return self._execute(job, lambda: segmenter)
        if not self._waiting.acquire(blocking=False):
            raise Busy("too many requests wait for their job; retry later, or use POST /jobs", 30)
        try:
            job = self.submit(request, origin="segment")
            deadline = time.monotonic() + SYNC_WAIT_S
            while (ended := self.store.get(job.job_id)) is not None and ended.state in ("queued", "running"):
                if time.monotonic() > deadline:
                    raise ResultPending(
                        f"job {job.job_id} has not finished after {SYNC_WAIT_S:g} s; GET "
                        f"/jobs/{job.job_id} follows it, and its result will be /results/{job.result_id}",
                        retry_after_s=60,
                    )
                time.sleep(WAIT_POLL_S)
        finally:
            self._waiting.release()
        if ended is None:
            raise error_from_code("internal_error", f"job {job.job_id} vanished from the job store")
        if ended.state != "done":  # the worker that ran it counted the error (tumorseg_errors_total)
            raise metrics.counted_elsewhere(error_from_code(ended.code, ended.reason))
        assert self.results is not None, "distributed mode reads results from the shared store"
        return self.results.read(ended.result_id)

    def _execute(self, job: Job, segmenter: Callable[[], Segmenter]) -> SegmentResult:
        """Run the claimed ``job``, record how it ended, and return its result or raise its error."""
        fields = {"job_id": job.job_id, "result_id": job.result_id}
        log.info("job %s running", job.job_id, extra={"fields": fields})
        attempt = job.attempts
        try:
            with self._beating(job.job_id, attempt):
                result = segmenter().run(
                    segment_request(job.request),
                    progress=lambda stage: self.store.set_stage(job.job_id, stage, attempt),
                    result_id=job.result_id,
                )
        except SKIPPED_ERRORS as exc:
            _ended("skipped", exc.code, exc)
            self.store.finish(job.job_id, "skipped", attempt=attempt, code=exc.code, reason=exc.detail)
            log.info("job %s skipped: %s", job.job_id, exc.code, extra={"fields": fields})
            raise
        except TumorsegError as exc:
            _ended("failed", exc.code, exc)
            self.store.finish(job.job_id, "failed", attempt=attempt, code=exc.code, reason=exc.detail)
            log.warning("job %s failed: %s", job.job_id, exc.code, extra={"fields": fields})
            raise
        except Exception as exc:  # a bug: the job fails, the runner goes on with the next
            log.exception("job %s failed unexpectedly", job.job_id, extra={"fields": fields})
            _ended("failed", "internal_error", exc)
            self.store.finish(
                job.job_id,
                "failed",
                attempt=attempt,
                code="internal_error",
                reason=f"internal error ({type(exc).__name__})",
            )
            raise
        metrics.segmentation_ended("done", None if result.model is None else result.model.network)
        if self.store.finish(
            job.job_id, "done", attempt=attempt, study_instance_uid=result.study_instance_uid
        ):
            log.info("job %s done", job.job_id, extra={"fields": fields})
        else:
            log.warning("job %s: done here, but another process had taken it over", job.job_id)
        return result

    @contextmanager
    def _beating(self, job_id: str, attempt: int) -> Iterator[None]:
        """The job's heartbeat in the store, every ``beat_s``, while the body runs."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.beat_s):
                try:
                    if not self.store.beat(job_id, attempt):
                        log.warning(
                            "job %s: taken over by another process; this run's end is ignored", job_id
                        )
                        return
                except Exception:  # a busy store: the next beat tries again
                    log.warning("job %s: heartbeat not written", job_id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"tumorseg-beat-{job_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


def _ended(state: str, code: str, exc: BaseException) -> None:
    """A job's end in the metrics: its outcome, and its error, counted here once (``metrics.error_ended``);
    before the store has it, so that whoever sees the job ended sees it counted."""
    metrics.segmentation_ended(state)
    metrics.error_ended(code, exc)
