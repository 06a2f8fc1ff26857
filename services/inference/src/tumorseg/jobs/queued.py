"""The queued runner (``TUMORSEG_QUEUE_URL``): job ids go to Redis (``tumorseg.jobs.queue``), and
``tumorseg worker`` processes run the jobs.

In the API, ``submit`` sends the job's id, and a sweep thread sends again, every ``stale_s``, the jobs
that no message stands for any more (``sweep``). In a worker, ``work`` is the handler of one delivery: a
job is claimed in the store before it runs, so a second delivery of a job that has ended, or that a live
worker is running, does nothing; a dead worker's job (heartbeat older than half the queue's heartbeat
timeout) is claimed by the worker it is redelivered to. ``POST /segment`` queues its job and waits for
it (at most ``max_waiting`` requests at once: each holds a thread of the API).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from tumorseg import metrics
from tumorseg.errors import Busy, QueueUnavailable, ResultPending, error_from_code
from tumorseg.jobs.queue import JobQueue
from tumorseg.jobs.runner import Jobs, segment_request
from tumorseg.jobstore import JobStore
from tumorseg.pipeline import Segmenter
from tumorseg.results import ResultStore
from tumorseg.schema import Job, JobRequest, SegmentResult

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.5  # how often a synchronous request looks whether its queued job has ended
SYNC_WAIT_S = 3600.0  # how long POST /segment waits for its job before answering 409


class QueuedRunner(Jobs):
    THREAD_NAME = "tumorseg-sweep"

    def __init__(
        self,
        store: JobStore,
        segmenter: Callable[[], Segmenter],
        queue: JobQueue,
        results: ResultStore,
        max_waiting: int = 4,
    ) -> None:
        # The queue redelivers a dead worker's job only after ``heartbeat_s`` without a sign of it, by
        # when its heartbeat in the store is stale.
        super().__init__(store, segmenter, queue.heartbeat_s / 2)
        self.queue = queue
        self.results = results  # where a synchronous request reads its job's result
        # Synchronous requests that may wait for their job at once; more are answered Busy, as
        # TUMORSEG_QUEUE_SIZE says.
        self._waiting = threading.BoundedSemaphore(max_waiting + 1)

    def _dispatch(self, job: Job) -> None:
        try:
            self.queue.send(job.job_id)
        except redis.RedisError as exc:
            self.store.delete(job.job_id)  # no job that nothing will run
            raise QueueUnavailable(
                f"the job queue (Redis) cannot be reached: {type(exc).__name__}; retry later",
                retry_after_s=10,
            ) from exc

    def queue_reachable(self, timeout_s: float) -> bool:
        return self.queue.reachable(timeout_s)

    def sweep(self) -> int:
        """Send again every job that no process has in hand and no message in Redis stands for (a send
        lost with a crash, a Redis that lost its data, a message dropped as a duplicate whose holder then
        died). Returns how many were sent."""
        pending = self.queue.pending()
        lost = [job_id for job_id in self.store.unfinished(self.stale_s) if job_id not in pending]
        for job_id in lost:
            self.queue.send(job_id)
        if lost:
            log.warning("%d job(s) with no message in Redis sent again", len(lost))
        return len(lost)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception as exc:  # Redis or the store unavailable for now: the next sweep tries again
                log.warning("job sweep failed: %s", type(exc).__name__)
            self._stop.wait(self.stale_s)

    def work(self, job_id: str) -> None:
        """A worker's handler of one delivery of ``job_id``: claim the job and run it, or do nothing for a
        job that has ended or that a live process runs."""
        try:
            job = self.store.claim(job_id, self.stale_s)
        except Exception:  # the store is busy or unreachable: deliver it again a little later
            log.warning("job %s: not claimed, delivered again in %g s", job_id, self.stale_s, exc_info=True)
            self.queue.send(job_id, delay_s=self.stale_s)
            return
        if job is None:
            log.info("job %s: delivered again, but ended or running elsewhere; dropped", job_id)
            return
        if job.attempts > 1:
            log.warning("job %s: taken over (attempt %d)", job_id, job.attempts)
        self.run(job)

    def segment(self, request: JobRequest) -> SegmentResult:
        segment_request(request)  # InvalidInput before any job exists
        if not self._waiting.acquire(blocking=False):
            raise Busy("too many requests wait for their job; retry later, or use POST /jobs", 30)
        try:
            job = self.submit(request, origin="segment")
            ended = self._wait(job)
        finally:
            self._waiting.release()
        if ended.state != "done":  # the worker that ran it counted the error (tumorseg_errors_total)
            raise metrics.counted_elsewhere(error_from_code(ended.code, ended.reason))
        return self.results.read(ended.result_id)

    def _wait(self, job: Job) -> Job:
        """The job once it has ended; ``ResultPending`` after ``SYNC_WAIT_S``."""
        deadline = time.monotonic() + SYNC_WAIT_S
        while (ended := self.store.get(job.job_id)) is not None and ended.state in ("queued", "running"):
            if time.monotonic() > deadline:
                raise ResultPending(
                    f"job {job.job_id} has not finished after {SYNC_WAIT_S:g} s; GET "
                    f"/jobs/{job.job_id} follows it, and its result will be /results/{job.result_id}",
                    retry_after_s=60,
                )
            time.sleep(WAIT_POLL_S)
        if ended is None:
            raise error_from_code("internal_error", f"job {job.job_id} vanished from the job store")
        return ended
