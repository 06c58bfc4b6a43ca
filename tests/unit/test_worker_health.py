"""A worker's own HTTP port: ready only when its database and broker answer, its consumer
has joined the group and no partition is stuck; and its metrics."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.broker import free_port
from member_service.models import Base as MemberBase
from member_service.models import OutboxEvent
from shared.http.health import ConsumerState, HealthServer
from shared.messaging.outbox import OutboxBacklogCollector
from shared.storage.db import Database
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
    """Joined its group, and the consume loop has just polled."""
    state = ConsumerState()
    state.on_partitions_assigned([])
    state.report_stuck([])
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


@pytest.mark.parametrize(
    "problem", ["not joined", "broker gone", "partition stuck", "loop not polling"]
)
def test_not_ready_says_why(database: Database, listening_broker: str, problem: str) -> None:
    state = ConsumerState() if problem == "not joined" else joined()
    servers = [f"127.0.0.1:{free_port()}"] if problem == "broker gone" else [listening_broker]
    if problem == "partition stuck":
        state.report_stuck(["profile-insert[2]"])
    if problem == "loop not polling":
        state.polled_at = time.monotonic() - 31
    health = serve(database, state, servers)
    try:
        status, content_type, body = get(f"http://127.0.0.1:{health.port}/health/ready")
    finally:
        health.stop()
    assert (status, content_type) == (503, "application/json")
    message = json.loads(body)["message"]
    expected = {
        "not joined": "joined",
        "broker gone": "broker",
        "partition stuck": "[2]",
        "loop not polling": "not polled recently (31 s)",
    }
    assert expected[problem] in message


def test_the_worker_port_serves_prometheus_metrics_with_its_outbox_backlog(
    database: Database, listening_broker: str
) -> None:
    backlog = OutboxBacklogCollector(database, OutboxEvent, ["partner-created"])
    health = serve(database, joined(), [listening_broker], collectors=(backlog,))
    try:
        status, content_type, body = get(f"http://127.0.0.1:{health.port}/metrics")
    finally:
        health.stop()
    assert status == 200 and content_type.startswith("text/plain")
    text = body.decode()
    assert 'signup_outbox_backlog{topic="partner-created"} 0.0' in text
    assert "# TYPE signup_events_applied_total counter" in text


def test_a_loop_hung_past_the_poll_interval_is_no_longer_live(
    database: Database, listening_broker: str
) -> None:
    state = joined()
    health = serve(database, state, [listening_broker])
    try:
        assert get(f"http://127.0.0.1:{health.port}/health/live")[0] == 200
        state.polled_at = time.monotonic() - 301  # evicted by max.poll.interval by now
        status, _, body = get(f"http://127.0.0.1:{health.port}/health/live")
    finally:
        health.stop()
    assert status == 503 and "has not polled for 301 s" in json.loads(body)["message"]


def test_a_rebalance_makes_the_worker_unready_until_its_next_assignment(
    database: Database, listening_broker: str
) -> None:
    state = joined()
    health = serve(database, state, [listening_broker])
    try:
        state.on_partitions_revoked([])  # a rebalance begins
        status, _, body = get(f"http://127.0.0.1:{health.port}/health/ready")
        assert status == 503 and "rebalancing" in json.loads(body)["message"]
        state.on_partitions_assigned([])
        assert get(f"http://127.0.0.1:{health.port}/health/ready")[0] == 200
    finally:
        health.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("phase", ["first join", "rebalance"])
def test_a_group_join_stalled_past_the_bound_fails_liveness_while_the_broker_answers(
    database: Database, listening_broker: str, phase: str
) -> None:
    clock = Clock()
    state = ConsumerState(clock)
    if phase == "rebalance":
        state.on_partitions_assigned([])
        state.report_stuck([])
        clock.now += 5
        state.on_partitions_revoked([])
    health = serve(database, state, [listening_broker], join_timeout=120)
    live = f"http://127.0.0.1:{health.port}/health/live"
    try:
        clock.now += 119
        assert get(live)[0] == 200  # within the bound: joining takes what it takes
        clock.now += 2
        status, _, body = get(live)
        assert status == 503
        assert "outside its group for 121 s" in json.loads(body)["message"]
        state.on_partitions_assigned([])  # it got in after all
        assert get(live)[0] == 200
    finally:
        health.stop()


def test_a_group_join_stalled_with_the_broker_down_stays_live(database: Database) -> None:
    """With the broker gone a new process would not join either: no point restarting."""
    clock = Clock()
    state = ConsumerState(clock)
    health = serve(database, state, [f"127.0.0.1:{free_port()}"], join_timeout=120)
    try:
        clock.now += 600
        assert get(f"http://127.0.0.1:{health.port}/health/live")[0] == 200
    finally:
        health.stop()


def test_a_client_gone_mid_request_is_a_log_line_not_a_raw_traceback(
    database: Database,
    listening_broker: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen by an outside probe: aborted connections to a worker's health port printed
    raw tracebacks on stderr, past the log formatter."""
    health = serve(database, joined(), [listening_broker])
    try:
        with caplog.at_level(logging.DEBUG, logger="shared.http.health"):
            with socket.create_connection(("127.0.0.1", health.port)) as sock:
                sock.sendall(b"GET /health/li")  # half a request line, then a reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            err = ""
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                err += capsys.readouterr().err
                if "Traceback" in err or any(
                    "connection from" in r.getMessage() for r in caplog.records
                ):
                    break
                time.sleep(0.05)
        err += capsys.readouterr().err
    finally:
        health.stop()
    assert "Traceback" not in err, err
    assert any("ConnectionResetError" in r.getMessage() for r in caplog.records)
