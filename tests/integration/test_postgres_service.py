"""The service on PostgreSQL (``TUMORSEG_DATABASE_URL``): a segmentation stored and served from the
database with no results directory, a clear 503 with Retry-After while the database is down (never a
500), served again once it is back; the wiring picks the engines; an old SQLite store moved in by
``tumorseg db import-sqlite``; a schema newer than the code refuses to start."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.orthanc import OrthancEndpoint, segment_settings, service_settings, upload_folder
from tests.results import result
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg.cli import app as cli_app
from tumorseg.config import get_settings
from tumorseg.db import migrate, pool
from tumorseg.db.jobs import PgJobStore
from tumorseg.db.pool import Database
from tumorseg.db.results import PgResultStore
from tumorseg.errors import DatabaseSchemaError
from tumorseg.jobstore import SqliteJobStore
from tumorseg.results import DirResultStore, new_result_id
from tumorseg.schema import JobRequest
from tumorseg.wiring import open_jobs, open_store
from tumorseg_devkit.postgres import LocalPostgres
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


def _text(output: str) -> str:
    return " ".join(output.split())


def test_a_result_is_stored_and_served_from_postgresql_and_a_database_outage_is_a_503(
    orthanc: OrthancEndpoint,
    plain_study: ConvertedStudy,
    random_model: Path,
    own_postgres: LocalPostgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A request waits for a connection before its 503: 1 s here rather than the service's 5 (pool.WAIT_S)
    monkeypatch.setattr(pool, "WAIT_S", 1.0)
    patient_id = clone_study(plain_study, tmp_path / "clone")
    upload_folder(orthanc, tmp_path / "clone")
    url = own_postgres.create_database()
    unused = tmp_path / "results"
    settings = segment_settings(orthanc.url, orthanc.auth, random_model, unused, database_url=url)
    with TestClient(create_app(settings)) as api:
        made = api.post(f"/segment/{patient_id}", params={"store_seg": "true"})
        assert made.status_code == 200, made.text
        rid = made.json()["result_id"]
        mask = api.get(f"/results/{rid}/mask.nii.gz")
        assert mask.status_code == 200 and mask.content[:2] == b"\x1f\x8b"
        with psycopg.connect(url) as conn:
            stored = dict(
                conn.execute("SELECT name, data FROM result_files WHERE result_id = %s", (rid,)).fetchall()
            )
        assert set(stored) == {"mask.nii.gz", "preview.png", "reference.nii.gz", "report.dcm"}  # the SR too
        assert stored["mask.nii.gz"] == mask.content
        assert api.get(f"/results/{rid}").json()["dicom_sr"] == made.json()["dicom_sr"]
        assert not unused.exists()  # no results directory on PostgreSQL

        own_postgres.stop()
        for path in (f"/results/{rid}/mask.nii.gz", "/jobs"):  # each waits for a connection first
            down = api.get(path)
            assert down.status_code == 503, (path, down.text)
            assert down.json()["code"] == "database_unavailable" and int(down.headers["Retry-After"]) > 0
            assert url.split("@")[0].split(":")[-1] not in down.text  # no password in the answer

        own_postgres.start()
        restarted = time.monotonic()
        while (back := api.get(f"/results/{rid}/mask.nii.gz")).status_code == 503:
            assert time.monotonic() - restarted < 30, "the pool did not reconnect"
        assert back.status_code == 200 and back.content == mask.content
        assert api.get("/jobs").status_code == 200


def test_the_wiring_picks_postgresql_with_a_database_url_and_sqlite_without(
    postgres: str, tmp_path: Path
) -> None:
    on_pg = service_settings("http://orthanc:8042", None, results_dir=tmp_path / "pg", database_url=postgres)
    jobs = open_jobs(on_pg)
    store = open_store(on_pg, jobs)
    assert isinstance(jobs, PgJobStore) and isinstance(store, PgResultStore) and store.db is jobs.db
    assert not (tmp_path / "pg").exists()
    jobs.close()
    embedded = service_settings("http://orthanc:8042", None, results_dir=tmp_path / "dir")
    jobs = open_jobs(embedded)
    assert isinstance(jobs, SqliteJobStore) and isinstance(open_store(embedded, jobs), DirResultStore)
    assert (tmp_path / "dir" / "jobs.sqlite3").is_file()
    jobs.close()


def test_a_schema_newer_than_the_code_refuses_to_start(postgres: str) -> None:
    migrate.upgrade(postgres)
    with psycopg.connect(postgres) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_a_newer_release'")
    settings = service_settings("http://orthanc:8042", None, database_url=postgres)
    with pytest.raises(DatabaseSchemaError, match="newer than this code"):
        open_jobs(settings)


def test_import_sqlite_moves_an_embedded_store_and_can_run_again(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_dir = tmp_path / "results"
    jobs = SqliteJobStore(old_dir)
    results = DirResultStore(old_dir, jobs=jobs)
    done = jobs.create(JobRequest(patient_id="A"), "auto", new_result_id(), "study-1:v1")
    jobs.finish(done.job_id, "done", study_instance_uid="1.2.3")
    staging = results.staging(done.result_id)
    (staging / "mask.nii.gz").write_bytes(b"\x1f\x8bmask")
    (staging / "preview.png").write_bytes(b"\x89PNG")
    results.commit(staging, result(done.result_id))
    queued = jobs.create(JobRequest(patient_id="B"), "api", new_result_id())
    jobs.set_meta("orthanc_seq", "42")
    jobs.close()

    monkeypatch.setenv("TUMORSEG_DATABASE_URL", postgres)
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(cli_app, ["db", "import-sqlite", str(old_dir)])
        again = CliRunner().invoke(cli_app, ["db", "import-sqlite", str(old_dir)])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    assert "imported 2 job(s) (0 there already), 1 cursor(s), 1 result(s)" in first.output
    assert (
        again.exit_code == 0
        and "imported 0 job(s) (2 there already), 0 cursor(s), 0 result(s)" in again.output
    )

    db = Database(postgres, max_size=2)
    moved = PgJobStore(db)
    store = PgResultStore(db, jobs=moved)
    assert moved.get(done.job_id) == SqliteJobStore(old_dir).get(done.job_id)
    assert moved.get(queued.job_id).state == "queued"  # type: ignore[union-attr]
    assert moved.has_key("study-1:v1") and moved.get_meta("orthanc_seq") == "42"
    assert store.read(done.result_id) == result(done.result_id)
    assert store.read_file(done.result_id, "mask.nii.gz") == b"\x1f\x8bmask"
    # the trigger's create for the same key finds the imported job: no second segmentation
    assert (
        moved.create(JobRequest(patient_id="A"), "auto", new_result_id(), "study-1:v1").job_id == done.job_id
    )
    db.close()


def test_db_upgrade_command_migrates_once(postgres: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUMORSEG_DATABASE_URL", postgres)
    get_settings.cache_clear()
    try:
        first = CliRunner().invoke(cli_app, ["db", "upgrade"])
        second = CliRunner().invoke(cli_app, ["db", "upgrade"])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and f"-> {migrate.head()}" in _text(first.output), first.output
    assert second.exit_code == 0 and "up to date" in _text(second.output)
    assert ":***@" in first.output and postgres.split("@")[0].split(":")[-1] not in first.output


def test_replicas_starting_together_migrate_once(postgres: str) -> None:
    """Four processes migrate an empty database at the same instant: one migrates, the others wait for its
    lock and find the schema at head. Without the lock, concurrent CREATE TABLEs fail all but one."""
    start_at = time.time() + 6  # after every process has imported what it needs
    script = (
        "import sys, time; from tumorseg.db import migrate; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); print(migrate.upgrade(sys.argv[1]))"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, postgres, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-500:] for _, err in outcomes]
    head = migrate.head()
    assert sorted(out.strip() for out, _ in outcomes) == sorted(
        [str((None, head))] + [str((head, head))] * 3
    ), outcomes
