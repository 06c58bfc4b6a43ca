"""Tables for tests, made straight from the models (fast). Production uses the Alembic
migrations only; tests/integration/test_migrations.py proves the two agree."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import MetaData

from shared.storage.db import Database


def create_tables(database: Database) -> None:
    """Create every table of the database's models."""
    database.metadata.create_all(database.engine)


@contextlib.contextmanager
def sqlite_database(path: Path, metadata: MetaData) -> Iterator[Database]:
    """A SQLite database in the file `path` with every table of `metadata`; disposed after."""
    database = Database.from_url(f"sqlite:///{path}", metadata)
    create_tables(database)
    try:
        yield database
    finally:
        database.engine.dispose()
