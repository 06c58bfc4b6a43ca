"""The outbox relay recovers from a producer that cannot recover on its own, logs one
line per failure episode, and says when it has stalled (hermetic: SQLite, a fake broker
and a clock that moves only when told to)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from kafka.errors import KafkaError, KafkaTimeoutError, UnknownProducerIdError

from auth_service.models import Base, OutboxEvent
from shared.http.health import ConsumerState, HealthServer
from shared.http.web import base_app
from shared.messaging.outbox import OutboxRelay, add_event, is_fatal_producer_error
from shared.messaging.pipeline import PARTNER_CREATED, PartnerCreated
from shared.storage.db import Database
from tests.fakes import FakeBroker, FakeClock, FakeProducer
from tests.schema import create_tables


class Failing:
    """A send that failed with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> Any:
        raise self.error


class BrokenProducer(FakeProducer):
    """A producer whose every send fails with `error` (while `broken`), as an idempotent
    producer does forever once the broker forgot its producer id."""

    def __init__(self, broker: FakeBroker, error: Exception) -> None:
        super().__init__(broker)
        self.error = error

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        return Failing(self.error)


class Connections:
    """The relay's `connect`: hands out `broken` producers first, then working ones."""

    def __init__(self, broker: FakeBroker, error: Exception, broken: int) -> None:
        self.broker = broker
        self.error = error
        self.broken = broken
        self.made: list[FakeProducer] = []

    def __call__(self) -> FakeProducer:
        producer = (
            BrokenProducer(self.broker, self.error)
            if len(self.made) < self.broken
            else FakeProducer(self.broker)
        )
        self.made.append(producer)
        return producer


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'auth.db'}", Base.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


def stage(database: Database, count: int) -> None:
    with database.unit_of_work() as uow:
        for _ in range(count):
            partner_id = str(uuid.uuid4())
            # A key per row: a key's rows go one per pass (per-key order), and these
            # tests count what one pass sends.
            add_event(
                uow,
                OutboxEvent,
                PARTNER_CREATED,
                PartnerCreated(partner_id=partner_id),
                key=partner_id,
                source="auth-service",
            )
        uow.commit()


def relay_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shared.messaging.outbox"]


