"""The outbox guarantees of README.md that the relay tests on a healthy broker cannot see:
each is shown by a case where a broken relay or signup would act differently (a send
refused for one row, rows another relay holds, created_at disagreeing with id order, an
outbox insert that fails, rows committed without a wake-up). A fake broker stands in for
Kafka so a send can be refused at will; the databases are real (SQLite and PostgreSQL),
because the relay takes a different path on each."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import MetaData, func, select, text
from sqlalchemy.exc import DBAPIError

from auth_service.handlers import SignUp, sign_up
from auth_service.models import Base, Member, OutboxEvent
from devtools.postgres import PostgresServer
from shared.messaging.kafka import Headers
from shared.messaging.outbox import OutboxRelay, add_event
from shared.messaging.pipeline import PARTNER_CREATED, PartnerCreated
from shared.storage.db import Database, utcnow
from tests.fakes import Acknowledged, FakeBroker, FakeProducer, Refused
from tests.schema import create_tables
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TOPIC = "guarantees"


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


class RefusingProducer(FakeProducer):
    """A fake producer whose broker refuses the sends of the keys in `refused`."""

    def __init__(self, broker: FakeBroker, refused: set[bytes]) -> None:
        super().__init__(broker)
        self.refused = refused

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> Acknowledged | Refused:
        if key in self.refused:
            return Refused()
        return super().send(topic, value, key, headers)


def stage(database: Database, count: int, first: int = 0) -> list[str]:
    """Commit `count` events, keyed key-<n>; their ce_ids in id order."""
    with database.unit_of_work() as uow:
        event_ids = [
            add_event(
                uow,
                OutboxEvent,
                dataclasses.replace(PARTNER_CREATED, name=TOPIC),
                PartnerCreated(partner_id=str(uuid.UUID(int=n))),
                key=f"key-{n}",
                source="auth-service",
            )
            for n in range(first, first + count)
        ]
        uow.commit()
    return event_ids


def sent_ids(broker: FakeBroker) -> list[str]:
    return [dict(record.headers)["ce_id"].decode() for record in broker.topics[TOPIC]]


def unpublished_keys(database: Database) -> list[str]:
    with database.sessions() as session:
        query = (
            select(OutboxEvent.key)
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.id)
        )
        return list(session.scalars(query))


def test_a_row_whose_send_was_refused_stays_unpublished_and_goes_later_with_its_ce_id(
    database: Database,
) -> None:
    """Marked published only after the broker's ack, row by row: one refused send in a
    batch leaves that row (and only it) for the next pass, which re-sends its ce_id."""
    broker = FakeBroker()
    producer = RefusingProducer(broker, refused={b"key-2"})
    relay = OutboxRelay(database, OutboxEvent, lambda: producer)
    event_ids = stage(database, 5)

    assert relay.publish_pending() == 4
    assert sent_ids(broker) == [event_ids[n] for n in (0, 1, 3, 4)]
    assert unpublished_keys(database) == ["key-2"]

    producer.refused.clear()
    assert relay.publish_pending() == 1
    assert sent_ids(broker)[4:] == [event_ids[2]]
    assert unpublished_keys(database) == []
    assert relay.publish_pending() == 0


def test_rows_are_sent_in_id_order_even_when_created_at_and_storage_order_disagree(
    database: Database,
) -> None:
    """In id order per relay, not by created_at nor in whatever order the database
    returns rows without an ORDER BY. Two signups can take their ids in one order and
    insert (and stamp created_at) in the other; here ids 5..1 are inserted in that
    order, so created_at and, on PostgreSQL, storage order both run against the ids."""
    event_ids = {n: str(uuid.uuid4()) for n in range(1, 6)}
    for n in sorted(event_ids, reverse=True):
        with database.unit_of_work() as uow:
            uow.insert(
                OutboxEvent,
                {
                    "id": n,
                    "event_id": event_ids[n],
                    "topic": TOPIC,
                    "key": f"key-{n}",
                    "payload": "{}",
                    "source": "auth-service",
                    "traceparent": None,
                    "created_at": utcnow(),
                    "published_at": None,
                },
            )
            uow.commit()
    broker = FakeBroker()
    relay = OutboxRelay(database, OutboxEvent, broker.producer, batch_size=2)

    while relay.publish_pending():
        pass

    assert sent_ids(broker) == [event_ids[n] for n in range(1, 6)]


def test_a_signup_whose_event_cannot_be_stored_leaves_no_account(database: Database) -> None:
    """An event exists iff the signup committed: the account and its outbox row are one
    transaction, so an outbox insert that fails takes the account with it."""
    with database.engine.begin() as connection:
        connection.execute(text("DROP TABLE outbox"))
    command = SignUp(
        email="solo@example.com",
        password_hash="not-a-real-hash",
        name="Kim Minji",
        phone="+82-10-1234-5678",
        birth=dt.date(1994, 5, 17),
        gender="FEMALE",
        role="USER",
        nickname="minji",
        favorite_styles=[3, 1, 7],
    )

    with pytest.raises(DBAPIError), database.unit_of_work() as uow:
        sign_up(command, uow)

    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Member)) == 0


def test_rows_committed_without_a_wake_up_are_sent_by_the_next_poll(database: Database) -> None:
    """The relay polls as well as waking after a commit: rows committed by a process
    that died before it could wake its relay are sent by another relay already running."""
    broker = FakeBroker()
    relay = OutboxRelay(database, OutboxEvent, broker.producer, poll_interval=0.2)
    first = stage(database, 1)
    relay.start()
    try:
        wait_until(lambda: sent_ids(broker) == first, 10, "the row there at start is sent")
        later = stage(database, 2, first=1)  # committed, and nobody calls relay.wake()
        wait_until(lambda: sent_ids(broker) == first + later, 10, "rows committed later are polled")
    finally:
        relay.stop()


def test_a_relay_skips_rows_another_relay_holds_without_waiting_for_them(
    postgres: PostgresServer,
) -> None:
    """FOR UPDATE SKIP LOCKED on PostgreSQL: rows claimed by another relay's open
    transaction are neither sent again (FOR UPDATE) nor waited for (SKIP LOCKED)."""
    database = Database.from_url(postgres.create_database(), Base.metadata)
    create_tables(database)
    event_ids = stage(database, 6)
    broker = FakeBroker()
    relay = OutboxRelay(database, OutboxEvent, broker.producer)
    results: list[int] = []
    other = database.engine.connect()
    try:
        other.begin()  # another relay's claim on the three oldest rows
        other.execute(
            select(OutboxEvent.id).order_by(OutboxEvent.id).limit(3).with_for_update()
        ).all()
        worker = threading.Thread(target=lambda: results.append(relay.publish_pending()))
        worker.start()
        worker.join(10)
        blocked = worker.is_alive()
    finally:
        other.rollback()
        other.close()
    worker.join(10)

    assert not blocked, "the relay waited for rows another relay held"
    assert results == [3]
    assert sent_ids(broker) == event_ids[3:]
    assert relay.publish_pending() == 3
    assert sent_ids(broker) == event_ids[3:] + event_ids[:3]
    database.engine.dispose()
