"""The versioned schema: Alembic migrations (``migrations/versions``), applied by ``upgrade`` at start-up
and by ``tumorseg db upgrade``, configured from code (no alembic.ini).

Replicas starting together: ``upgrade`` runs in one transaction that first takes a PostgreSQL advisory
lock (``pg_advisory_xact_lock``), so one process migrates while the others wait, and then find the schema
at head and do nothing. The DDL is transactional: a migration that fails leaves the schema as it was.

A process whose code is older than the database (the revision recorded in ``alembic_version`` is not one
of this code's migrations: a newer release migrated it) refuses to start with ``DatabaseSchemaError``
rather than writing rows a newer schema does not expect.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from tumorseg.db.pool import CONNECT_OPTIONS, MIN_SERVER_VERSION, redacted, unavailable
from tumorseg.errors import DatabaseSchemaError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The advisory lock key of migrations: "tumorseg" in ASCII, as a bigint
LOCK_KEY = int.from_bytes(b"tumorseg", "big") & (2**63 - 1)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def _known() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _engine(url: str) -> sqlalchemy.Engine:
    scheme, rest = url.split("://", 1)
    assert scheme in ("postgresql", "postgres"), scheme
    options = {k: v for k, v in CONNECT_OPTIONS.items() if k != "application_name"}
    return sqlalchemy.create_engine(f"postgresql+psycopg://{rest}", poolclass=NullPool, connect_args=options)


def _check(current: str | None, url: str) -> None:
    if current is not None and current not in _known():
        raise DatabaseSchemaError(
            f"the database {redacted(url)} has schema revision {current}, newer than this code knows "
            f"(head {head()}): a newer tumorseg migrated it; run that version (or newer) here too"
        )


def current_revision(url: str) -> str | None:
    """The schema revision the database records (``None``: never migrated)."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sqlalchemy.exc.OperationalError as exc:
        raise unavailable(url, exc) from exc
    finally:
        engine.dispose()


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the database to this code's head revision, under the migration lock; returns the revision
    before and after. ``DatabaseSchemaError`` when the database is newer than this code or the server older
    than PostgreSQL 14, ``DatabaseUnavailable`` when it cannot be reached."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            version = int(conn.execute(sqlalchemy.text("SHOW server_version_num")).scalar_one())
            if version < MIN_SERVER_VERSION:
                raise DatabaseSchemaError(
                    f"the database {redacted(url)} runs PostgreSQL {version // 10000}; tumorseg needs "
                    f"PostgreSQL {MIN_SERVER_VERSION // 10000} or newer"
                )
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            current = MigrationContext.configure(conn).get_current_revision()
            _check(current, url)
            target = head()
            if current != target:
                log.info("migrating database %s from %s to %s", redacted(url), current, target)
                config = _config()
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
            return current, target
    except sqlalchemy.exc.OperationalError as exc:
        raise unavailable(url, exc) from exc
    finally:
        engine.dispose()
