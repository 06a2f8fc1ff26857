"""Jobs: segmentations asked for now and run later, in order, by one runner (the embedded default).

``Jobs.submit`` validates a ``JobRequest``, gives it its result id at once and records it ``queued`` in
the ``JobStore``; a runner thread takes the oldest queued job, runs the pipeline on it (``Segmenter.run``
with that result id, reporting each stage), and records how it ended: ``done``; ``skipped`` when the
study has no brain MRI to segment (``modality_missing``: not a fault, nothing to retry); ``failed`` with
the error's code and message otherwise. The job list lives in SQLite next to the results, so it survives
a restart; jobs a crashed process was running are queued again when the runner starts.

The runner and ``POST /segment`` share the ``Segmenter``, which runs one segmentation at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tumorseg.errors import ModalityMissing, TumorsegError
from tumorseg.jobstore import JobStore
from tumorseg.pipeline import Segmenter, SegmentRequest
from tumorseg.results import new_result_id
from tumorseg.schema import Job, JobOrigin, JobRequest

log = logging.getLogger(__name__)

IDLE_POLL_S = 5.0  # the runner also looks for queued jobs this often (a job queued by another process)

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
    def __init__(self, store: JobStore, segmenter: Callable[[], Segmenter]) -> None:
        self.store = store
        self._segmenter = segmenter  # raises ModelError while no model is loaded: the job fails with it
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, request: JobRequest, origin: JobOrigin = "api", key: str | None = None) -> Job:
        segment_request(request)  # refuse a malformed request now, not when it runs
        job = self.store.create(request, origin, new_result_id(), key)
        log.info("job %s queued", job.job_id, extra={"fields": {"job_id": job.job_id}})
        self._wake.set()
        return job

    def start(self) -> None:
        requeued = self.store.requeue_running()
        if requeued:
            log.warning("%d job(s) left running by a previous process queued again", requeued)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tumorseg-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop taking jobs; whether the runner has stopped. A job still running goes on in its daemon
        thread until the process exits, and a job cut off that way is queued again at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            self.run(job)

    def run(self, job: Job) -> None:
        """Run one claimed job to its end state; never raises for the job's own errors."""
        fields = {"job_id": job.job_id, "result_id": job.result_id}
        log.info("job %s running", job.job_id, extra={"fields": fields})
        try:
            result = self._segmenter().run(
                segment_request(job.request),
                progress=lambda stage: self.store.set_stage(job.job_id, stage),
                result_id=job.result_id,
                queued=True,
            )
        except SKIPPED_ERRORS as exc:
            self.store.finish(job.job_id, "skipped", code=exc.code, reason=exc.detail)
            log.info("job %s skipped: %s", job.job_id, exc.code, extra={"fields": fields})
        except TumorsegError as exc:
            self.store.finish(job.job_id, "failed", code=exc.code, reason=exc.detail)
            log.warning("job %s failed: %s", job.job_id, exc.code, extra={"fields": fields})
        except Exception as exc:  # a bug: the job fails, the runner goes on with the next
            log.exception("job %s failed unexpectedly", job.job_id, extra={"fields": fields})
            self.store.finish(
                job.job_id, "failed", code="internal_error", reason=f"internal error ({type(exc).__name__})"
            )
        else:
            self.store.finish(job.job_id, "done", study_instance_uid=result.study_instance_uid)
            log.info("job %s done", job.job_id, extra={"fields": fields})
