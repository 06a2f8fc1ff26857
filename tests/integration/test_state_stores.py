"""One suite for the state stores of both engines (SQLite + results directory, PostgreSQL): the same
calls, the same answers. PostgreSQL is a real server (``devkit/tumorseg_devkit/postgres.py``), a fresh database per test."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.results import result
from tests.stores import ENGINES, job_store, result_store
from tumorseg.db.results import PgResultStore
from tumorseg.errors import InvalidInput, ResultFailed, ResultNotFound, ResultPending
from tumorseg.jobstore import _SCHEMA, ACTIVE, JOBS_DB, JobStore, SqliteJobStore
from tumorseg.results import DirResultStore, ResultStore, new_result_id
from tumorseg.schema import JobRequest

pytestmark = pytest.mark.integration


@pytest.fixture(params=ENGINES)
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    url = request.getfixturevalue("postgres") if request.param == "postgres" else None
    with job_store(request.param, tmp_path, url) as store:
        yield store


def _queue(store: JobStore, patient_id: str, key: str | None = None) -> str:
    return store.create(JobRequest(patient_id=patient_id), "api", new_result_id(), key).job_id


def test_jobs_are_claimed_oldest_first_once_each_and_listed_newest_first(jobs: JobStore) -> None:
    first, second, third = (_queue(jobs, p) for p in ("A", "B", "A"))
    claimed = jobs.claim_next()
    assert claimed is not None and claimed.job_id == first and claimed.state == "running"
    assert claimed.attempts == 1 and claimed.started_at
    jobs.set_stage(first, "inference", attempt=1)
    assert jobs.get(first).stage == "inference"  # type: ignore[union-attr]
    jobs.set_stage(first, "export", attempt=2)  # not the attempt holding it: ignored
    assert jobs.get(first).stage == "inference"  # type: ignore[union-attr]
    assert sum(job.state in ACTIVE for job in jobs.list()[0]) == 3

    page, total = jobs.list()
    assert [j.job_id for j in page] == [third, second, first] and total == 3
    page, total = jobs.list(patient_id="A", limit=1, offset=1)
    assert [j.job_id for j in page] == [first] and total == 2
    assert [j.job_id for j in jobs.list(state="running")[0]] == [first]
    with pytest.raises(InvalidInput):
        jobs.list(limit=0)

    assert jobs.finish(first, "done", study_instance_uid="1.2.3")
    done = jobs.get(first)
    assert done is not None and done.state == "done" and done.stage is None and done.finished_at
    assert done.study_instance_uid == "1.2.3" and done.state == "done"
    assert jobs.by_result(done.result_id) == done and jobs.by_result(new_result_id()) is None
    assert jobs.has_study("1.2.3") and not jobs.has_study("9.9")
    assert [jobs.claim_next().job_id, jobs.claim_next().job_id] == [second, third]  # type: ignore[union-attr]
    assert jobs.claim_next() is None


def test_a_restart_requeues_what_was_running_and_fails_a_waiting_request(jobs: JobStore) -> None:
    queued = _queue(jobs, "A")
    synchronous = jobs.create(JobRequest(patient_id="B"), "segment", new_result_id(), running=True)
    assert synchronous.state == "running" and synchronous.attempts == 1
    assert jobs.claim_next().job_id == queued  # type: ignore[union-attr]
    assert jobs.requeue_running() == 1
    assert jobs.get(queued).state == "queued"  # type: ignore[union-attr]
    interrupted = jobs.get(synchronous.job_id)
    assert interrupted is not None and interrupted.state == "failed" and interrupted.code == "interrupted"


def test_claims_are_fenced_by_attempt_and_heartbeat(jobs: JobStore) -> None:
    job_id, other = _queue(jobs, "A"), _queue(jobs, "B")
    assert jobs.claim(job_id, stale_s=60) is not None
    assert jobs.claim(job_id, stale_s=60) is None  # a live runner holds it: a duplicate delivery
    assert jobs.beat(job_id, attempt=1)
    time.sleep(0.05)
    taken = jobs.claim(job_id, stale_s=0.01)  # its heartbeat is stale: a dead worker's job
    assert taken is not None and taken.attempts == 2
    assert not jobs.beat(job_id, attempt=1)  # the first runner no longer holds it
    assert not jobs.finish(job_id, "done", attempt=1)  # ... and cannot end it
    assert jobs.finish(job_id, "failed", attempt=2, code="broken_series", reason="why")
    ended = jobs.get(job_id)
    assert ended is not None and (ended.state, ended.code, ended.reason) == ("failed", "broken_series", "why")
    assert jobs.claim(job_id, stale_s=0.0) is None  # ended: a late duplicate does nothing
    assert jobs.claim(new_result_id(), stale_s=0.0) is None  # no such job
    assert jobs.unfinished(stale_s=0.0) == (other,)
    jobs.delete(other)
    assert jobs.get(other) is None and jobs.unfinished(stale_s=0.0) == ()


def test_a_job_key_makes_one_job_however_many_create_it_at_once(jobs: JobStore) -> None:
    """The key is UNIQUE and ``create`` relies on it: racing creators all get the one job."""
    created: list[str] = []
    result_ids: list[str] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        result_id = new_result_id()
        barrier.wait()
        job = jobs.create(JobRequest(patient_id="A"), "auto", result_id, "study-1:v1")
        created.append(job.job_id)
        result_ids.append(result_id)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(created)) == 1 and jobs.list()[1] == 1
    job = jobs.get(created[0])
    assert job is not None and job.result_id in result_ids  # the one creator's, unchanged for the others
    assert jobs.has_key("study-1:v1") and not jobs.has_key("study-2:v1")
    assert _queue(jobs, "A") != _queue(jobs, "A")  # without a key, every call is a new job


def test_the_trigger_cursor_is_kept(jobs: JobStore) -> None:
    assert jobs.get_meta("orthanc_seq") is None
    jobs.set_meta("orthanc_seq", "12")
    jobs.set_meta("orthanc_seq", "15")
    assert jobs.get_meta("orthanc_seq") == "15"


def test_an_old_sqlite_store_with_duplicate_keys_opens_and_keeps_every_job(tmp_path: Path) -> None:
    """Written before the key was UNIQUE (two processes raced): every job stays, the oldest keeps the
    key, the index is built, and a new create with that key returns the oldest job."""
    old = sqlite3.connect(tmp_path / JOBS_DB)
    old.executescript(_SCHEMA + "CREATE INDEX jobs_key ON jobs (key);")
    for n, job_id in enumerate(("a" * 32, "b" * 32, "c" * 32)):
        old.execute(
            "INSERT INTO jobs (job_id, state, origin, request, patient_id, result_id, key, created_at) "
            "VALUES (?, 'done', 'auto', ?, 'A', ?, 'k', ?)",
            (job_id, JobRequest(patient_id="A").model_dump_json(), f"{n}" * 32, 1000.0 + n),
        )
    old.commit()
    old.close()
    store = SqliteJobStore(tmp_path)
    SqliteJobStore(tmp_path).close()  # a second process opening it too
    assert store.list()[1] == 3
    again = store.create(JobRequest(patient_id="A"), "auto", new_result_id(), "k")
    assert again.job_id == "a" * 32 and store.list()[1] == 3
    with sqlite3.connect(tmp_path / JOBS_DB) as check:
        indexes = {row[1]: row[2] for row in check.execute("PRAGMA index_list(jobs)")}
        keys = sorted(str(row[0]) for row in check.execute("SELECT key FROM jobs"))
    assert indexes.get("jobs_key_unique") == 1 and "jobs_key" not in indexes
    assert keys == ["None", "None", "k"]
    store.close()


def test_the_stores_of_a_root_are_still_sqlite_and_the_directory(tmp_path: Path) -> None:
    store = JobStore(tmp_path)  # the call sites from before there were two engines
    assert isinstance(store, SqliteJobStore) and (tmp_path / JOBS_DB).is_file()
    store.close()
    assert isinstance(ResultStore(tmp_path / "results"), DirResultStore)


# --- result stores ---------------------------------------------------------------------------------------

FILE_BYTES = {
    "mask.nii.gz": b"\x1f\x8bmask" * 100,
    "preview.png": b"\x89PNG" * 50,
    "reference.nii.gz": b"r" * 300,
}


def _commit(store: ResultStore, rid: str | None = None, size: int = 1) -> str:
    rid = rid or new_result_id()
    staging = store.staging(rid)
    for name, data in FILE_BYTES.items():
        (staging / name).write_bytes(data * size)
    store.commit(staging, result(rid))
    assert not staging.exists()  # moved into place or stored and removed
    return rid


def _age(store: ResultStore, rid: str, days: float) -> None:
    """Make result ``rid`` look last written ``days`` ago."""
    when = time.time() - days * 86400
    if isinstance(store, PgResultStore):
        with store.db.connection() as conn:
            conn.execute("UPDATE results SET stored_at = %s WHERE result_id = %s", (when, rid))
    else:
        assert isinstance(store, DirResultStore)
        os.utime(store.root / rid, (when, when))


def test_a_committed_result_is_read_whole_and_its_files_served(jobs: JobStore, tmp_path: Path) -> None:
    store = result_store(tmp_path, jobs)
    rid = _commit(store)
    assert store.read(rid) == result(rid)
    for name, data in FILE_BYTES.items():
        assert store.read_file(rid, name) == data
    with pytest.raises(ResultNotFound):
        store.read_file(rid, "result.json")  # only the files the API serves
    with pytest.raises(ResultNotFound):
        store.read_file("../" + rid[3:], "mask.nii.gz")
    updated = result(rid).model_copy(update={"warnings": ["checked"]})
    store.update(updated)
    assert store.read(rid).warnings == ["checked"]
    with pytest.raises(ResultNotFound):
        store.update(result(new_result_id()))
    with store.extra_files(rid) as folder:
        (folder / "report.dcm").write_bytes(b"DICM")
    assert store.read(rid).warnings == ["checked"]
    again = result_store(tmp_path, jobs)  # a restart, or another replica
    assert (
        again.read(rid).warnings == ["checked"]
        and again.read_file(rid, "preview.png") == FILE_BYTES["preview.png"]
    )


def test_an_interrupted_or_discarded_commit_leaves_nothing(
    jobs: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = result_store(tmp_path, jobs)
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "mask.nii.gz").write_bytes(b"m")
    store.discard(staging)
    assert not staging.exists()
    with pytest.raises(ResultNotFound):
        store.read(rid)
    if isinstance(store, PgResultStore):  # the files fail after the result row went in: one transaction

        def broken(*args: object) -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(PgResultStore, "_insert_files", staticmethod(broken))
        with pytest.raises(OSError):
            _commit(store, rid)
        with pytest.raises(ResultNotFound):
            store.read(rid)
        assert store.recent(10) == (0, [])


def test_a_result_not_in_the_store_tells_pending_failed_and_unknown_apart(
    jobs: JobStore, tmp_path: Path
) -> None:
    store = result_store(tmp_path, jobs)
    pending = jobs.create(JobRequest(patient_id="A"), "api", new_result_id())
    with pytest.raises(ResultPending) as waiting:
        store.read(pending.result_id)
    assert waiting.value.retry_after_s
    failed = jobs.create(JobRequest(patient_id="A"), "api", new_result_id())
    jobs.finish(failed.job_id, "failed", code="broken_series", reason="a gap")
    with pytest.raises(ResultFailed, match="a gap"):
        store.read_file(failed.result_id, "mask.nii.gz")
    with pytest.raises(ResultNotFound):
        store.read(new_result_id())


def test_recent_pages_newest_first(jobs: JobStore, tmp_path: Path) -> None:
    store = result_store(tmp_path, jobs)
    rids = [_commit(store) for _ in range(3)]
    for n, rid in enumerate(rids):
        _age(store, rid, 3 - n)  # the first is the oldest
    total, page = store.recent(2)
    assert total == 3 and [r.result_id for r in page] == [rids[2], rids[1]]
    assert [r.result_id for r in store.recent(2, offset=2)[1]] == [rids[0]]


def test_retention_deletes_expired_then_oldest_over_the_size_bound(jobs: JobStore, tmp_path: Path) -> None:
    store = result_store(tmp_path, jobs)
    old, middle, new = (_commit(store, size=10) for _ in range(3))
    _age(store, old, 40)
    _age(store, middle, 5)
    _age(store, new, 1)
    aged = result_store(tmp_path, jobs, max_age_days=30)  # applied when the store opens
    with pytest.raises(ResultNotFound):
        aged.read(old)
    assert aged.recent(10)[0] == 2
    one_result = (
        sum(len(d) * 10 for d in FILE_BYTES.values()) + len(result(new).model_dump_json(indent=2)) + 1
    )
    bounded = result_store(tmp_path, jobs, max_bytes=int(one_result * 2.5))
    assert bounded.recent(10)[0] == 2
    latest = _commit(bounded, size=10)  # a third result over the bound: the oldest goes, never this one
    assert [r.result_id for r in bounded.recent(10)[1]] == [latest, new]
    with pytest.raises(ResultNotFound):
        bounded.read_file(middle, "mask.nii.gz")
    tiny = result_store(tmp_path, jobs, max_bytes=1)  # over the bound whatever it holds
    assert tiny.recent(10)[0] == 0
    kept = _commit(tiny)  # ... but the result just committed stays
    assert [r.result_id for r in tiny.recent(10)[1]] == [kept]


def test_a_restart_requeues_only_the_jobs_whose_heartbeat_is_stale(jobs: JobStore) -> None:
    live, dead = _queue(jobs, "A"), _queue(jobs, "B")
    assert jobs.claim_next().job_id == live  # type: ignore[union-attr]
    assert jobs.claim_next().job_id == dead  # type: ignore[union-attr]
    assert jobs.requeue_running(stale_s=60) == 0  # both beat just now: a live replica runs them
    assert jobs.get(live).state == "running"  # type: ignore[union-attr]
    assert jobs.requeue_running(stale_s=0) == 2
