"""The PostgreSQL state's edges (issue 40's review): a NUL byte is a 422, never a 500; every pooled
connection carries its timeouts and an old server is refused; two attempts committing the same result at
once both succeed; on the embedded runner a job cut off mid-run is taken over once stale, and a replica
starting does not requeue the jobs another replica is running."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.orthanc import service_settings
from tests.results import result
from tumorseg.api.main import create_app
from tumorseg.db import migrate
from tumorseg.db.jobs import PgJobStore
from tumorseg.db.pool import Database
from tumorseg.db.results import PgResultStore
from tumorseg.errors import DatabaseSchemaError, DatabaseUnavailable, InvalidInput, ModelError
from tumorseg.jobs.embedded import EmbeddedRunner
from tumorseg.pipeline import Segmenter
from tumorseg.results import new_result_id
from tumorseg.schema import JobRequest

pytestmark = pytest.mark.integration


def _store(url: str) -> PgJobStore:
    migrate.upgrade(url)
    return PgJobStore(Database(url, max_size=4))


def test_a_nul_byte_is_invalid_input_not_a_server_error(postgres: str, tmp_path: Path) -> None:
    jobs = _store(postgres)
    try:
        with pytest.raises(InvalidInput):
            jobs.get("a\x00")
        with pytest.raises(InvalidInput):
            jobs.list(patient_id="a\x00")
    finally:
        jobs.close()
    settings = service_settings("http://127.0.0.1:9", None, database_url=postgres, results_dir=tmp_path / "r")
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        assert api.get("/jobs/%00").status_code == 422
        assert api.get(f"/jobs/{'0' * 31}%00").status_code == 422
        listed = api.get("/jobs", params={"patient_id": "a\x00"})
        assert listed.status_code == 422, listed.text
        assert listed.json()["code"] == "invalid_input"
        assert api.get(f"/jobs/{new_result_id()}").status_code == 404


def test_pooled_connections_carry_their_timeouts_and_an_old_server_is_refused(
    postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(postgres, max_size=1)
    try:
        with db.connection() as conn:
            settings = {
                name: conn.execute(f"SHOW {name}").fetchone()[name]  # type: ignore[index]
                for name in ("idle_in_transaction_session_timeout", "statement_timeout")
            }
            assert settings == {"idle_in_transaction_session_timeout": "30s", "statement_timeout": "2min"}
            assert conn.pgconn.info is not None
            options = {opt.keyword: opt.val for opt in conn.pgconn.info}
            assert options[b"tcp_user_timeout"] == b"10000"
    finally:
        db.close()
    monkeypatch.setattr(migrate, "MIN_SERVER_VERSION", 990000)
    with pytest.raises(DatabaseSchemaError, match="PostgreSQL 99 or newer"):
        migrate.upgrade(postgres)


def test_two_attempts_committing_one_result_at_once_both_succeed(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = _store(postgres)
    results = PgResultStore(jobs.db, jobs=jobs)
    rid = new_result_id()
    try:
        with psycopg.connect(postgres) as first:  # the first attempt, inside its commit's transaction
            first.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (rid,))
            first.execute(
                "INSERT INTO results (result_id, body, size_bytes, stored_at) VALUES (%s, %s, 2, 0)",
                (rid, result(rid).model_dump_json()),
            )
            errors: list[BaseException] = []

            def second() -> None:
                staging = results.staging(rid)
                (staging / "mask.nii.gz").write_bytes(b"second")
                try:
                    results.commit(staging, result(rid))
                except BaseException as error:  # noqa: BLE001 - reported by the test
                    errors.append(error)

            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.5)  # the second attempt is now waiting on the first
            first.commit()
            thread.join(30)
        assert not thread.is_alive() and errors == []
        assert results.read_file(rid, "mask.nii.gz") == b"second"  # the later commit replaced the first

        def failing(keep: str | None = None) -> int:
            raise DatabaseUnavailable("the database is gone")

        monkeypatch.setattr(results, "enforce_retention", failing)
        staging = results.staging(rid)
        (staging / "mask.nii.gz").write_bytes(b"third")
        results.commit(staging, result(rid))  # committed; the failed clean-up is only logged
        assert results.read_file(rid, "mask.nii.gz") == b"third"
    finally:
        jobs.close()


def _queue(store: PgJobStore) -> str:
    return store.create(JobRequest(patient_id="P"), "api", new_result_id(), None).job_id


def test_the_embedded_runner_leaves_a_live_replicas_jobs_and_takes_over_a_stale_one(postgres: str) -> None:
    store = _store(postgres)
    job_id = _queue(store)
    claimed = store.claim_next()  # a live replica runs it
    assert claimed is not None and claimed.attempts == 1

    def no_model() -> Segmenter:
        raise ModelError("no model here")

    runner = EmbeddedRunner(store, no_model)
    runner.start()  # a second replica starting: the live one's job is not queued again
    try:
        time.sleep(1.0)
        live = store.get(job_id)
        assert live is not None and (live.state, live.attempts) == ("running", 1)
        with psycopg.connect(postgres, autocommit=True) as conn:  # its run cut off an hour ago
            conn.execute("UPDATE jobs SET heartbeat_at = heartbeat_at - 3600 WHERE job_id = %s", (job_id,))
        runner._wake.set()
        deadline = time.monotonic() + 30
        while (job := store.get(job_id)) is not None and job.state == "running":
            assert time.monotonic() < deadline, "the stale job was not taken over"
            time.sleep(0.2)
        assert job is not None and (job.state, job.attempts, job.code) == ("failed", 2, "model_error")
    finally:
        runner.stop()
        store.close()


def test_job_and_result_times_are_the_servers_not_the_hosts(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(postgres)
    results = PgResultStore(store.db, max_age_days=1, jobs=store)
    try:
        job_id = _queue(store)
        assert store.claim_next() is not None  # a replica with a good clock runs it
        kept = new_result_id()
        staging = results.staging(kept)
        results.commit(staging, result(kept))
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 2 * 86400)  # a host whose clock is two days ahead
        assert store.unfinished(stale_s=60) == ()  # its heartbeat is fresh by the server's clock
        assert store.claim(job_id, stale_s=60) is None
        assert store.requeue_running(stale_s=60) == 0
        other = new_result_id()
        results.commit(results.staging(other), result(other))  # retention runs: nothing is a day old
        assert results.read(kept).result_id == kept
    finally:
        store.close()
