"""Offsets move only past records that were applied or dead-lettered."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.models import Base as MemberBase
from shared.messaging.consumer import (
    ConsumerLoop,
    EventProcessor,
    Outcome,
    RetryLater,
)
from shared.messaging.kafka import Message
from shared.messaging.pipeline import ProfileInsert
from shared.storage.db import Database, UnitOfWork
from tests.fakes import FakeBroker, FakeConsumer
from tests.schema import create_tables

UNREACHABLE_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:9/nowhere?connect_timeout=1"


def profile_insert(number: int) -> bytes:
    return json.dumps(
        {
            "uuid": f"00000000-0000-4000-8000-{number:012d}",
            "role": "USER",
            "nickname": f"user{number}",
            "favoriteStyles": [1],
        }
    ).encode()


@pytest.fixture
def broker() -> FakeBroker:
    broker = FakeBroker()
    for number in range(3):
        broker.append("profile-insert", profile_insert(number), b"k", [("ce_id", b"e%d" % number)])
    return broker


@pytest.fixture
def member_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'member.db'}", MemberBase.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


@pytest.fixture
def down_db() -> Iterator[Database]:
    """A member database nothing answers for: every connection attempt is refused."""
    database = Database.from_url(UNREACHABLE_POSTGRES, MemberBase.metadata)
    yield database
    database.engine.dispose()


def processor_on(
    database: Database, broker: FakeBroker, handler: Any = None
) -> EventProcessor[ProfileInsert]:
    spec = PROFILE_INSERT_WORKER
    return EventProcessor(
        spec.topic, handler or spec.handler, database, spec.inbox, broker.producer()
    )


def test_unreachable_database_is_retried_and_never_dead_lettered(
    broker: FakeBroker, down_db: Database
) -> None:
    processor = processor_on(down_db, broker)
    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor)

    for _ in range(3):
        loop.poll_once()

    assert consumer.commits == []
    assert consumer.next_offset == 0
    assert broker.topics["profile-insert.DLT"] == []


def test_transient_failure_raises_retry_later_with_growing_bounded_delay(
    broker: FakeBroker, down_db: Database
) -> None:
    processor = processor_on(down_db, broker)
    record = broker.topics["profile-insert"][0]

    delays = []
    for attempt in (1, 20):
        with pytest.raises(RetryLater) as raised:
            processor.process(record, attempt)
        delays.append(raised.value.delay)

    assert 0 < delays[0] <= 0.1
    assert 0 < delays[1] <= 5.0


def test_records_are_applied_once_the_database_is_back(
    broker: FakeBroker, member_db: Database, down_db: Database
) -> None:
    consumer = FakeConsumer(broker, "profile-insert")
    ConsumerLoop(consumer, processor_on(down_db, broker)).poll_once()
    assert consumer.paused  # the failing partition waits out its backoff

    consumer.paused = False  # the worker restarted: its new consumer has nothing paused
    loop = ConsumerLoop(consumer, processor_on(member_db, broker))
    loop.poll_once()

    assert consumer.committed == 3
    assert loop.counts[Outcome.APPLIED] == 3


def test_unexpected_error_is_retried_then_dead_lettered(
    broker: FakeBroker, member_db: Database
) -> None:
    calls = []

    def flaky(event: ProfileInsert, uow: UnitOfWork) -> None:
        calls.append(event.uuid)
        raise RuntimeError("bug in handler")

    processor = processor_on(member_db, broker, flaky)
    record = broker.topics["profile-insert"][0]

    for attempt in range(1, 5):
        with pytest.raises(RetryLater):
            processor.process(record, attempt)
    assert processor.process(record, 5) == Outcome.DEAD_LETTERED

    [dead] = broker.topics["profile-insert.DLT"]
    assert dict(dead.headers)["dlt-attempts"] == b"5"
    assert b"RuntimeError: bug in handler" in dict(dead.headers)["dlt-error"]
    assert len(calls) == 5


def test_failed_dead_letter_send_is_retried_not_acknowledged(
    broker: FakeBroker, member_db: Database
) -> None:
    broker.append("profile-insert", b"poison", b"k", [])
    broker.down = True
    consumer = FakeConsumer(broker, "profile-insert", committed=3)
    loop = ConsumerLoop(consumer, processor_on(member_db, broker))

    loop.poll_once()

    assert consumer.commits == []
    assert consumer.next_offset == 3


def test_stop_mid_batch_finishes_the_batch_in_hand_and_commits_it(
    broker: FakeBroker, member_db: Database
) -> None:
    stop = threading.Event()
    applied = []

    def stop_after_first(event: ProfileInsert, uow: UnitOfWork) -> None:
        PROFILE_INSERT_WORKER.handler(event, uow)
        applied.append(event.nickname)
        stop.set()

    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor_on(member_db, broker, stop_after_first), stop)

    loop.poll_once()

    assert applied == ["user0", "user1", "user2"]
    assert consumer.committed == 3
    assert stop.is_set()


def test_message_header_lookup_returns_text() -> None:
    message = Message("t", None, b"{}", [("ce_id", b"abc"), ("other", b"x")])
    assert message.header("ce_id") == "abc"
    assert message.header("missing") is None


def test_poison_record_with_null_header_value_is_dead_lettered_not_a_crash(
    broker: FakeBroker, member_db: Database
) -> None:
    poison = Message("profile-insert", b"k", b"{oops", [("ce_id", b"p1"), ("x-empty", None)])  # type: ignore[list-item]

    assert processor_on(member_db, broker).process(poison) == Outcome.DEAD_LETTERED

    [dead] = broker.topics["profile-insert.DLT"]
    assert ("x-empty", b"") in dead.headers


def test_replayed_dead_letter_gets_fresh_dlt_headers_not_a_second_set(
    broker: FakeBroker, member_db: Database
) -> None:
    old = [("ce_id", b"p2"), ("dlt-error", b"old"), ("dlt-attempts", b"1")]
    poison = Message("profile-insert", b"k", b"{oops", old, partition=0, offset=9)

    processor_on(member_db, broker).process(poison, attempt=1)

    [dead] = broker.topics["profile-insert.DLT"]
    names = [name for name, _ in dead.headers]
    assert names.count("dlt-error") == 1
    assert names.count("dlt-attempts") == 1
    assert dict(dead.headers)["dlt-original-offset"] == b"9"


def test_failing_partition_is_paused_for_its_backoff_then_resumed(
    broker: FakeBroker, member_db: Database, down_db: Database
) -> None:
    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor_on(down_db, broker))

    loop.poll_once()
    assert consumer.paused
    time.sleep(0.15)  # past the first backoff (at most 0.1 s)
    loop.poll_once(timeout_ms=0)

    assert consumer.paused  # resumed, failed again, paused again
    assert loop._attempts  # the attempt count grew, for the same record


def test_partition_failing_longer_than_the_bound_is_reported_stuck_and_still_retried(
    broker: FakeBroker, down_db: Database
) -> None:
    consumer = FakeConsumer(broker, "profile-insert")
    reports: list[list[str]] = []
    loop = ConsumerLoop(
        consumer, processor_on(down_db, broker), stuck_after=0.0, on_stuck=reports.append
    )

    loop.poll_once()
    time.sleep(0.01)
    loop.poll_once(timeout_ms=0)

    assert reports[-1] == ["profile-insert[0]"]
    assert broker.topics["profile-insert.DLT"] == []
    assert consumer.commits == []


def test_partition_revoked_while_paused_is_not_resumed_by_its_old_owner(
    broker: FakeBroker, down_db: Database
) -> None:
    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor_on(down_db, broker))
    loop.poll_once()
    assert consumer.paused

    consumer.assignment = lambda: set()  # type: ignore[method-assign]  # rebalanced away
    time.sleep(0.15)
    loop.poll_once(timeout_ms=0)

    assert consumer.paused  # untouched: resume() on a partition not ours would raise


def count_commits(database: Database) -> list[int]:
    """A list that grows by one for every transaction committed on `database`."""
    from sqlalchemy import event

    commits: list[int] = []
    event.listen(database.engine, "commit", lambda _conn: commits.append(1))
    return commits


def test_a_poll_is_applied_in_one_transaction(broker: FakeBroker, member_db: Database) -> None:
    commits = count_commits(member_db)
    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor_on(member_db, broker))

    loop.poll_once()

    assert len(commits) == 1
    assert loop.counts[Outcome.APPLIED] == 3
    assert consumer.commits == [3]


def test_an_event_twice_in_one_batch_is_applied_once(
    broker: FakeBroker, member_db: Database
) -> None:
    first = broker.topics["profile-insert"][0]
    broker.append("profile-insert", first.value, first.key, first.headers)  # redelivered
    loop = ConsumerLoop(FakeConsumer(broker, "profile-insert"), processor_on(member_db, broker))

    loop.poll_once()

    assert loop.counts[Outcome.APPLIED] == 3
    assert loop.counts[Outcome.DUPLICATE] == 1


def test_a_conflicting_record_in_a_batch_costs_only_itself(
    broker: FakeBroker, member_db: Database
) -> None:
    # A new event id for a member that an earlier record of the same batch creates.
    broker.append("profile-insert", profile_insert(1), b"k", [("ce_id", b"conflict")])
    broker.append("profile-insert", profile_insert(7), b"k", [("ce_id", b"e7")])
    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor_on(member_db, broker))

    loop.poll_once()

    assert loop.counts[Outcome.APPLIED] == 4
    assert loop.counts[Outcome.DEAD_LETTERED] == 1
    [letter] = broker.topics["profile-insert.DLT"]
    assert letter.header("ce_id") == "conflict"
    assert "conflicts with stored state" in (letter.header("dlt-error") or "")
    assert consumer.committed == 5


def test_an_undecodable_record_in_a_batch_is_dead_lettered_and_the_rest_applied(
    broker: FakeBroker, member_db: Database
) -> None:
    broker.append("profile-insert", b"{not json", b"k", [("ce_id", b"bad")])
    broker.append("profile-insert", profile_insert(7), b"k", [("ce_id", b"e7")])
    consumer = FakeConsumer(broker, "profile-insert")
    commits = count_commits(member_db)
    loop = ConsumerLoop(consumer, processor_on(member_db, broker))

    loop.poll_once()

    assert len(commits) == 1  # still one transaction: the bad record never reached it
    assert loop.counts[Outcome.APPLIED] == 4
    assert [m.header("ce_id") for m in broker.topics["profile-insert.DLT"]] == ["bad"]
    assert consumer.committed == 5


def test_a_batch_on_a_failing_database_goes_back_whole(
    broker: FakeBroker, down_db: Database
) -> None:
    consumer = FakeConsumer(broker, "profile-insert", committed=0)
    loop = ConsumerLoop(consumer, processor_on(down_db, broker))

    loop.poll_once()

    assert consumer.next_offset == 0  # sent back to the batch's first record
    assert consumer.paused
    assert consumer.commits == []
