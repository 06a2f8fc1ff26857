"""Moving an embedded store into PostgreSQL (``tumorseg db import-sqlite RESULTS_DIR``): the jobs and the
trigger's cursors of ``RESULTS_DIR/jobs.sqlite3`` and every result folder (JSON and files).

The source is only read (opened read-only; no retention, no clean-up). What the database holds already is
kept: a job, cursor or result with the same id (or a job with the same key) is skipped. A second run
therefore adds only what is new since the first; it does not update what the first copied (a job that has
ended since stays as it was copied, a cursor keeps its first value): import once the old service is
stopped for good, and run it again only to finish an import that was cut off. A result keeps its age (the
folder's mtime becomes ``stored_at``), so retention treats it as before. Each result goes in with its files
in one transaction.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tumorseg.db.pool import Database
from tumorseg.errors import ResultNotFound
from tumorseg.jobstore import JOBS_DB
from tumorseg.results import RESULT_JSON, check_result_id
from tumorseg.schema import SegmentResult

log = logging.getLogger(__name__)

_JOB_COLUMNS = (
    "job_id, state, stage, origin, request, patient_id, study_instance_uid, result_id, key, code, reason, "
    "attempts, created_at, started_at, finished_at, heartbeat_at"
)


@dataclass
class Imported:
    """What one import did: rows inserted, and rows skipped because the database had them already."""

    jobs: int = 0
    jobs_kept: int = 0
    cursors: int = 0
    results: int = 0
    results_kept: int = 0
    results_unreadable: int = 0


def import_sqlite(results_dir: Path, db: Database) -> Imported:
    """Copy the embedded store in ``results_dir`` into ``db`` (migrated already)."""
    done = Imported()
    if (Path(results_dir) / JOBS_DB).is_file():
        _import_jobs(Path(results_dir) / JOBS_DB, db, done)
    for folder in sorted(Path(results_dir).iterdir()):
        try:
            check_result_id(folder.name)
        except ResultNotFound:  # staging, deletions, the job store, anything else
            continue
        if folder.is_dir() and (folder / RESULT_JSON).is_file():
            _import_result(folder, db, done)
    return done


def _import_jobs(path: Path, db: Database, done: Imported) -> None:
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in source.execute("PRAGMA table_info(jobs)")}
        wanted = _JOB_COLUMNS if "heartbeat_at" in columns else _JOB_COLUMNS.replace(", heartbeat_at", "")
        # a store from before the UNIQUE key may hold duplicates: the oldest job keeps the key, as on opening
        selected = wanted.replace(
            " key,",
            " CASE WHEN rowid = (SELECT MIN(rowid) FROM jobs AS o WHERE o.key = jobs.key) THEN key END,",
        )
        jobs = source.execute(f"SELECT {selected} FROM jobs ORDER BY created_at, rowid").fetchall()
        meta = source.execute("SELECT name, value FROM meta").fetchall()
    finally:
        source.close()
    placeholders = ", ".join(["%s"] * len(wanted.split(", ")))
    with db.transaction() as conn:
        for job in jobs:
            inserted = conn.execute(
                f"INSERT INTO jobs ({wanted}) VALUES ({placeholders}) ON CONFLICT DO NOTHING", job
            ).rowcount
            done.jobs += inserted
            done.jobs_kept += 1 - inserted
        for name, value in meta:
            done.cursors += conn.execute(
                "INSERT INTO meta (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, value)
            ).rowcount


def _import_result(folder: Path, db: Database, done: Imported) -> None:
    body = (folder / RESULT_JSON).read_text(encoding="utf-8")
    try:
        SegmentResult.model_validate_json(body)
    except ValidationError:
        log.warning("result %s: its %s is not a result; not imported", folder.name, RESULT_JSON)
        done.results_unreadable += 1
        return
    files = {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != RESULT_JSON
    }
    size = len(body.encode()) + sum(len(data) for data in files.values())
    with db.transaction() as conn:
        inserted = conn.execute(
            "INSERT INTO results (result_id, body, size_bytes, stored_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (result_id) DO NOTHING",
            (folder.name, body, size, os.stat(folder).st_mtime),
        ).rowcount
        if inserted:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO result_files (result_id, name, data) VALUES (%s, %s, %s)",
                    [(folder.name, name, data) for name, data in files.items()],
                )
    done.results += inserted
    done.results_kept += 1 - inserted
