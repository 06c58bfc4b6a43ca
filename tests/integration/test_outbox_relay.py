"""The outbox relay against a real broker, on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import MetaData, func, select

from auth_service.models import Base, OutboxEvent
from shared.messaging.kafka import make_producer
from shared.messaging.outbox import OutboxRelay, add_event
from shared.messaging.pipeline import PARTNER_CREATED, PartnerCreated
from shared.storage.db import Database
from tests.kafka_tools import create_topic, read_topic, unique_name
from tests.schema import create_tables

pytestmark = pytest.mark.integration


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


def stage(database: Database, topic: str, count: int) -> list[str]:
    with database.unit_of_work() as uow:
        event_ids = [
            add_event(
                uow,
                OutboxEvent,
                dataclasses.replace(PARTNER_CREATED, name=topic),
                PartnerCreated(partner_id=str(uuid.UUID(int=n))),
                key=f"key-{n}",
                source="auth-service",
                traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            for n in range(count)
        ]
        uow.commit()
    return event_ids


def unpublished(database: Database) -> int:
    with database.sessions() as session:
        query = select(func.count()).where(OutboxEvent.published_at.is_(None))
        return int(session.scalar(query) or 0)


def test_relay_publishes_committed_rows_in_order_and_marks_them(
    database: Database, kafka_bootstrap: str
) -> None:
    topic = unique_name("relay")
    create_topic(kafka_bootstrap, topic, partitions=1)
    event_ids = stage(database, topic, 25)
    relay = OutboxRelay(database, OutboxEvent, lambda: make_producer(kafka_bootstrap.split(",")))

    assert relay.publish_pending() == 25
    relay.stop()

    records = read_topic(kafka_bootstrap, topic, expect=25)
    assert [r.header("ce_id") for r in records] == event_ids
    assert [json.loads(r.value)["partnerId"] for r in records] == [
        str(uuid.UUID(int=n)) for n in range(25)
    ]
    assert records[0].key == b"key-0"
    assert records[0].header(
        "traceparent",
    ) == ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert unpublished(database) == 0


def test_woken_relay_thread_sends_right_after_commit(
    database: Database, kafka_bootstrap: str
) -> None:
    topic = unique_name("wake")
    create_topic(kafka_bootstrap, topic)
    relay = OutboxRelay(
        database, OutboxEvent, lambda: make_producer(kafka_bootstrap.split(",")), poll_interval=60
    ).start()
    try:
        stage(database, topic, 1)
        relay.wake()
        records = read_topic(kafka_bootstrap, topic, expect=1, timeout=10)
    finally:
        relay.stop()
    assert len(records) == 1


def test_rows_left_by_a_crash_are_sent_when_a_relay_starts(
    database: Database, kafka_bootstrap: str
) -> None:
    topic = unique_name("crash")
    create_topic(kafka_bootstrap, topic)
    stage(database, topic, 3)  # committed, never relayed: the process died here
    relay = OutboxRelay(
        database, OutboxEvent, lambda: make_producer(kafka_bootstrap.split(",")), poll_interval=0.2
    ).start()
    try:
        records = read_topic(kafka_bootstrap, topic, expect=3, timeout=10)
    finally:
        relay.stop()
    assert len(records) == 3
    assert unpublished(database) == 0


def test_competing_relays_on_postgres_send_each_row_once(
    postgres,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> None:
    database = Database.from_url(postgres.create_database(), Base.metadata)
    create_tables(database)
    topic = unique_name("skiplocked")
    create_topic(kafka_bootstrap, topic, partitions=3)
    for _ in range(10):
        stage(database, topic, 50)
    relays = [
        OutboxRelay(
            database, OutboxEvent, lambda: make_producer(kafka_bootstrap.split(",")), batch_size=20
        )
        for _ in range(3)
    ]
    threads = [threading.Thread(target=drain, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for relay in relays:
        relay.stop()

    records = read_topic(kafka_bootstrap, topic, expect=500)
    sent = Counter(r.header("ce_id") for r in records)
    assert len(sent) == 500
    assert max(sent.values()) == 1
    assert unpublished(database) == 0
    database.engine.dispose()


def drain(relay: OutboxRelay) -> None:
    while relay.publish_pending():
        pass
