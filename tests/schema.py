"""Tables for tests, made straight from the models (fast). Production uses the Alembic
migrations only; tests/integration/test_migrations.py proves the two agree."""

from __future__ import annotations

from shared.db import Database


def create_tables(database: Database) -> None:
    """Create every table of the database's models."""
    database.metadata.create_all(database.engine)
