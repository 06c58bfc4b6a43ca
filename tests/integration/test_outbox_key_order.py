"""Per-key order with several relays (README "Guarantees"): events for one key reach the
topic in the order they were committed, whatever relay sends them. Real PostgreSQL (the
only database on which several relays share an outbox) and the real broker; the only
thing added is a wrapper around the real producer that can hold a relay inside its send,
with its rows claimed, for as long as a test needs."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from auth_service.models import Base, OutboxEvent
from devtools.postgres import PostgresServer
from shared.messaging.kafka import Delivery, Headers, Producer, make_producer
from shared.messaging.outbox import OutboxRelay, add_event
from shared.messaging.pipeline import PARTNER_CREATED, PartnerCreated
from shared.storage.db import Database
from tests.kafka_tools import create_topic, read_topic, unique_name
from tests.schema import create_tables
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[Database]:
    database = Database.from_url(postgres.create_database(), Base.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


class HeldProducer:
    """The real producer, except that `send` first says so (`entered`) and then waits
    until `release` is set: the relay using it stays inside its pass, its rows claimed."""

    def __init__(self, inner: Producer) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> Delivery:
        self.entered.set()
        if not self.release.wait(30):
            raise AssertionError("the held relay was never released")
        return self.inner.send(topic, value, key=key, headers=headers)

    def flush(self, timeout: float | None = None) -> None:
        self.inner.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.inner.close(timeout=timeout)


class CountingProducer:
    """The real producer, counting the sends made through it."""

    def __init__(self, inner: Producer) -> None:
        self.inner = inner
        self.sends = 0

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> Delivery:
        self.sends += 1
        return self.inner.send(topic, value, key=key, headers=headers)

    def flush(self, timeout: float | None = None) -> None:
        self.inner.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.inner.close(timeout=timeout)


def add(database: Database, topic: str, key: str) -> str:
    """Commit one event for `key`, in a transaction of its own; its ce_id."""
    with database.unit_of_work() as uow:
        event_id = add_event(
            uow,
            OutboxEvent,
            dataclasses.replace(PARTNER_CREATED, name=topic),
            PartnerCreated(partner_id=str(uuid.uuid4())),
            key=key,
            source="auth-service",
        )
        uow.commit()
    return event_id


def unpublished(database: Database) -> list[str]:
    """The ce_ids of the rows not marked published, in id order."""
    with database.sessions() as session:
        query = (
            select(OutboxEvent.event_id)
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.id)
        )
        return list(session.scalars(query))


def in_background(action: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(action()), daemon=True)
    thread.start()
    return thread, results


def test_a_relay_does_not_send_a_keys_next_event_while_another_relay_holds_its_first(
    database: Database, kafka_bootstrap: str
) -> None:
    """Relay A claims k's first event and is held inside its send. Relay B, running
    meanwhile, publishes the other keys' events but not k's second; once A is released,
    k's second goes out after k's first. (Without the per-key claim, B sends k's second
    while A still holds the first: red.)"""
    topic = unique_name("keyorder")
    create_topic(kafka_bootstrap, topic, partitions=3)
    servers = kafka_bootstrap.split(",")
    k1 = add(database, topic, "k")
    other1 = add(database, topic, "other-1")
    k2 = add(database, topic, "k")
    other2 = add(database, topic, "other-2")
    held = HeldProducer(make_producer(servers))
    relay_a = OutboxRelay(database, OutboxEvent, lambda: held, batch_size=1)
    relay_b = OutboxRelay(database, OutboxEvent, lambda: make_producer(servers))
    try:
        a_thread, a_results = in_background(relay_a.publish_pending)
        assert held.entered.wait(20), "relay A never reached its send"

        b_thread, b_results = in_background(relay_b.publish_pending)
        b_thread.join(20)
        assert not b_thread.is_alive(), "relay B waited for the row relay A holds"
        assert b_results == [2], "relay B sent other than the other keys' two events"
        assert unpublished(database) == [k1, k2]
        early = read_topic(kafka_bootstrap, topic, expect=2, timeout=10)
        assert sorted(r.header("ce_id") or "" for r in early) == sorted([other1, other2])

        held.release.set()
        a_thread.join(20)
        assert a_results == [1]
        assert unpublished(database) == [k2]
        assert relay_b.publish_pending() == 1
        assert unpublished(database) == []
    finally:
        held.release.set()
        relay_a.stop()
        relay_b.stop()

    records = read_topic(kafka_bootstrap, topic, expect=4)
    assert [r.header("ce_id") for r in records if r.key == b"k"] == [k1, k2]
    assert Counter(r.header("ce_id") for r in records) == Counter([k1, k2, other1, other2])


KEYS = 200
EVENTS_PER_KEY = 5
WRITERS = 8
RELAYS = 3


def test_three_relays_keep_each_keys_commit_order_while_events_are_committed(
    database: Database, kafka_bootstrap: str
) -> None:
    """3 relays on one PostgreSQL outbox while 8 writers commit 200 keys x 5 events, each
    event in a transaction of its own (a key's next event once its previous committed):
    every event reaches the topic exactly once, and each key's in commit order."""
    started = time.monotonic()
    topic = unique_name("keyload")
    create_topic(kafka_bootstrap, topic, partitions=6)
    servers = kafka_bootstrap.split(",")
    producers: list[CountingProducer] = []

    def connect() -> Producer:
        producer = CountingProducer(make_producer(servers))
        producers.append(producer)
        return producer

    relays = [
        OutboxRelay(database, OutboxEvent, connect, batch_size=50, poll_interval=0.05)
        for _ in range(RELAYS)
    ]
    committed: dict[str, list[str]] = defaultdict(list)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        keys = [f"member-{n}" for n in range(writer, KEYS, WRITERS)]
        try:
            for key in keys:
                for n in range(EVENTS_PER_KEY):
                    # A key's events back to back, each waking another relay: the next
                    # event is there while a relay may still be sending the previous.
                    committed[key].append(add(database, topic, key))
                    relays[n % RELAYS].wake()
        except BaseException as exc:
            errors.append(exc)

    for relay in relays:
        relay.start()
    try:
        writers = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(40)
        assert not errors, errors
        assert not any(thread.is_alive() for thread in writers), "the writers did not finish"
        wait_until(lambda: not unpublished(database), 30, "every row published")
    finally:
        for relay in relays:
            relay.stop()

    total = KEYS * EVENTS_PER_KEY
    records = read_topic(kafka_bootstrap, topic, expect=total, timeout=30)
    sent = Counter(r.header("ce_id") for r in records)
    assert len(sent) == total
    assert max(sent.values()) == 1, [ce_id for ce_id, n in sent.items() if n > 1][:5]
    arrived: dict[str, list[str]] = defaultdict(list)
    for record in records:  # in (partition, offset) order; a key has one partition
        arrived[(record.key or b"").decode()].append(record.header("ce_id") or "")
    out_of_order = [key for key in committed if arrived[key] != committed[key]]
    assert not out_of_order, f"{len(out_of_order)} keys out of commit order: {out_of_order[:5]}"
    sends = sorted(producer.sends for producer in producers)
    assert sum(sends) == total
    assert sum(1 for n in sends if n) >= 2, f"the relays did not share the work: {sends}"
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == total
    assert time.monotonic() - started < 60
