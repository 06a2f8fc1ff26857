"""The result store in PostgreSQL: ``tumorseg.results.ResultStore``'s methods over the ``results`` (the
result JSON, its size and when it was last written) and ``result_files`` (each file's bytes) tables, so
that any API replica serves any result and no worker needs a shared directory.

Files are ``bytea`` values, not large objects: a result's files are a few MB at most (far under bytea's
1 GB), a row is written and deleted in the same transaction as its result (large objects are separate
objects that a deleted row would orphan until ``vacuumlo``), ``pg_dump`` and replication carry them like
any row, and a pooled connection in autocommit can read one with a plain SELECT.

Atomicity: ``commit`` inserts the result and all its files in one transaction, so a reader sees the
whole result or none. Committing a result id again (a job run twice after a lost connection) replaces the
first commit whole, in the same transaction. Retention is the directory's: the age of a result is its
last write (``stored_at``: commit, ``update``), the size bound counts the JSON and the files, and the
result just committed is spared. Staging folders are local temporary folders, removed by ``commit``
and ``discard``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tumorseg.db.jobs import NOW
from tumorseg.db.pool import Database
from tumorseg.errors import ResultNotFound, TumorsegError
from tumorseg.jobstore import JobStore
from tumorseg.results import FILES, ResultStore, check_result_id
from tumorseg.schema import SegmentResult

log = logging.getLogger(__name__)

STAGING_PREFIX = "tumorseg-result-"


def _body(result: SegmentResult) -> str:
    """The result JSON as the directory store writes it."""
    return result.model_dump_json(indent=2) + "\n"


def _files(folder: Path) -> dict[str, bytes]:
    """The files directly in ``folder``, by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


class PgResultStore(ResultStore):
    """The results in the PostgreSQL database behind ``db`` (its pool, shared with the job store)."""

    def __init__(
        self,
        db: Database,
        *,
        max_age_days: float | None = None,
        max_bytes: int | None = None,
        jobs: JobStore | None = None,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.max_age_days = max_age_days
        self.max_bytes = max_bytes
        self.enforce_retention()

    def staging(self, result_id: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{check_result_id(result_id)}-"))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, result: SegmentResult) -> None:
        result_id = check_result_id(result.result_id)
        files = _files(staging)
        body = _body(result)
        size = len(body.encode()) + sum(len(data) for data in files.values())
        with self.db.transaction() as conn:
            # two attempts committing the same id at once: the second waits for the first's transaction and
            # then replaces its commit, rather than failing its INSERT on the primary key
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (result_id,))
            conn.execute("DELETE FROM results WHERE result_id = %s", (result_id,))
            conn.execute(
                f"INSERT INTO results (result_id, body, size_bytes, stored_at) VALUES (%s, %s, %s, {NOW})",
                (result_id, body, size),
            )
            self._insert_files(conn, result_id, files)
        self.discard(staging)
        try:
            self.enforce_retention(keep=result_id)
        except (
            TumorsegError,
            psycopg.Error,
        ) as error:  # the result is committed; a failed clean-up is retried next commit
            log.warning("result retention failed: %s", error)

    @staticmethod
    def _insert_files(
        conn: psycopg.Connection[psycopg.rows.DictRow], result_id: str, files: dict[str, bytes]
    ) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO result_files (result_id, name, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (result_id, name) DO UPDATE SET data = EXCLUDED.data",
                [(result_id, name, data) for name, data in files.items()],
            )

    def update(self, result: SegmentResult) -> None:
        body = _body(result)
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT length(convert_to(body, 'UTF8')) AS old FROM results WHERE result_id = %s FOR UPDATE",
                (check_result_id(result.result_id),),
            ).fetchone()
            if row is None:
                raise ResultNotFound(f"no result {result.result_id}")
            conn.execute(
                f"UPDATE results SET body = %s, size_bytes = size_bytes - %s + %s, stored_at = {NOW} "
                "WHERE result_id = %s",
                (body, row["old"], len(body.encode()), result.result_id),
            )

    @contextmanager
    def extra_files(self, result_id: str) -> Iterator[Path]:
        check_result_id(result_id)
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{result_id}-extra-"))
        try:
            yield folder
            files = _files(folder)
            with self.db.transaction() as conn:
                if (
                    conn.execute(
                        "SELECT 1 FROM results WHERE result_id = %s FOR UPDATE", (result_id,)
                    ).fetchone()
                    is None
                ):
                    raise ResultNotFound(f"no result {result_id}")
                self._insert_files(conn, result_id, files)
                conn.execute(
                    "UPDATE results SET size_bytes = length(convert_to(body, 'UTF8')) + (SELECT "
                    "COALESCE(sum(length(data)), 0) FROM result_files WHERE result_id = %s) WHERE result_id = %s",
                    (result_id, result_id),
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def read(self, result_id: str) -> SegmentResult:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT body FROM results WHERE result_id = %s", (check_result_id(result_id),)
            ).fetchone()
        if row is None:
            self._not_here(result_id)
        return SegmentResult.model_validate_json(row["body"])

    def read_file(self, result_id: str, name: str) -> bytes:
        if name not in FILES:
            raise ResultNotFound(f"results have no file {name!r}")
        with self.db.connection() as conn:
            row = conn.execute(  # binary: the bytes as they are, not hex text twice their size
                "SELECT data FROM result_files WHERE result_id = %s AND name = %s",
                (check_result_id(result_id), name),
                binary=True,
            ).fetchone()
        if row is None:
            self._not_here(result_id, name)
        return bytes(row["data"])

    def recent(self, limit: int, offset: int = 0) -> tuple[int, list[SegmentResult]]:
        with self.db.transaction() as conn:
            count = conn.execute("SELECT COUNT(*) AS n FROM results").fetchone()
            rows = conn.execute(
                "SELECT body FROM results ORDER BY stored_at DESC, result_id DESC LIMIT %s OFFSET %s",
                (limit, offset),
            ).fetchall()
        total = int(count["n"]) if count else 0
        return total, [SegmentResult.model_validate_json(row["body"]) for row in rows]

    def enforce_retention(self, keep: str | None = None) -> int:
        if self.max_age_days is None and self.max_bytes is None:
            return 0
        with self.db.connection() as conn:
            rows = conn.execute(
                f"SELECT result_id, size_bytes, stored_at, {NOW} AS now FROM results ORDER BY stored_at, result_id"
            ).fetchall()
            total = sum(int(row["size_bytes"]) for row in rows)
            # ages by the server's clock, as stored_at was written
            cutoff = (
                None if self.max_age_days is None or not rows else rows[0]["now"] - self.max_age_days * 86400
            )
            expired: list[str] = []
            too_big: list[str] = []
            for row in rows:
                if row["result_id"] == keep:
                    continue
                if cutoff is not None and row["stored_at"] < cutoff:
                    expired.append(row["result_id"])
                elif self.max_bytes is not None and total > self.max_bytes:
                    too_big.append(row["result_id"])
                else:
                    continue
                total -= int(row["size_bytes"])
            doomed = expired + too_big
            if doomed:
                conn.execute("DELETE FROM results WHERE result_id = ANY(%s)", (doomed,))
        if doomed:
            log.info(
                "retention: deleted %d expired result(s) (max_age_days=%s) and %d over the size bound "
                "(max_bytes=%s); %d byte(s) of results remain",
                len(expired),
                self.max_age_days,
                len(too_big),
                self.max_bytes,
                total,
            )
        return len(doomed)
