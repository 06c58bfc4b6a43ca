"""Fixtures shared by every tier: databases (SQLite and real PostgreSQL) and a real broker.

PostgreSQL and the broker are never skipped: if they cannot be reached the tests that
need them error out, loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from devtools.broker import LocalBroker
from devtools.postgres import LOCAL_POSTGRES_URL, PostgresServer
from shared.storage.db import Database
from tests.schema import create_tables

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", LOCAL_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The real PostgreSQL server the tests run against."""
    server = PostgresServer(POSTGRES_ADMIN_URL)
    try:
        server.check()
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}. "
            "Start it (see .ci/run) or set TEST_POSTGRES_URL.",
            pytrace=False,
        )
    yield server
    server.drop_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: each test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def make_database(database_url: str) -> Iterator[Callable[[MetaData], Database]]:
    """Builds a Database with its tables on the test's fresh database; disposes it after."""
    made: list[Database] = []

    def make(metadata: MetaData) -> Database:
        database = Database.from_url(database_url, metadata)
        create_tables(database)
        made.append(database)
        return database

    yield make
    for database in made:
        database.engine.dispose()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka-compatible broker: KAFKA_BOOTSTRAP_SERVERS, or a local Tansu."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    try:
        broker = LocalBroker(log_path=log_path).start()
    except Exception as exc:
        pytest.fail(f"could not start the local broker: {exc}", pytrace=False)
    yield broker.bootstrap_servers
    broker.stop()
