"""The job store (SQLite) and how the runner records the end of a job, without Orthanc or a model."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tumorseg.api.errors import STATUS_BY_ERROR
from tumorseg.errors import (
    InvalidInput,
    ModalityMissing,
    PacsUnavailable,
    ResultFailed,
    ResultNotFound,
    ResultPending,
    TumorsegError,
    error_classes,
    error_from_code,
)
from tumorseg.jobs import EmbeddedRunner
from tumorseg.jobstore import _SCHEMA, ACTIVE, JOBS_DB, JobStore
from tumorseg.results import ResultStore, new_result_id
from tumorseg.schema import JobRequest


def _queue(store: JobStore, patient_id: str) -> str:
    return store.create(JobRequest(patient_id=patient_id), "api", new_result_id()).job_id


def test_jobs_are_claimed_oldest_first_once_each_and_listed_newest_first(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    first, second, third = (_queue(store, p) for p in ("A", "B", "A"))
    claimed = store.claim_next()
    assert claimed is not None and claimed.job_id == first and claimed.state == "running"
    assert claimed.attempts == 1 and claimed.started_at
    store.set_stage(first, "inference", attempt=1)
    assert store.get(first).stage == "inference"  # type: ignore[union-attr]
    assert sum(job.state in ACTIVE for job in store.list()[0]) == 3

    jobs, total = store.list()
    assert [j.job_id for j in jobs] == [third, second, first] and total == 3
    page, total = store.list(patient_id="A", limit=1, offset=1)
    assert [j.job_id for j in page] == [first] and total == 2
    assert [j.job_id for j in store.list(state="running")[0]] == [first]
    with pytest.raises(InvalidInput):
        store.list(limit=0)

    store.finish(first, "done", study_instance_uid="1.2.3")
    done = store.get(first)
    assert done is not None and done.state == "done" and done.stage is None
    assert done.study_instance_uid == "1.2.3" and done.state == "done"
    assert [store.claim_next().job_id, store.claim_next().job_id] == [second, third]  # type: ignore[union-attr]
    assert store.claim_next() is None


def test_a_restart_keeps_the_jobs_and_queues_again_those_left_running(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    running, queued = _queue(store, "A"), _queue(store, "B")
    store.claim_next()
    waited_for = store.create(JobRequest(patient_id="C"), "segment", new_result_id(), running=True)
    store.close()

    reopened = JobStore(tmp_path)
    assert reopened.list()[1] == 3
    assert reopened.requeue_running() == 1
    # nobody waits for a cut-off POST /segment any more: it is not run again, its caller asks again
    interrupted = reopened.get(waited_for.job_id)
    assert interrupted is not None and (interrupted.state, interrupted.code) == ("failed", "interrupted")
    again = reopened.claim_next()
    assert again is not None and again.job_id == running and again.attempts == 2
    assert reopened.get(queued).state == "queued"  # type: ignore[union-attr]


class _Segmenter:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def run(self, request: object, progress: Any = None, result_id: str | None = None, **kw: Any) -> Any:
        self.calls.append({"result_id": result_id, **kw})
        progress("fetch")
        raise self.error


@pytest.mark.parametrize(
    ("error", "state", "code"),
    [
        (ModalityMissing("no FLAIR series in the study"), "skipped", "modality_missing"),
        (PacsUnavailable("Orthanc is not reachable"), "failed", "pacs_unavailable"),
        (RuntimeError("a bug"), "failed", "internal_error"),
    ],
)
def test_the_runner_records_how_a_job_ended(tmp_path: Path, error: Exception, state: str, code: str) -> None:
    store = JobStore(tmp_path)
    results = ResultStore(tmp_path, jobs=store)
    segmenter = _Segmenter(error)
    jobs = EmbeddedRunner(store, lambda: segmenter)  # type: ignore[arg-type,return-value]
    job = jobs.submit(JobRequest(patient_id="P1"))
    with pytest.raises(ResultPending):
        results.read(job.result_id)
    claimed = store.claim_next()
    assert claimed is not None
    jobs.run(claimed)
    # the job's own result id; no place in line to take (never Busy for a job already queued)
    assert segmenter.calls == [{"result_id": job.result_id}]
    ended = store.get(job.job_id)
    assert ended is not None and (ended.state, ended.code) == (state, code) and ended.reason
    with pytest.raises(ResultFailed, match=code):
        results.read(job.result_id)
    with pytest.raises(ResultNotFound):
        results.read(new_result_id())


def test_a_malformed_request_is_refused_before_a_job_exists(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    jobs = EmbeddedRunner(store, lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidInput):
        jobs.submit(JobRequest(patient_id="P1", study="1.2.x"))
    assert store.list()[1] == 0


def test_a_delivery_claims_a_queued_job_once_and_a_dead_runners_job_once_its_heartbeat_is_stale(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path)
    job_id, other = _queue(store, "A"), _queue(store, "B")
    assert store.unfinished(stale_s=60) == ()  # just created: being sent
    time.sleep(0.01)
    assert store.unfinished(stale_s=0.0) == (job_id, other)
    first = store.claim(job_id, stale_s=60)
    assert first is not None and first.state == "running" and first.attempts == 1
    assert store.claim(job_id, stale_s=60) is None  # a second delivery while a live worker runs it
    assert store.unfinished(stale_s=60) == ()  # one claimed with a fresh heartbeat, one being sent
    time.sleep(0.05)
    assert store.beat(job_id, attempt=1)
    assert store.claim(job_id, stale_s=1.0) is None  # the heartbeat is fresh
    time.sleep(0.05)
    taken = store.claim(job_id, stale_s=0.01)  # its worker fell silent: redelivered, taken over
    assert taken is not None and taken.attempts == 2
    # the first run, alive after all, holds the job no more: its heartbeat, stage and end are refused
    assert not store.beat(job_id, attempt=1)
    store.set_stage(job_id, "export", attempt=1)
    assert not store.finish(job_id, "failed", attempt=1, code="pacs_timeout")
    assert store.get(job_id).stage is None  # type: ignore[union-attr]
    assert store.finish(job_id, "done", attempt=2)
    assert store.claim(job_id, stale_s=0.0) is None  # ended: a late duplicate does nothing
    assert store.claim(new_result_id(), stale_s=0.0) is None  # no such job
    assert store.unfinished(stale_s=0.0) == (other,)
    store.delete(other)
    assert store.get(other) is None and store.unfinished(stale_s=0.0) == ()


def test_a_store_written_before_heartbeats_existed_gains_the_column(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / JOBS_DB)
    old.executescript(_SCHEMA.replace(",\n    heartbeat_at REAL", ""))
    assert "heartbeat_at" not in {row[1] for row in old.execute("PRAGMA table_info(jobs)")}
    old.close()
    store = JobStore(tmp_path)
    JobStore(tmp_path).close()  # a second process opening it too
    job_id = _queue(store, "A")
    assert store.claim(job_id, stale_s=60) is not None
    assert store.beat(job_id, attempt=1)


def test_a_recorded_error_is_raised_again_as_its_own_class() -> None:
    concrete = [
        cls for cls in error_classes() if not cls.__name__.startswith("_") and cls is not TumorsegError
    ]
    assert len(concrete) >= len(STATUS_BY_ERROR) - 1
    for cls in concrete:
        again = error_from_code(cls.code, "why")
        assert type(again) is cls and again.detail == "why" and again.code == cls.code
    unknown = error_from_code("internal_error", "internal error (KeyError)")
    assert type(unknown) is TumorsegError and unknown.code == "internal_error"
