"""The persistent job store: one SQLite file, ``<results_dir>/jobs.sqlite3``, next to the results.

A job is a segmentation asked for and not necessarily done yet (docs/contract.md "Jobs"): its request, its
state (``queued`` → ``running`` → ``done`` | ``failed`` | ``skipped``), the stage it is in, the result id it
was given when it was created, and, once it ended badly, the error ``code`` and ``reason``. Every
transition is one SQL statement in its own transaction, so a crash leaves each job in a state it was
really in; ``requeue_running`` puts back the jobs that a dead process was running.

A process running a job writes ``heartbeat_at`` every few seconds (``beat``). In distributed mode a job
whose heartbeat is older than half the queue's heartbeat timeout belongs to a dead worker, and the
worker that the queue redelivers it to may claim it (``claim``).

``JobStore`` is the interface; two engines implement it with the same methods and one shared test suite:
``SqliteJobStore`` here, and ``tumorseg.db.jobs.PgJobStore`` (``TUMORSEG_DATABASE_URL``). SQLite in WAL
mode serves the processes of one host (the API, its runner thread, workers sharing the results volume).
WAL needs shared memory, so the file must not be on a network filesystem; across hosts, PostgreSQL.

The auto-trigger's idempotency key is UNIQUE (an index), and ``create`` relies on it: of two processes
creating a job for one key, one inserts and the other gets that job back. A store written before the index
existed may hold duplicate keys (two API processes racing): opening it keeps every job and clears the key
of all but the oldest job of each key (that one still marks the study as done), then builds the index.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from tumorseg.errors import InvalidInput
from tumorseg.schema import Job, JobOrigin, JobRequest, JobState

log = logging.getLogger(__name__)

JOBS_DB = "jobs.sqlite3"
MAX_OFFSET = 2**31  # SQLite integers are 64-bit; no job list is longer than this
ACTIVE: tuple[JobState, ...] = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    stage TEXT,
    origin TEXT NOT NULL,
    request TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    study_instance_uid TEXT,
    result_id TEXT NOT NULL UNIQUE,
    key TEXT,
    code TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_instance_uid);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = (
    "job_id, state, stage, origin, request, patient_id, study_instance_uid, result_id, code, reason, "
    "attempts, created_at, started_at, finished_at"
)


# What claiming a job sets; the two parameters are the time, for started_at and heartbeat_at.
CLAIM = "state = 'running', stage = NULL, attempts = attempts + 1, started_at = ?, heartbeat_at = ?"


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= 1000 or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"limit must be 1..1000 and offset 0..{MAX_OFFSET}")


Row = Mapping[str, Any] | sqlite3.Row  # either engine's row, by column name
Statement = tuple[str, Sequence[object]]  # SQL in the engine's placeholders, and its parameters


def job_from_row(row: Row) -> Job:
    """A job from a row of ``_COLUMNS`` (either engine's)."""
    return Job(
        job_id=row["job_id"],
        state=row["state"],
        stage=row["stage"],
        origin=row["origin"],
        request=JobRequest.model_validate_json(row["request"]),
        patient_id=row["patient_id"],
        study_instance_uid=row["study_instance_uid"],
        result_id=row["result_id"],
        code=row["code"],
        reason=row["reason"],
        attempts=row["attempts"],
        created_at=_iso(row["created_at"]),
        started_at=_iso(row["started_at"]),
        finished_at=_iso(row["finished_at"]),
    )


class JobStore(ABC):
    """The job store's interface (see the module docstring); ``JobStore(root)`` still builds the SQLite
    store, as it did before there were two engines. The reads and the plain updates are written once,
    here, over an engine's ``_read``, ``_write`` and ``_now``; each engine writes its own creation, claims
    and requeues."""

    MARK: ClassVar[str]  # the driver's parameter placeholder
    TIEBREAK: ClassVar[str]  # the column that orders jobs created in the same instant

    def __new__(cls, *args: Any, **kwargs: Any) -> JobStore:
        return super().__new__(SqliteJobStore if cls is JobStore else cls)

    @abstractmethod
    def _read(self, *statements: Statement) -> Sequence[Sequence[Row]]:
        """The rows of each statement, read together (one transaction, or under the store's lock)."""

    @abstractmethod
    def _write(self, statement: Statement) -> int:
        """Run one statement (its own transaction); how many rows it changed."""

    @abstractmethod
    def _now(self) -> Statement:
        """The time now, in seconds since the epoch, as SQL and its parameters: the clock every job time
        is written and compared with."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def create(
        self,
        request: JobRequest,
        origin: JobOrigin,
        result_id: str,
        key: str | None = None,
        *,
        running: bool = False,
    ) -> Job:
        """A new ``queued`` job, or with ``running`` one already claimed by the caller (a synchronous
        request run in its own thread); ``key`` (the auto-trigger's idempotency key) marks what it
        segments. When a job with ``key`` exists already (another process created it first), that job,
        unchanged: its ``result_id`` is not the one given, which tells the caller it created nothing."""

    def _first(self, column: str, value: str, select: str = COLUMNS) -> Sequence[Row]:
        """``select`` of the first job whose ``column`` is ``value``: one row, or none."""
        (rows,) = self._read((f"SELECT {select} FROM jobs WHERE {column} = {self.MARK} LIMIT 1", (value,)))
        return rows

    @property
    def _held(self) -> str:
        """SQL: the job (a parameter) is running the attempt (the next one) that writes."""
        return f"job_id = {self.MARK} AND state = 'running' AND attempts = {self.MARK}"

    def _job(self, column: str, value: str) -> Job | None:
        rows = self._first(column, value)
        return job_from_row(rows[0]) if rows else None

    def get(self, job_id: str) -> Job | None:
        return self._job("job_id", job_id)

    def by_result(self, result_id: str) -> Job | None:
        return self._job("result_id", result_id)

    def list(
        self,
        *,
        state: JobState | None = None,
        patient_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many match in all."""
        check_page(limit, offset)
        given = {column: v for column, v in (("state", state), ("patient_id", patient_id)) if v is not None}
        clause = " AND ".join(f"{column} = {self.MARK}" for column in given)
        clause = f" WHERE {clause}" if clause else ""
        args = list(given.values())
        count, rows = self._read(
            (f"SELECT COUNT(*) AS n FROM jobs{clause}", args),
            (
                f"SELECT {COLUMNS} FROM jobs{clause} ORDER BY created_at DESC, {self.TIEBREAK} DESC "
                f"LIMIT {self.MARK} OFFSET {self.MARK}",
                [*args, limit, offset],
            ),
        )
        return [job_from_row(r) for r in rows], int(count[0]["n"])

    @abstractmethod
    def claim_next(self) -> Job | None:
        """The oldest queued job, now ``running``; ``None`` when none is queued."""

    @abstractmethod
    def claim(self, job_id: str, stale_s: float) -> Job | None:
        """Job ``job_id``, now ``running`` for the caller, if it is queued or its runner's heartbeat is
        older than ``stale_s`` (a dead worker's job, redelivered); ``None`` if it has ended or a live
        process runs it (a duplicate delivery), or if there is no such job."""

    def beat(self, job_id: str, attempt: int) -> bool:
        """The process running attempt ``attempt`` of the job is alive; ``False`` when that attempt no
        longer holds the job (another process took it over, or it ended)."""
        now, at = self._now()
        beat = f"UPDATE jobs SET heartbeat_at = {now} WHERE {self._held}"
        return self._write((beat, (*at, job_id, attempt))) == 1

    @abstractmethod
    def unfinished(self, stale_s: float) -> tuple[str, ...]:
        """Ids of the jobs no live process has in hand for ``stale_s``: queued at least that long ago
        (a job just created is being sent), or running with a heartbeat older than that; oldest first.
        The API's sweep sends those that no message in Redis stands for again."""

    def set_stage(self, job_id: str, stage: str, attempt: int) -> None:
        self._write((f"UPDATE jobs SET stage = {self.MARK} WHERE {self._held}", (stage, job_id, attempt)))

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        attempt: int | None = None,
        study_instance_uid: str | None = None,
        code: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Record how the job ended; with ``attempt``, only if that attempt still holds it (a worker that
        was taken for dead does not overwrite the run that took its job over). Whether it was recorded."""
        now, at = self._now()
        m = self.MARK
        job = f"job_id = {m}" if attempt is None else self._held
        sql = (
            f"UPDATE jobs SET state = {m}, stage = NULL, code = {m}, reason = {m}, finished_at = {now}, "
            f"study_instance_uid = COALESCE({m}, study_instance_uid) WHERE {job}"
        )
        held = () if attempt is None else (attempt,)
        return self._write((sql, (state, code, reason, *at, study_instance_uid, job_id, *held))) == 1

    def delete(self, job_id: str) -> None:
        self._write((f"DELETE FROM jobs WHERE job_id = {self.MARK}", (job_id,)))

    @abstractmethod
    def requeue_running(self, stale_s: float = 0.0) -> int:
        """Put back the jobs a process that died was running (the embedded runner calls this at start):
        only those whose heartbeat is at least ``stale_s`` old, so that a replica starting next to a live
        one leaves its jobs alone. Returns how many. A synchronous request's job (origin ``segment``) is
        not run again, since nobody waits for it any more: it fails ``interrupted``, and its caller, who
        got no answer, asks again."""

    def has_key(self, key: str) -> bool:
        return bool(self._first("key", key, "1"))

    def has_study(self, study_instance_uid: str) -> bool:
        return bool(self._first("study_instance_uid", study_instance_uid, "1"))

    def get_meta(self, name: str) -> str | None:
        """A named value of the store (the auto-trigger's cursor), ``None`` if never set."""
        (rows,) = self._read((f"SELECT value FROM meta WHERE name = {self.MARK}", (name,)))
        return str(rows[0]["value"]) if rows else None

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None: ...


# What a requeue of a dead process's synchronous request records.
INTERRUPTED_REASON = "the service stopped while this request ran; ask again"


class SqliteJobStore(JobStore):
    """The job store in ``<root>/jobs.sqlite3`` (the embedded default)."""

    MARK = "?"
    TIEBREAK = "rowid"

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / JOBS_DB
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, shared by the API's threads
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "heartbeat_at" not in columns:  # a store written before heartbeats existed
            try:
                self._db.execute("ALTER TABLE jobs ADD COLUMN heartbeat_at REAL")
            except sqlite3.OperationalError as exc:  # another process starting at once added it first
                if "duplicate column" not in str(exc):
                    raise
        self._unique_keys()

    def _unique_keys(self) -> None:
        """The UNIQUE index of job keys, built on a store from before it (see the module docstring)."""
        if any(row["name"] == "jobs_key_unique" for row in self._db.execute("PRAGMA index_list(jobs)")):
            return
        self._db.execute("BEGIN IMMEDIATE")  # one process at a time; the others then find the index
        try:
            cleared = self._db.execute(
                "UPDATE jobs SET key = NULL WHERE key IS NOT NULL AND rowid NOT IN "
                "(SELECT MIN(rowid) FROM jobs WHERE key IS NOT NULL GROUP BY key)"
            ).rowcount
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_key_unique ON jobs (key)")
            self._db.execute("DROP INDEX IF EXISTS jobs_key")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if cleared:
            log.warning(
                "job store %s: %d job(s) shared a key with an older job; their key is cleared",
                self.path,
                cleared,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def _read(self, *statements: Statement) -> list[list[sqlite3.Row]]:
        with self._sql() as db:
            return [db.execute(sql, args).fetchall() for sql, args in statements]

    def _write(self, statement: Statement) -> int:
        with self._sql() as db:
            return db.execute(*statement).rowcount

    def _now(self) -> Statement:
        return "?", (time.time(),)

    def create(
        self,
        request: JobRequest,
        origin: JobOrigin,
        result_id: str,
        key: str | None = None,
        *,
        running: bool = False,
    ) -> Job:
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._sql() as db:
            row = db.execute(
                "INSERT INTO jobs (job_id, state, origin, request, patient_id, study_instance_uid, "
                "result_id, key, attempts, created_at, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING job_id",
                (
                    job_id,
                    "running" if running else "queued",
                    origin,
                    request.model_dump_json(),
                    request.patient_id,
                    request.study,
                    result_id,
                    key,
                    int(running),
                    now,
                    now if running else None,
                    now if running else None,
                ),
            ).fetchone()
            if row is None:  # the key's job exists: created by another process first
                row = db.execute("SELECT job_id FROM jobs WHERE key = ?", (key,)).fetchone()
        job = self.get(row["job_id"])
        assert job is not None
        return job

    def claim_next(self) -> Job | None:
        with self._sql() as db:
            now = time.time()
            row = db.execute(
                f"UPDATE jobs SET {CLAIM} WHERE job_id = (SELECT job_id FROM jobs WHERE state = 'queued' "
                "ORDER BY created_at, rowid LIMIT 1) AND state = 'queued' RETURNING job_id",
                (now, now),
            ).fetchone()
        return None if row is None else self.get(row["job_id"])

    def claim(self, job_id: str, stale_s: float) -> Job | None:
        with self._sql() as db:
            now = time.time()
            row = db.execute(
                f"UPDATE jobs SET {CLAIM} WHERE job_id = ? AND (state = 'queued' OR "
                "(state = 'running' AND COALESCE(heartbeat_at, started_at, 0) < ?)) RETURNING job_id",
                (now, now, job_id, now - stale_s),
            ).fetchone()
        return None if row is None else self.get(row["job_id"])

    def unfinished(self, stale_s: float) -> tuple[str, ...]:
        with self._sql() as db:
            before = time.time() - stale_s
            rows = db.execute(
                "SELECT job_id FROM jobs WHERE (state = 'queued' AND created_at < ?) OR (state = 'running' "
                "AND COALESCE(heartbeat_at, started_at, 0) < ?) ORDER BY created_at, rowid",
                (before, before),
            ).fetchall()
        return tuple(r["job_id"] for r in rows)

    def requeue_running(self, stale_s: float = 0.0) -> int:
        now = time.time()
        stale = "state = 'running' AND COALESCE(heartbeat_at, started_at, 0) <= ?"
        with self._sql() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', stage = NULL, code = 'interrupted', finished_at = ?, "
                f"reason = ? WHERE {stale} AND origin = 'segment'",
                (now, INTERRUPTED_REASON, now - stale_s),
            )
            return db.execute(
                f"UPDATE jobs SET state = 'queued', stage = NULL WHERE {stale}", (now - stale_s,)
            ).rowcount

    def set_meta(self, name: str, value: str) -> None:
        with self._sql() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                (name, value, value),
            )
