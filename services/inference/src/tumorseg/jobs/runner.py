"""What every job runner does, whichever process runs the jobs: the ``Jobs`` interface.

``Jobs.submit`` validates a ``JobRequest``, gives it its result id at once and records it ``queued``;
``Jobs.segment`` (``POST /segment``) is a job the caller waits for. Two runners implement it, one per
mode, chosen by ``wiring.open_runner``:

- ``EmbeddedRunner`` (``tumorseg.jobs.embedded``, the default): a runner thread in the API process;
- ``QueuedRunner`` (``tumorseg.jobs.queued``, ``TUMORSEG_QUEUE_URL``): Redis and ``tumorseg worker``.

However it runs, a job ends ``done``; ``skipped`` when the study has no brain MRI to segment
(``modality_missing``: not a fault, nothing to retry); or ``failed`` with the error's code and message. A
run during which the database went away records nothing: the job stays ``running`` until its heartbeat is
stale, and the queued mode's sweep sends it again, or an embedded runner takes it over (a second attempt,
under the same result id).
Running one claimed job (``run``), with its heartbeat in the store and its end recorded, is the same in
both modes and lives here.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import get_args

from tumorseg import metrics
from tumorseg.errors import DatabaseUnavailable, ModalityMissing, TumorsegError
from tumorseg.jobstore import JobStore
from tumorseg.pipeline import Segmenter, SegmentRequest
from tumorseg.results import new_result_id
from tumorseg.schema import Job, JobOrigin, JobRequest, JobState, SegmentResult

log = logging.getLogger(__name__)

MAX_BEAT_S = 5.0  # a running job's heartbeat in the store, at most this far apart


class TakenOver(Exception):
    """This attempt of a job was taken over by another process: it stops and records nothing."""


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


class Jobs(ABC):
    """A job runner: the store every process shares, and how this mode runs what is submitted.

    ``stale_s``: a job whose heartbeat is older than this has no live process."""

    THREAD_NAME = "tumorseg-jobs"

    def __init__(self, store: JobStore, segmenter: Callable[[], Segmenter], stale_s: float) -> None:
        self.store = store
        self._segmenter = segmenter  # raises ModelError while no model is loaded: the job fails with it
        self.stale_s = stale_s
        self.beat_s = min(MAX_BEAT_S, stale_s / 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, request: JobRequest, origin: JobOrigin = "api", key: str | None = None) -> Job:
        """A new ``queued`` job on its way to a runner; with ``key`` (the auto-trigger's idempotency key,
        UNIQUE in the store), the job that already has it if another process created it first."""
        segment_request(request)  # refuse a malformed request now, not when it runs
        result_id = new_result_id()
        job = self.store.create(request, origin, result_id, key)
        if job.result_id != result_id:  # the key's job, created elsewhere: already on its way
            return job
        self._dispatch(job)
        log.info("job %s queued", job.job_id, extra={"fields": {"job_id": job.job_id}})
        return job

    @abstractmethod
    def _dispatch(self, job: Job) -> None:
        """Hand the job just recorded to whatever runs it."""

    @abstractmethod
    def segment(self, request: JobRequest) -> SegmentResult:
        """``POST /segment``: a job the caller waits for; its error is raised as it was recorded."""

    def queue_reachable(self, timeout_s: float) -> bool | None:
        """Whether the job queue answers (``GET /health``); ``None`` for a mode without one."""
        return None

    def start(self) -> None:
        """Start this mode's background thread (``_loop``); this process then exports the store's jobs by
        state (``tumorseg_jobs``)."""
        self._stop.clear()
        metrics.watch_jobs(self.counts)
        self._thread = threading.Thread(target=self._loop, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    @abstractmethod
    def _loop(self) -> None:
        """The background thread's body, until ``_stop`` is set."""

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the background thread; whether it has stopped. A job still running goes on in its daemon
        thread until the process exits, and a job cut off that way is run again (``run``'s fencing)."""
        self._stop.set()
        metrics.unwatch_jobs(self.counts)
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def counts(self) -> dict[str, int]:
        """How many jobs the store has in each state."""
        return {state: self.store.list(state=state, limit=1)[1] for state in get_args(JobState)}

    def run(self, job: Job) -> None:
        """Run one claimed job to its end state; never raises for the job's own errors."""
        try:
            self._execute(job, self._segmenter)
        except Exception:  # recorded in the store and logged by _execute
            pass

    def _execute(self, job: Job, segmenter: Callable[[], Segmenter]) -> SegmentResult:
        """Run the claimed ``job``, record how it ended, and return its result or raise its error."""
        fields = {"job_id": job.job_id, "result_id": job.result_id}
        log.info("job %s running", job.job_id, extra={"fields": fields})
        attempt = job.attempts
        try:
            with self._beating(job.job_id, attempt):
                result = segmenter().run(
                    segment_request(job.request),
                    progress=lambda stage: self._progress(job.job_id, attempt, stage),
                    result_id=job.result_id,
                )
        except TakenOver:
            log.warning("job %s: taken over by another process; this run stopped", job.job_id)
            raise
        except DatabaseUnavailable:  # its end cannot be recorded: the job is left to a later attempt
            log.warning("job %s: the database went away during the run; left for another attempt", job.job_id)
            raise
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

    def _progress(self, job_id: str, attempt: int, stage: str) -> None:
        """The stage starting, in the store; ``TakenOver`` when this attempt no longer holds the job (its
        heartbeat went stale, e.g. while the database was away, and another process claimed it), so that
        only one attempt goes on to store a SEG."""
        if not self.store.beat(job_id, attempt):
            raise TakenOver(job_id)
        self.store.set_stage(job_id, stage, attempt)

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
