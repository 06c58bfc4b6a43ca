"""A worker's own HTTP port: ready only when its database and broker answer, its consumer
has joined the group and no partition is stuck; and its metrics."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from member_service.models import Base as MemberBase
from member_service.models import OutboxEvent
from shared.broker import free_port
from shared.db import Database
from shared.health import ConsumerState, HealthServer
from shared.metrics import OutboxBacklog
from tests.schema import create_tables


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'member.db'}", MemberBase.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


@pytest.fixture
def listening_broker() -> Iterator[str]:
    """Something accepting TCP connections where the broker should be."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def serve(database: Database, state: ConsumerState, servers: list[str], **kw: Any) -> HealthServer:
    return HealthServer(database, state, "127.0.0.1", 0, bootstrap_servers=servers, **kw).start()


def joined() -> ConsumerState:
    state = ConsumerState()
    state.on_partitions_assigned([])
    return state


def test_ready_when_database_and_broker_answer_and_the_group_is_joined(
    database: Database, listening_broker: str
) -> None:
    health = serve(database, joined(), [listening_broker])
    try:
        assert get(f"http://127.0.0.1:{health.port}/health/ready")[0] == 200
        assert get(f"http://127.0.0.1:{health.port}/health/live")[0] == 200
    finally:
        health.stop()


@pytest.mark.parametrize("problem", ["not joined", "broker gone", "partition stuck"])
def test_not_ready_says_why(database: Database, listening_broker: str, problem: str) -> None:
    state = ConsumerState() if problem == "not joined" else joined()
    servers = [f"127.0.0.1:{free_port()}"] if problem == "broker gone" else [listening_broker]
    if problem == "partition stuck":
        state.report_stuck(["profile-insert[2]"])
    health = serve(database, state, servers)
    try:
        status, content_type, body = get(f"http://127.0.0.1:{health.port}/health/ready")
    finally:
        health.stop()
    assert (status, content_type) == (503, "application/json")
    message = json.loads(body)["message"]
    expected = {"not joined": "joined", "broker gone": "broker", "partition stuck": "[2]"}
    assert expected[problem] in message


def test_the_worker_port_serves_prometheus_metrics_with_its_outbox_backlog(
    database: Database, listening_broker: str
) -> None:
    backlog = OutboxBacklog(database, OutboxEvent, ["partner-created"])
    health = serve(database, joined(), [listening_broker], collectors=(backlog,))
    try:
        status, content_type, body = get(f"http://127.0.0.1:{health.port}/metrics")
    finally:
        health.stop()
    assert status == 200 and content_type.startswith("text/plain")
    text = body.decode()
    assert 'signup_outbox_backlog{topic="partner-created"} 0.0' in text
    assert "# TYPE signup_events_applied_total counter" in text
