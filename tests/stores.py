"""The state stores of both engines for one test: the embedded default (SQLite file, results directory)
and PostgreSQL (a fresh database on the session's server, migrated). Tests parametrized over ``ENGINES``
run the same assertions against both."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tumorseg.db import migrate
from tumorseg.db.jobs import PgJobStore
from tumorseg.db.pool import Database
from tumorseg.db.results import PgResultStore
from tumorseg.jobstore import JobStore, SqliteJobStore
from tumorseg.results import DirResultStore, ResultStore

ENGINES = ("sqlite", "postgres")


@contextmanager
def job_store(engine: str, tmp_path: Path, postgres_url: str | None) -> Iterator[JobStore]:
    store: JobStore
    if engine == "sqlite":
        store = SqliteJobStore(tmp_path)
    else:
        assert postgres_url is not None
        migrate.upgrade(postgres_url)
        store = PgJobStore(Database(postgres_url, max_size=4))
    try:
        yield store
    finally:
        store.close()


def result_store(
    tmp_path: Path,
    jobs: JobStore,
    *,
    max_age_days: float | None = None,
    max_bytes: int | None = None,
) -> ResultStore:
    """The result store next to ``jobs`` (from ``job_store``, same engine)."""
    if isinstance(jobs, PgJobStore):
        return PgResultStore(jobs.db, max_age_days=max_age_days, max_bytes=max_bytes, jobs=jobs)
    return DirResultStore(tmp_path / "results", max_age_days=max_age_days, max_bytes=max_bytes, jobs=jobs)
