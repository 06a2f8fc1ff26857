"""The job store in PostgreSQL: ``tumorseg.jobstore.JobStore``'s methods over the ``jobs`` and ``meta``
tables (schema: ``migrations/versions``), for API replicas and workers on different hosts.

The semantics are the SQLite store's, statement for statement: every transition is one statement in its
own transaction, claims are conditional updates (``FOR UPDATE SKIP LOCKED`` picks the next queued job, so
two runners never take the same one), and ``create`` relies on the UNIQUE job key
(``INSERT ... ON CONFLICT (key) DO NOTHING``) rather than a check before the insert. ``seq`` breaks ties
between jobs created in the same instant, as SQLite's rowid does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import psycopg
from psycopg.rows import DictRow

from tumorseg.db.pool import Database
from tumorseg.errors import InvalidInput
from tumorseg.jobstore import CLAIM, COLUMNS, INTERRUPTED_REASON, JobStore, Statement, job_from_row
from tumorseg.schema import Job, JobOrigin, JobRequest

# The server's clock, not this host's: every time a job carries (created, started, heartbeat, finished) is
# written and compared in SQL, so replicas whose clocks differ still agree on whose heartbeat is stale.
NOW = "extract(epoch from statement_timestamp())::float8"
_CLAIM_PG = CLAIM.replace("?", NOW)

# The trigger leader's lock session while its thread is inside ``fenced``; see there.
_FENCE: ContextVar[psycopg.Connection[DictRow] | None] = ContextVar("tumorseg_fence", default=None)


@contextmanager
def fenced(conn: psycopg.Connection[DictRow]) -> Iterator[None]:
    """Inside, this thread's job inserts (``create``) and ``set_meta`` go over ``conn``, the trigger
    leader's own session that holds its advisory lock, instead of the pool: they take effect only while
    that session, and with it the lock, lives (a server restart or a terminated backend fails them)."""
    token = _FENCE.set(conn)
    try:
        yield
    finally:
        _FENCE.reset(token)


class PgJobStore(JobStore):
    """The job store in the PostgreSQL database behind ``db`` (its pool, shared with the result store)."""

    MARK = "%s"
    TIEBREAK = "seq"

    def __init__(self, db: Database) -> None:
        self.db = db

    def _read(self, *statements: Statement) -> list[list[DictRow]]:
        """One statement over a pooled connection, several in one transaction."""
        with self.db.transaction() if len(statements) > 1 else self.db.connection() as conn:
            return [conn.execute(sql, args).fetchall() for sql, args in statements]

    def _write(self, statement: Statement) -> int:
        with self.db.connection() as conn:
            return conn.execute(*statement).rowcount

    def _now(self) -> Statement:
        return NOW, ()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Connection[DictRow]]:
        """The fenced session inside ``fenced``, else a pooled connection (the same errors for a value
        the server refuses)."""
        fence = _FENCE.get()
        if fence is None:
            with self.db.connection() as conn:
                yield conn
            return
        try:
            yield fence
        except psycopg.DataError as exc:
            raise InvalidInput(
                f"a value the database cannot store: {exc.diag.message_primary or exc}"
            ) from exc

    def create(
        self,
        request: JobRequest,
        origin: JobOrigin,
        result_id: str,
        key: str | None = None,
        *,
        running: bool = False,
    ) -> Job:
        with self._writing() as conn:
            row = conn.execute(
                "INSERT INTO jobs (job_id, state, origin, request, patient_id, study_instance_uid, "
                "result_id, key, attempts, created_at, started_at, heartbeat_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, {NOW}, CASE WHEN %s THEN {NOW} END, "
                f"CASE WHEN %s THEN {NOW} END) ON CONFLICT (key) DO NOTHING RETURNING {COLUMNS}",
                (
                    uuid.uuid4().hex,
                    "running" if running else "queued",
                    origin,
                    request.model_dump_json(),
                    request.patient_id,
                    request.study,
                    result_id,
                    key,
                    int(running),
                    running,
                    running,
                ),
            ).fetchone()
            if row is None:  # the key's job exists: created by another process first
                row = conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE key = %s", (key,)).fetchone()
        assert row is not None
        return job_from_row(row)

    def _claimed(self, sql: str, args: tuple[object, ...]) -> Job | None:
        with self.db.connection() as conn:
            row = conn.execute(sql, args).fetchone()
        return None if row is None else job_from_row(row)

    def claim_next(self) -> Job | None:
        return self._claimed(
            f"UPDATE jobs SET {_CLAIM_PG} WHERE job_id = (SELECT job_id FROM jobs WHERE state = 'queued' "
            "ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AND state = 'queued' "
            f"RETURNING {COLUMNS}",
            (),
        )

    def claim(self, job_id: str, stale_s: float) -> Job | None:
        return self._claimed(
            f"UPDATE jobs SET {_CLAIM_PG} WHERE job_id = %s AND (state = 'queued' OR "
            f"(state = 'running' AND COALESCE(heartbeat_at, started_at, 0) < {NOW} - %s)) "
            f"RETURNING {COLUMNS}",
            (job_id, stale_s),
        )

    def unfinished(self, stale_s: float) -> tuple[str, ...]:
        with self.db.connection() as conn:
            rows = conn.execute(
                f"SELECT job_id FROM jobs WHERE (state = 'queued' AND created_at < {NOW} - %s) OR (state = "
                f"'running' AND COALESCE(heartbeat_at, started_at, 0) < {NOW} - %s) ORDER BY created_at, seq",
                (stale_s, stale_s),
            ).fetchall()
        return tuple(r["job_id"] for r in rows)

    def requeue_running(self, stale_s: float = 0.0) -> int:
        stale = f"state = 'running' AND COALESCE(heartbeat_at, started_at, 0) <= {NOW} - %s"
        with self.db.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET state = 'failed', stage = NULL, code = 'interrupted', finished_at = {NOW}, "
                f"reason = %s WHERE {stale} AND origin = 'segment'",
                (INTERRUPTED_REASON, stale_s),
            )
            return conn.execute(
                f"UPDATE jobs SET state = 'queued', stage = NULL WHERE {stale}", (stale_s,)
            ).rowcount

    def set_meta(self, name: str, value: str) -> None:
        with self._writing() as conn:
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (name, value),
            )
