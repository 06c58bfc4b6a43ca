"""Offsets move only past records that were applied or dead-lettered.

Time is a FakeClock and backoff a fixed function of the attempt, so these tests move time
instead of sleeping for it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError
from kafka.structs import TopicPartition
from sqlalchemy import select
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.handlers import on_profile_insert
from member_service.models import Base as MemberBase
from member_service.models import ProcessedEvent, User
from shared.messaging.consumer import ConsumerLoop, backoff_delay
from shared.messaging.kafka import Message
from shared.messaging.pipeline import PROFILE_INSERT, ProfileInsert
from shared.messaging.processor import (
    EventProcessor,
    Outcome,
    PartitionProgress,
    Route,
    is_transient,
)
from shared.storage.db import Database, UnitOfWork
from tests.fakes import FakeBroker, FakeClock, FakeConsumer
from tests.processing import MustComeAgain, process_one
from tests.schema import create_tables

UNREACHABLE_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:9/nowhere?connect_timeout=1"
TOPIC = "profile-insert"
P0 = TopicPartition(TOPIC, 0)
P1 = TopicPartition(TOPIC, 1)


def profile_insert(number: int) -> bytes:
    return json.dumps(
        {
            "uuid": f"00000000-0000-4000-8000-{number:012d}",
            "role": "USER",
            "nickname": f"user{number}",
            "favoriteStyles": [1],
        }
    ).encode()


def uuid_of(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


@pytest.fixture
def broker() -> FakeBroker:
    broker = FakeBroker()
    for number in range(3):
        broker.append(TOPIC, profile_insert(number), b"k", [("ce_id", b"e%d" % number)])
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def processor_on(database: Database, broker: FakeBroker, handler: Any = None) -> EventProcessor:
    spec = PROFILE_INSERT_WORKER
    routes = (Route(PROFILE_INSERT, handler or on_profile_insert),)
    return EventProcessor(routes, database, spec.inbox, broker.producer())


def seconds_per_attempt(attempt: int) -> float:
    """A backoff without jitter: attempt n waits n seconds."""
    return float(attempt)


def loop_on(
    consumer: FakeConsumer,
    processor: EventProcessor,
    clock: FakeClock,
    stop: threading.Event | None = None,
    **options: Any,
) -> ConsumerLoop:
    return ConsumerLoop(
        consumer, processor, stop, clock=clock, backoff=seconds_per_attempt, **options
    )


def record(partition: int, offset: int, value: bytes, event_id: bytes) -> Message:
    return Message(TOPIC, b"k", value, [("ce_id", event_id)], partition=partition, offset=offset)


def stored_event_ids(database: Database) -> set[str]:
    with database.sessions() as session:
        return set(session.scalars(select(ProcessedEvent.event_id)))


def stored_users(database: Database) -> set[str]:
    with database.sessions() as session:
        return {str(uuid) for uuid in session.scalars(select(User.uuid))}


# --- backoff -----------------------------------------------------------------------------


def test_backoff_grows_exponentially_from_the_base_and_is_capped() -> None:
    def highest(low: float, high: float) -> float:
        return high

    def lowest(low: float, high: float) -> float:
        return low

    assert [backoff_delay(n, uniform=highest) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff_delay(7, uniform=highest) == 5.0
    assert backoff_delay(50, uniform=highest) == 5.0
    assert backoff_delay(50, uniform=lowest) == 0.1
    assert 0.1 <= backoff_delay(3) <= 0.4  # full jitter between the base and the step


# --- retry classification ----------------------------------------------------------------


def statement_error(kind: type[DBAPIError], message: str) -> DBAPIError:
    return kind("INSERT INTO users ...", {}, Exception(message))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        pytest.param(
            statement_error(OperationalError, "server closed the connection"), True, id="lost"
        ),
        pytest.param(statement_error(OperationalError, "deadlock detected"), True, id="deadlock"),
        pytest.param(statement_error(InterfaceError, "connection closed"), True, id="interface"),
        pytest.param(statement_error(InternalError, "read-only"), True, id="read-only"),
        pytest.param(
            statement_error(ProgrammingError, 'relation "users" does not exist'), True, id="table"
        ),
        pytest.param(PoolTimeoutError("QueuePool limit reached"), True, id="pool-timeout"),
        pytest.param(statement_error(IntegrityError, "duplicate key"), False, id="integrity"),
        pytest.param(statement_error(DataError, "value too long"), False, id="data"),
        pytest.param(RuntimeError("bug in handler"), False, id="bug"),
        pytest.param(KeyError("favoriteStyles"), False, id="key-error"),
    ],
)
def test_only_failures_of_the_database_itself_are_transient(
    error: Exception, transient: bool
) -> None:
    assert is_transient(error) is transient


def test_a_data_error_is_the_record_s_fault_retried_then_dead_lettered_not_forever(
    broker: FakeBroker, member_db: Database
) -> None:
    def too_long(event: ProfileInsert, uow: UnitOfWork) -> None:
        raise statement_error(DataError, "value too long for type character varying(20)")

    processor = processor_on(member_db, broker, too_long)
    message = broker.topics[TOPIC][0]

    with pytest.raises(MustComeAgain):
        process_one(processor, message, 4)
    assert process_one(processor, message, 5) == Outcome.DEAD_LETTERED
    [dead] = broker.topics["profile-insert.DLT"]
    assert "DataError" in (dead.header("dlt-error") or "")


# --- the processor's report --------------------------------------------------------------


def test_apply_reports_each_partition_done_up_to_its_end(
    broker: FakeBroker, member_db: Database
) -> None:
    batch = {
        P0: [record(0, 4, profile_insert(1), b"a"), record(0, 5, profile_insert(2), b"b")],
        P1: [record(1, 9, profile_insert(3), b"c")],
    }

    report = processor_on(member_db, broker).apply(batch)

    assert report.partitions == {P0: PartitionProgress(6), P1: PartitionProgress(10)}
    assert report.outcomes == [Outcome.APPLIED] * 3
    assert stored_event_ids(member_db) == {"a", "b", "c"}


def test_apply_on_a_sick_database_sends_every_partition_back_to_its_first_record(
    broker: FakeBroker, down_db: Database
) -> None:
    batch = {
        P0: [record(0, 4, profile_insert(1), b"a"), record(0, 5, profile_insert(2), b"b")],
        P1: [record(1, 9, b"{bad", b"c"), record(1, 10, profile_insert(3), b"d")],
    }

    report = processor_on(down_db, broker).apply(batch)

    assert {p: (g.commit_to, g.retry_at) for p, g in report.partitions.items()} == {
        P0: (None, 4),
        P1: (None, 9),  # not past its undecodable first record either
    }
    assert report.outcomes == []
    assert broker.topics["profile-insert.DLT"] == []  # the whole poll waits for the database


def test_apply_holds_back_only_the_partition_whose_dead_letter_was_not_acknowledged(
    broker: FakeBroker, member_db: Database
) -> None:
    broker.down = True
    batch = {
        P0: [
            record(0, 4, profile_insert(1), b"a"),
            record(0, 5, b"{bad", b"poison"),
            record(0, 6, profile_insert(2), b"b"),
        ],
        P1: [record(1, 9, profile_insert(3), b"c")],
    }

    report = processor_on(member_db, broker).apply(batch)

    assert report.partitions[P0].commit_to == 5  # up to the poison record, not past it
    assert report.partitions[P0].retry_at == 5
    assert "dead-letter send failed" in report.partitions[P0].reason
    assert report.partitions[P1] == PartitionProgress(10)
    assert report.outcomes == [Outcome.APPLIED] * 3  # the batch committed all three


def test_apply_retries_a_handler_bug_until_the_last_attempt_then_dead_letters_it(
    broker: FakeBroker, member_db: Database
) -> None:
    def buggy(event: ProfileInsert, uow: UnitOfWork) -> None:
        if event.nickname == "user2":
            raise RuntimeError("bug in handler")
        on_profile_insert(event, uow)

    processor = processor_on(member_db, broker, buggy)
    batch = {P0: [record(0, 0, profile_insert(1), b"a"), record(0, 1, profile_insert(2), b"b")]}

    first = processor.apply(batch, lambda partition, offset: 4)
    last = processor.apply(batch, lambda partition, offset: 5)

    assert (first.partitions[P0].commit_to, first.partitions[P0].retry_at) == (1, 1)
    assert first.outcomes == [Outcome.APPLIED]  # record by record: the good one went in
    assert last.partitions[P0] == PartitionProgress(2)
    assert last.outcomes == [Outcome.DUPLICATE, Outcome.DEAD_LETTERED]
    [dead] = broker.topics["profile-insert.DLT"]
    assert dead.header("dlt-attempts") == "5"


def test_a_conflict_with_stored_state_is_dead_lettered_at_the_first_attempt(
    broker: FakeBroker, member_db: Database
) -> None:
    processor = processor_on(member_db, broker)
    processor.apply({P0: [record(0, 0, profile_insert(1), b"a")]})

    report = processor.apply({P1: [record(1, 0, profile_insert(1), b"other-id")]})

    assert report.partitions[P1] == PartitionProgress(1)
    assert report.outcomes == [Outcome.DEAD_LETTERED]


def test_transient_failure_is_raised_as_retry_later_by_process_at_any_attempt(
    broker: FakeBroker, down_db: Database
) -> None:
    processor = processor_on(down_db, broker)
    message = broker.topics[TOPIC][0]

    for attempt in (1, 5, 50):
        with pytest.raises(MustComeAgain) as raised:
            process_one(processor, message, attempt)
        assert raised.value.reason

    assert broker.topics["profile-insert.DLT"] == []


def test_unexpected_error_is_retried_then_dead_lettered(
    broker: FakeBroker, member_db: Database
) -> None:
    calls = []

    def flaky(event: ProfileInsert, uow: UnitOfWork) -> None:
        calls.append(event.uuid)
        raise RuntimeError("bug in handler")

    processor = processor_on(member_db, broker, flaky)
    message = broker.topics[TOPIC][0]

    for attempt in range(1, 5):
        with pytest.raises(MustComeAgain):
            process_one(processor, message, attempt)
    assert process_one(processor, message, 5) == Outcome.DEAD_LETTERED

    [dead] = broker.topics["profile-insert.DLT"]
    assert dict(dead.headers)["dlt-attempts"] == b"5"
    assert b"RuntimeError: bug in handler" in dict(dead.headers)["dlt-error"]
    assert len(calls) == 5


def test_poison_record_with_null_header_value_is_dead_lettered_not_a_crash(
    broker: FakeBroker, member_db: Database
) -> None:
    poison = Message(TOPIC, b"k", b"{oops", [("ce_id", b"p1"), ("x-empty", None)])  # type: ignore[list-item]

    assert process_one(processor_on(member_db, broker), poison) == Outcome.DEAD_LETTERED

    [dead] = broker.topics["profile-insert.DLT"]
    assert ("x-empty", b"") in dead.headers


def test_replayed_dead_letter_gets_fresh_dlt_headers_not_a_second_set(
    broker: FakeBroker, member_db: Database
) -> None:
    old = [("ce_id", b"p2"), ("dlt-error", b"old"), ("dlt-attempts", b"1")]
    poison = Message(TOPIC, b"k", b"{oops", old, partition=0, offset=9)

    process_one(processor_on(member_db, broker), poison, attempt=1)

    [dead] = broker.topics["profile-insert.DLT"]
    names = [name for name, _ in dead.headers]
    assert names.count("dlt-error") == 1
    assert names.count("dlt-attempts") == 1
    assert dict(dead.headers)["dlt-original-offset"] == b"9"


def test_message_header_lookup_returns_text() -> None:
    message = Message("t", None, b"{}", [("ce_id", b"abc"), ("other", b"x")])
    assert message.header("ce_id") == "abc"
    assert message.header("missing") is None


# --- the loop: commits ---------------------------------------------------------------------


def count_commits(database: Database) -> list[int]:
    """A list that grows by one for every transaction committed on `database`."""
    from sqlalchemy import event

    commits: list[int] = []
    event.listen(database.engine, "commit", lambda _conn: commits.append(1))
    return commits


def test_a_poll_is_applied_in_one_transaction(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    commits = count_commits(member_db)
    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)

    loop.poll_once()

    assert len(commits) == 1
    assert loop.counts[Outcome.APPLIED] == 3
    assert consumer.commits == [3]


def test_the_offset_is_committed_only_once_the_effects_are_in_the_database(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    seen_at_commit: list[set[str]] = []
    consumer = FakeConsumer(broker, TOPIC)
    consumer.on_commit = lambda offset: seen_at_commit.append(stored_event_ids(member_db))
    loop = loop_on(consumer, processor_on(member_db, broker), clock)

    loop.poll_once()

    assert consumer.commits == [3]
    assert seen_at_commit == [{"e0", "e1", "e2"}]


def test_an_event_twice_in_one_batch_is_applied_once(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    first = broker.topics[TOPIC][0]
    broker.append(TOPIC, first.value, first.key, first.headers)  # redelivered
    loop = loop_on(FakeConsumer(broker, TOPIC), processor_on(member_db, broker), clock)

    loop.poll_once()

    assert loop.counts[Outcome.APPLIED] == 3
    assert loop.counts[Outcome.DUPLICATE] == 1


def test_a_redelivered_batch_changes_nothing(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    processor = processor_on(member_db, broker)
    loop_on(FakeConsumer(broker, TOPIC), processor, clock).poll_once()

    # The worker crashed after the DB commit, before the offset commit: all comes again.
    again = loop_on(FakeConsumer(broker, TOPIC), processor, clock)
    again.poll_once()

    assert again.counts == {Outcome.APPLIED: 0, Outcome.DUPLICATE: 3, Outcome.DEAD_LETTERED: 0}
    assert broker.topics["profile-insert.DLT"] == []
    assert stored_users(member_db) == {uuid_of(n) for n in range(3)}


def test_a_conflicting_record_in_a_batch_costs_only_itself(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    # A new event id for a member that an earlier record of the same batch creates.
    broker.append(TOPIC, profile_insert(1), b"k", [("ce_id", b"conflict")])
    broker.append(TOPIC, profile_insert(7), b"k", [("ce_id", b"e7")])
    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)

    loop.poll_once()

    assert loop.counts[Outcome.APPLIED] == 4
    assert loop.counts[Outcome.DEAD_LETTERED] == 1
    [letter] = broker.topics["profile-insert.DLT"]
    assert letter.header("ce_id") == "conflict"
    assert "conflicts with stored state" in (letter.header("dlt-error") or "")
    assert consumer.committed == 5


def test_an_undecodable_record_in_a_batch_is_dead_lettered_and_the_rest_applied(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    broker.append(TOPIC, b"{not json", b"k", [("ce_id", b"bad")])
    broker.append(TOPIC, profile_insert(7), b"k", [("ce_id", b"e7")])
    consumer = FakeConsumer(broker, TOPIC)
    commits = count_commits(member_db)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)

    loop.poll_once()

    assert len(commits) == 1  # still one transaction: the bad record never reached it
    assert loop.counts[Outcome.APPLIED] == 4
    assert [m.header("ce_id") for m in broker.topics["profile-insert.DLT"]] == ["bad"]
    assert consumer.committed == 5


def test_failed_dead_letter_send_is_retried_not_acknowledged(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    broker.append(TOPIC, b"poison", b"k", [])
    broker.down = True
    consumer = FakeConsumer(broker, TOPIC, committed=3)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)

    loop.poll_once()

    assert consumer.commits == []
    assert consumer.next_offset == 3
    assert consumer.paused


def test_a_poison_record_that_cannot_be_parked_holds_its_partition_back_from_itself(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    broker.append(TOPIC, b"poison", b"k", [("ce_id", b"poison")])
    broker.append(TOPIC, profile_insert(7), b"k", [("ce_id", b"e7")])
    broker.down = True
    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)

    loop.poll_once()
    assert consumer.commits == [3]  # up to the poison record; e7 is applied, not acknowledged
    assert (consumer.next_offset, consumer.paused) == (3, True)

    broker.down = False
    clock.advance(1.0)
    loop.poll_once()

    assert consumer.commits == [3, 5]
    assert [m.header("ce_id") for m in broker.topics["profile-insert.DLT"]] == ["poison"]
    assert loop.counts == {Outcome.APPLIED: 4, Outcome.DUPLICATE: 1, Outcome.DEAD_LETTERED: 1}


def test_a_commit_refused_after_a_rebalance_is_logged_not_fatal(
    broker: FakeBroker, member_db: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = FakeConsumer(broker, TOPIC)

    def rebalanced_meanwhile(event: ProfileInsert, uow: UnitOfWork) -> None:
        on_profile_insert(event, uow)
        consumer.revoke()  # the batch outlived max_poll_interval_ms: the group moved on

    loop = loop_on(consumer, processor_on(member_db, broker, rebalanced_meanwhile), clock)

    loop.poll_once()
    loop.poll_once()

    assert consumer.commits == []
    assert loop.counts[Outcome.APPLIED] == 3
    assert "offset commit failed" in caplog.text


def test_stop_mid_batch_finishes_the_batch_in_hand_and_commits_it(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    stop = threading.Event()
    applied = []

    def stop_after_first(event: ProfileInsert, uow: UnitOfWork) -> None:
        on_profile_insert(event, uow)
        applied.append(event.nickname)
        stop.set()

    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker, stop_after_first), clock, stop)

    loop.poll_once()

    assert applied == ["user0", "user1", "user2"]
    assert consumer.committed == 3
    assert stop.is_set()


# --- the loop: retries ---------------------------------------------------------------------


def test_a_batch_on_a_failing_database_goes_back_whole(
    broker: FakeBroker, down_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC, committed=0)
    loop = loop_on(consumer, processor_on(down_db, broker), clock)

    loop.poll_once()

    assert consumer.next_offset == 0  # sent back to the batch's first record
    assert consumer.paused
    assert consumer.commits == []


def test_unreachable_database_is_retried_for_as_long_as_it_lasts_never_dead_lettered(
    broker: FakeBroker, down_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(down_db, broker), clock)

    for _ in range(8):  # well past max_unexpected_attempts
        loop.poll_once()
        clock.advance(60)

    assert loop.attempt_of(consumer.partition, 0) == 9
    assert consumer.commits == []
    assert consumer.next_offset == 0
    assert broker.topics["profile-insert.DLT"] == []


def test_a_lone_record_on_an_unreachable_database_is_never_dead_lettered(
    broker: FakeBroker, down_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC, max_records=1)
    loop = loop_on(consumer, processor_on(down_db, broker), clock)

    for _ in range(8):
        loop.poll_once()
        clock.advance(60)

    assert loop.attempt_of(consumer.partition, 0) == 9
    assert consumer.commits == []
    assert broker.topics["profile-insert.DLT"] == []


def test_records_are_applied_once_the_database_is_back(
    broker: FakeBroker, member_db: Database, down_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC)
    loop_on(consumer, processor_on(down_db, broker), clock).poll_once()
    assert consumer.paused  # the failing partition waits out its backoff

    consumer.paused = False  # the worker restarted: its new consumer has nothing paused
    loop = loop_on(consumer, processor_on(member_db, broker), clock)
    loop.poll_once()

    assert consumer.committed == 3
    assert loop.counts[Outcome.APPLIED] == 3


def test_failing_partition_is_paused_for_exactly_its_backoff_then_resumed(
    broker: FakeBroker, down_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(down_db, broker), clock)

    loop.poll_once()  # attempt 1 fails: paused for 1 s
    clock.advance(0.999)
    loop.poll_once()
    assert (consumer.paused, loop.attempt_of(consumer.partition, 0)) == (True, 2)

    clock.advance(0.001)
    loop.poll_once()  # resumed, attempt 2 fails: paused for 2 s
    assert (consumer.paused, loop.attempt_of(consumer.partition, 0)) == (True, 3)

    clock.advance(1.999)
    loop.poll_once()
    assert loop.attempt_of(consumer.partition, 0) == 3


def test_a_handler_bug_is_retried_with_backoff_then_dead_lettered_and_passed(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    def buggy(event: ProfileInsert, uow: UnitOfWork) -> None:
        if event.nickname == "user1":
            raise RuntimeError("bug in handler")
        on_profile_insert(event, uow)

    consumer = FakeConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker, buggy), clock)

    loop.poll_once()
    assert consumer.commits == [1]  # user0 applied alone, user1 comes again
    for attempt in range(1, 5):
        clock.advance(attempt)
        loop.poll_once()

    [dead] = broker.topics["profile-insert.DLT"]
    assert (dead.header("ce_id"), dead.header("dlt-attempts")) == ("e1", "5")
    assert consumer.commits == [1, 3]
    assert loop.counts == {Outcome.APPLIED: 2, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 1}
    assert loop._attempts == {}  # nothing left to count once the partition moved on
    assert stored_users(member_db) == {uuid_of(0), uuid_of(2)}


def test_partition_failing_longer_than_the_bound_is_reported_stuck_and_still_retried(
    broker: FakeBroker, down_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC)
    reports: list[list[str]] = []
    loop = loop_on(
        consumer, processor_on(down_db, broker), clock, stuck_after=30.0, on_stuck=reports.append
    )

    loop.poll_once()
    clock.advance(29.0)
    loop.poll_once()
    assert reports[-1] == []
    clock.advance(1.5)
    loop.poll_once()

    assert reports[-1] == ["profile-insert[0]"]
    assert broker.topics["profile-insert.DLT"] == []
    assert consumer.commits == []


def test_a_stuck_partition_is_no_longer_reported_once_it_moves(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    broker.down = True
    broker.append(TOPIC, b"poison", b"k", [])
    consumer = FakeConsumer(broker, TOPIC, committed=3)
    reports: list[list[str]] = []
    loop = loop_on(
        consumer, processor_on(member_db, broker), clock, stuck_after=5.0, on_stuck=reports.append
    )
    loop.poll_once()
    clock.advance(10.0)
    loop.poll_once()
    assert reports[-1] == ["profile-insert[0]"]

    broker.down = False
    clock.advance(10.0)
    loop.poll_once()

    assert reports[-1] == []
    assert consumer.commits == [4]


def test_partition_revoked_while_paused_is_not_resumed_by_its_old_owner(
    broker: FakeBroker, down_db: Database, member_db: Database, clock: FakeClock
) -> None:
    consumer = FakeConsumer(broker, TOPIC)
    processor = processor_on(down_db, broker)
    loop = loop_on(consumer, processor, clock)
    loop.poll_once()
    assert consumer.paused

    consumer.revoke()  # rebalanced away while waiting out its backoff
    clock.advance(5.0)
    loop.poll_once()  # FakeConsumer.resume raises on a partition not assigned

    assert consumer.commits == []
    assert loop.attempt_of(consumer.partition, 0) == 1  # its tries are the new owner's now


def test_partition_revoked_and_given_back_starts_again_from_the_committed_offset(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    healthy = True

    def until_revoked(event: ProfileInsert, uow: UnitOfWork) -> None:
        if not healthy:
            raise RuntimeError("not yet")
        on_profile_insert(event, uow)

    consumer = FakeConsumer(broker, TOPIC, max_records=2)
    loop = loop_on(consumer, processor_on(member_db, broker, until_revoked), clock)
    loop.poll_once()
    assert consumer.commits == [2]
    healthy = False
    loop.poll_once()
    assert consumer.paused

    consumer.revoke()
    clock.advance(5.0)
    loop.poll_once()
    consumer.assign()
    healthy = True
    loop.poll_once()

    assert consumer.commits == [2, 3]
    assert loop.counts[Outcome.APPLIED] == 3


# --- several partitions through the loop ----------------------------------------------


class TwoPartitionConsumer:
    """The calls ConsumerLoop makes, on two partitions of one topic, strict as
    kafka-python is about partitions not assigned."""

    def __init__(self, logs: dict[TopicPartition, list[Message]]) -> None:
        self.logs = logs
        self.position_of = dict.fromkeys(logs, 0)
        self.assigned = set(logs)
        self.paused: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def _check(self, *partitions: TopicPartition) -> None:
        assert set(partitions) <= self.assigned, f"not assigned: {partitions}"

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Message]]:
        batch = {}
        for partition in sorted(self.assigned - self.paused):
            records = self.logs[partition][self.position_of[partition] :]
            self.position_of[partition] += len(records)
            if records:
                batch[partition] = records
        return batch

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check(partition)
        self.position_of[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self._check(*partitions)
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._check(*partitions)
        self.paused -= set(partitions)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self._check(*offsets)
        self.committed |= {partition: meta.offset for partition, meta in offsets.items()}

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int:
        return self.position_of[partition]

    def highwater(self, partition: TopicPartition) -> int:
        return len(self.logs[partition])

    def close(self, autocommit: bool = False) -> None:
        pass


def test_a_failing_partition_waits_while_the_other_flows_and_commits(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    broken = {"user10"}

    def fails_for_user10(event: ProfileInsert, uow: UnitOfWork) -> None:
        if event.nickname in broken:
            raise RuntimeError("bug for this one")
        on_profile_insert(event, uow)

    consumer = TwoPartitionConsumer(
        {
            P0: [record(0, 0, profile_insert(10), b"a0"), record(0, 1, profile_insert(11), b"a1")],
            P1: [record(1, 0, profile_insert(20), b"b0"), record(1, 1, profile_insert(21), b"b1")],
        }
    )
    loop = loop_on(consumer, processor_on(member_db, broker, fails_for_user10), clock)

    loop.poll_once()

    assert consumer.committed == {P1: 2}  # P1 flowed; nothing of P0 was acknowledged
    assert consumer.paused == {P0} and consumer.position_of[P0] == 0
    assert stored_users(member_db) == {uuid_of(20), uuid_of(21)}

    loop.poll_once()  # still within P0's backoff: P1 keeps being polled, P0 stays paused
    assert consumer.paused == {P0}

    broken.clear()  # the bug is fixed
    clock.advance(seconds_per_attempt(1))
    loop.poll_once()

    assert consumer.committed == {P0: 2, P1: 2}
    assert consumer.paused == set()
    assert stored_users(member_db) == {uuid_of(n) for n in (10, 11, 20, 21)}
    assert broker.topics["profile-insert.DLT"] == []


class Cluster:
    """kafka-python's cluster metadata, as far as topic ids go."""

    def __init__(self) -> None:
        self.ids = {TOPIC: "id-1"}

    def topic_id(self, topic: str) -> str | None:
        return self.ids.get(topic)


