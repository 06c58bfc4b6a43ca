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

from devtools.postgres import LOCAL_POSTGRES_URL, PostgresServer
from shared.storage.db import Database
from tests.brokers import BrokerChoiceError, TestBroker, broker_choice, start_test_broker
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
def test_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    """The session's broker, as TEST_KAFKA or KAFKA_BOOTSTRAP_SERVERS choose (tests/brokers.py):
    the bundled Tansu by default, or a local Apache Kafka cluster started here."""
    try:
        choice = broker_choice()
    except BrokerChoiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        broker = start_test_broker(choice, tmp_path_factory.mktemp("broker"))
    except Exception as exc:
        pytest.fail(f"could not start {choice.label}: {exc}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(test_broker: TestBroker) -> str:
    """The session broker's address (`host:port[,host:port]`)."""
    return test_broker.bootstrap_servers
