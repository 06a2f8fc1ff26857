"""Alembic's environment, configured from code (``tumorseg.db.migrate``): no alembic.ini. The caller
passes an open SQLAlchemy connection, inside the transaction that holds the migration lock."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
