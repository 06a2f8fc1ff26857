"""The first schema: jobs (job key UNIQUE), meta (the auto-trigger's cursors), results and their files.

Times are seconds since the epoch (double precision), as in the SQLite store. ``seq`` orders jobs created
in the same instant as SQLite's rowid does. A result's files are ``bytea`` values of rows deleted with
their result; they are compressed already (gzip, PNG), so PostgreSQL does not try again (STORAGE EXTERNAL).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE jobs (
            seq bigserial NOT NULL UNIQUE,
            job_id text PRIMARY KEY,
            state text NOT NULL,
            stage text,
            origin text NOT NULL,
            request text NOT NULL,
            patient_id text NOT NULL,
            study_instance_uid text,
            result_id text NOT NULL UNIQUE,
            key text UNIQUE,
            code text,
            reason text,
            attempts integer NOT NULL DEFAULT 0,
            created_at double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            heartbeat_at double precision
        );
        CREATE INDEX jobs_created ON jobs (created_at, seq);
        CREATE INDEX jobs_state ON jobs (state);
        CREATE INDEX jobs_study ON jobs (study_instance_uid);
        CREATE INDEX jobs_patient ON jobs (patient_id);
        CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL);
        CREATE TABLE results (
            result_id text PRIMARY KEY,
            body text NOT NULL,
            size_bytes bigint NOT NULL,
            stored_at double precision NOT NULL
        );
        CREATE INDEX results_stored ON results (stored_at, result_id);
        CREATE TABLE result_files (
            result_id text NOT NULL REFERENCES results ON DELETE CASCADE,
            name text NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (result_id, name)
        );
        ALTER TABLE result_files ALTER COLUMN data SET STORAGE EXTERNAL;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE result_files, results, meta, jobs")
