"""Throwaway databases on a PostgreSQL server, for the tests and the benchmark."""

from __future__ import annotations

import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

LOCAL_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


class PostgresServer:
    """Creates throwaway databases on a PostgreSQL server and drops them all at the end
    (for the tests and the benchmark)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def check(self) -> None:
        with self._engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def create_database(self, prefix: str = "sp_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self._engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._engine.connect() as connection:
            for name in self.created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._engine.dispose()