class Client:
    def __init__(self) -> None:
        self.cluster = Cluster()


class Coordinator:
    def __init__(self) -> None:
        self.rejoins = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


class IdentifiedConsumer(FakeConsumer):
    """A FakeConsumer whose metadata carries topic ids, as kafka-python's does."""

    def __init__(self, broker: FakeBroker, topic: str) -> None:
        super().__init__(broker, topic)
        self._client = Client()
        self._coordinator = Coordinator()


def test_a_topic_created_again_is_read_again_from_its_beginning_not_from_the_old_position(
    broker: FakeBroker, member_db: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen with the broker restarted empty: the consumer kept its positions into the
    old log and skipped the first records of the new one."""
    consumer = IdentifiedConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)
    loop.poll_once()
    assert consumer.committed == 3 and len(stored_users(member_db)) == 3

    # The broker is rebuilt: the topic holds five new events; its id is new.
    broker.topics[TOPIC] = []
    for number in range(10, 15):
        broker.append(TOPIC, profile_insert(number), b"k", [("ce_id", b"e%d" % number)])
    consumer._client.cluster.ids[TOPIC] = "id-2"
    with caplog.at_level(logging.WARNING, logger="shared.messaging.consumer"):
        loop.poll_once()  # fetched from offset 3 of the new log: dropped, sought to 0
        loop.poll_once()

    assert stored_users(member_db) == {uuid_of(n) for n in [0, 1, 2, *range(10, 15)]}
    assert consumer.committed == 5
    assert any("created again" in r.getMessage() for r in caplog.records)
    assert consumer._coordinator.rejoins == 1  # the group is assigned the new topic anew


def test_a_topic_created_again_while_nothing_of_it_is_assigned_makes_the_consumer_rejoin(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    """Seen on a cluster rebuilt empty: the group was assigned nothing while the topic was
    missing, and its leader never re-assigned it once the topic was back (same count)."""
    consumer = IdentifiedConsumer(broker, TOPIC)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)
    loop.poll_once()
    consumer.revoke()  # the rebalance while the topic was missing assigned nothing
    consumer._client.cluster.ids[TOPIC] = "id-2"
    loop.poll_once()
    assert consumer._coordinator.rejoins == 1


def test_a_topic_id_first_learned_changes_nothing(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    consumer = IdentifiedConsumer(broker, TOPIC)
    consumer._client.cluster.ids = {}
    loop = loop_on(consumer, processor_on(member_db, broker), clock)
    loop.poll_once()
    consumer._client.cluster.ids[TOPIC] = "id-1"  # metadata arrives
    broker.append(TOPIC, profile_insert(3), b"k", [("ce_id", b"e3")])
    loop.poll_once()
    assert consumer.commits == [3, 4]


class FlakyConsumer(FakeConsumer):
    """Its first `failures` polls raise, as kafka-python's does when every broker is gone
    and the group coordinator cannot be found."""

    def __init__(self, broker: FakeBroker, topic: str, failures: int) -> None:
        super().__init__(broker, topic)
        self.failures = failures

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Message]]:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("[Errno 104] Connection reset by peer")
        return super().poll(timeout_ms, max_records)


def test_polls_that_raise_are_retried_and_the_worker_carries_on(
    broker: FakeBroker, member_db: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = FlakyConsumer(broker, TOPIC, failures=3)
    loop = loop_on(consumer, processor_on(member_db, broker), clock)
    with caplog.at_level(logging.INFO, logger="shared.messaging.consumer"):
        for _ in range(4):
            loop.poll_once()
    assert consumer.committed == 3 and len(stored_users(member_db)) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.messaging.consumer"]
    assert len(lines) == 2, lines  # one when the failures start, one when they end
    assert "failed" in lines[0] and "again" in lines[1]


def test_a_worker_told_to_stop_while_polls_fail_stops_and_closes(
    broker: FakeBroker, member_db: Database, clock: FakeClock
) -> None:
    consumer = FlakyConsumer(broker, TOPIC, failures=10**6)
    stop = threading.Event()
    loop = loop_on(consumer, processor_on(member_db, broker), clock, stop)
    runner = threading.Thread(target=loop.run)
    runner.start()
    stop.set()
    runner.join(5)
    assert not runner.is_alive() and consumer.closed