def test_a_fatal_producer_error_makes_a_new_producer_and_the_rows_go_out(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker()
    connect = Connections(broker, UnknownProducerIdError(), broken=1)
    relay = OutboxRelay(database, OutboxEvent, connect, clock=FakeClock())
    stage(database, 50)
    with caplog.at_level(logging.INFO, logger="shared.messaging.outbox"):
        assert relay.publish_pending() == 0
        assert connect.made[0].closed  # closed quietly, made again at the next pass
        assert relay.publish_pending() == 50
    assert len(connect.made) == 2
    assert relay.recreations == 1
    assert len(broker.topics[PARTNER_CREATED.name]) == 50
    lines = relay_lines(caplog)
    assert len(lines) == 2, lines
    assert "cannot publish" in lines[0] and "UnknownProducerIdError" in lines[0]
    assert "publishing again" in lines[1] and "50 failed sends" in lines[1]


class Unanswered:
    """A send neither delivered nor failed: kafka-python's, while it retries a producer
    id the rebuilt broker does not know, until delivery_timeout_ms."""

    is_done = False

    def get(self, timeout: float | None = None) -> Any:
        raise AssertionError("the relay must not wait on a send that was never answered")


class SilentProducer(FakeProducer):
    """Every send stays unanswered; flush returns after its timeout without a word."""

    def __init__(self, broker: FakeBroker) -> None:
        super().__init__(broker)
        self.flush_timeouts: list[float | None] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        return Unanswered()

    def flush(self, timeout: float | None = None) -> None:
        self.flush_timeouts.append(timeout)


def test_sends_left_unanswered_past_the_bound_make_a_new_producer_at_once(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen on a broker restarted empty: the member relay's producer took the unknown
    producer id for a retention gap and retried quietly for 30 s, then again."""
    broker = FakeBroker()
    made: list[FakeProducer] = []

    def connect() -> FakeProducer:
        made.append(SilentProducer(broker) if not made else FakeProducer(broker))
        return made[-1]

    relay = OutboxRelay(
        database, OutboxEvent, connect, clock=FakeClock(), send_timeout=35, recreate_after=10
    )
    stage(database, 5)
    with caplog.at_level(logging.INFO, logger="shared.messaging.outbox"):
        assert relay.publish_pending() == 0
        silent = made[0]
        assert isinstance(silent, SilentProducer)
        assert silent.flush_timeouts == [10]  # waited the bound, not the send timeout
        assert silent.closed and relay.recreations == 1  # made again on that first pass
        assert relay.publish_pending() == 5
    assert len(broker.topics[PARTNER_CREATED.name]) == 5
    lines = relay_lines(caplog)
    assert "not acknowledged within 10 s" in lines[0], lines


def test_the_init_producer_id_failure_of_the_issue_is_fatal() -> None:
    error = KafkaError("Unexpected error in InitProducerIdResponse: [Error -1] UnknownError")
    assert is_fatal_producer_error(error)
    assert is_fatal_producer_error(UnknownProducerIdError())
    assert not is_fatal_producer_error(KafkaTimeoutError("broker away"))


def test_failures_past_the_bound_make_a_new_producer_with_growing_backoff(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    broker = FakeBroker()
    connect = Connections(broker, KafkaTimeoutError("no answer"), broken=3)
    relay = OutboxRelay(database, OutboxEvent, connect, clock=clock, recreate_after=10)
    stage(database, 5)
    with caplog.at_level(logging.INFO, logger="shared.messaging.outbox"):
        for _ in range(20):  # many passes within the bound: the same producer
            assert relay.publish_pending() == 0
            clock.advance(0.4)
        assert len(connect.made) == 1 and relay.recreations == 0
        clock.advance(3)
        relay.publish_pending()  # 11 s failing: made again, at once the first time
        assert relay.recreations == 1
        relay.publish_pending()
        assert len(connect.made) == 2
        clock.advance(11)
        relay.publish_pending()  # the new producer failed for its whole bound too
        assert relay.recreations == 2
        relay.publish_pending()
        assert len(connect.made) == 2  # the second recreation waits 1 s
        clock.advance(1.1)
        relay.publish_pending()
        assert len(connect.made) == 3
        clock.advance(11)
        relay.publish_pending()
        assert relay.recreations == 3
        clock.advance(1.1)
        relay.publish_pending()
        assert len(connect.made) == 3  # then 2 s
        clock.advance(1)
        assert relay.publish_pending() == 5
    assert len(connect.made) == 4
    lines = relay_lines(caplog)
    assert len(lines) == 2, lines  # over 26 passes and 3 producers
    assert "publishing again" in lines[1] and "producer made again 3 times" in lines[1]


def test_a_relay_with_rows_waiting_and_nothing_published_past_its_bound_is_stalled(
    database: Database,
) -> None:
    clock = FakeClock()
    broker = FakeBroker()
    relay = OutboxRelay(database, OutboxEvent, broker.producer, clock=clock, stall_after=30)
    assert relay.stalled() is None
    clock.advance(60)
    assert relay.publish_pending() == 0  # nothing waits: idle, not stalled
    assert relay.stalled() is None

    broker.down = True
    stage(database, 3)
    relay.publish_pending()
    clock.advance(29)
    relay.publish_pending()
    assert relay.stalled() is None and relay.stalled_for() is None
    clock.advance(2)
    stall = relay.stalled()
    assert stall is not None and relay.stalled_for() == pytest.approx(31)
    assert "outbox relay" in str(stall) and "31 s" in str(stall)
    assert "KafkaTimeoutError" in str(stall)

    broker.down = False
    assert relay.publish_pending() == 3
    assert relay.stalled() is None


def test_the_api_is_not_ready_while_its_relay_is_stalled(database: Database) -> None:
    clock = FakeClock()
    broker = FakeBroker()
    broker.down = True
    relay = OutboxRelay(database, OutboxEvent, broker.producer, clock=clock, stall_after=30)
    app: Flask = base_app("auth_service", database)
    app.extensions["outbox_relay"] = relay
    client = app.test_client()
    stage(database, 1)
    relay.publish_pending()
    assert client.get("/health/ready").status_code == 200
    clock.advance(31)
    answer = client.get("/health/ready")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["error"] == "unavailable"
    assert "outbox relay" in body["message"]
    assert client.get("/health/live").status_code == 200

    broker.down = False
    relay.publish_pending()
    assert client.get("/health/ready").status_code == 200


def test_a_worker_is_not_ready_while_its_relay_is_stalled(database: Database) -> None:
    clock = FakeClock()
    broker = FakeBroker()
    broker.down = True
    relay = OutboxRelay(database, OutboxEvent, broker.producer, clock=clock, stall_after=30)
    state = ConsumerState()
    state.on_partitions_assigned([])
    state.report_stuck([])
    health = HealthServer(database, state, "127.0.0.1", 0, relay=relay).start()
    stage(database, 1)
    relay.publish_pending()
    assert health.answer("/health/ready") == (200, {"status": "ok"})
    clock.advance(31)
    status, body = health.answer("/health/ready")
    assert status == 503
    assert body["error"] == "unavailable" and "outbox relay" in body["message"]
    assert health.answer("/health/live")[0] == 200
    health.stop()


def test_a_relay_thread_recovers_on_its_own(database: Database) -> None:
    broker = FakeBroker()
    connect = Connections(broker, UnknownProducerIdError(), broken=2)
    relay = OutboxRelay(database, OutboxEvent, connect, poll_interval=0.05).start()
    try:
        stage(database, 10)
        relay.wake()
        deadline = time.monotonic() + 10
        while len(broker.topics[PARTNER_CREATED.name]) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        relay.stop()
    assert len(broker.topics[PARTNER_CREATED.name]) == 10
    assert relay.recreations == 2
