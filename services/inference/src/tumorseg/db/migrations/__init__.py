"""Alembic's migration scripts of the PostgreSQL schema (package data, run by ``tumorseg.db.migrate``)."""
