"""The pipelined consumer loop (`ConsumerLoop(pipelined=True)`, the batch worker's): poll
N+1 is fetched and decoded while poll N is applied on the applier's thread, and N is
settled (counted, committed, its partitions sent back) before N+1 is handed over, minus
the partitions N sent back.

What these tests hold it to: an offset is committed only once its batch's transaction
committed, never while the batch is being applied; a partition that N sends back is not
applied from N+1 (what was polled of it meanwhile is dropped, read again after the
backoff, applied once, in order) while the other partitions flow; a stop settles the
batch in flight; an error escaping `apply` surfaces as it does unpipelined; and a long
stream ends in the same state, with the same offsets, as the unpipelined loop's.

No sleeps: a batch is held in its handler on a threading.Event, and what the loop does
meanwhile is watched from inside the fake consumer's `poll` (`during_poll`), which the
loop calls on its own thread while the batch is applied on the applier's. What counts as
applied is what a transaction committed (SQLAlchemy's after_commit), never what a
handler was merely called with. Time is a FakeClock, the backoff one second.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import CommitFailedError, IllegalStateError
from kafka.structs import TopicPartition
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from member_service.handlers import on_profile_insert
from member_service.models import Base as MemberBase
from member_service.models import ProcessedEvent, User
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.kafka import Message
from shared.messaging.pipeline import PROFILE_DELETE, PROFILE_INSERT, ProfileDelete, ProfileInsert
from shared.messaging.processor import EventProcessor, Outcome, Route, Summary
from shared.storage.db import Database, UnitOfWork
from tests.fakes import FakeBroker, FakeClock
from tests.schema import create_tables

INSERT = PROFILE_INSERT.name
DELETE = PROFILE_DELETE.name
TOPIC_NUMBER = {INSERT: 1, DELETE: 2}
TOPIC_NAMED = {number: topic for topic, number in TOPIC_NUMBER.items()}
BACKOFF = 1.0

Position = tuple[str, int, int]  # (topic, partition, offset) of a record's first copy


# --- records ------------------------------------------------------------------------------


def uuid_at(topic: str, partition: int, offset: int) -> str:
    """The member uuid of the event first written at this position (it names it)."""
    return f"00000000-0000-4000-8000-{TOPIC_NUMBER[topic]}{partition:03d}{offset:08d}"


def position_in(uuid: str) -> Position:
    tail = uuid.rsplit("-", 1)[1]
    return TOPIC_NAMED[int(tail[0])], int(tail[1:4]), int(tail[4:])


def record(topic: str, partition: int, offset: int, first: int | None = None) -> Message:
    """The record at `offset`: a new event, or (`first`) the same event as the record at
    offset `first` of this partition, sent again by its producer (same value, same ce_id)."""
    origin = offset if first is None else first
    uuid = uuid_at(topic, partition, origin)
    if topic == INSERT:
        document: dict[str, Any] = {
            "uuid": uuid,
            "role": "USER",
            "nickname": f"n{uuid[-12:]}",
            "favoriteStyles": [1],
        }
    else:
        document = {"uuid": uuid}
    ce_id = f"{topic}/{partition}/{origin}".encode()
    return Message(
        topic, b"k", json.dumps(document).encode(), [("ce_id", ce_id)], partition, offset
    )


def origin_of(message: Message) -> Position:
    topic, partition, offset = (message.header("ce_id") or "").split("/")
    return topic, int(partition), int(offset)


def stream(topic: str, partition: int, size: int) -> list[Message]:
    return [record(topic, partition, offset) for offset in range(size)]


# --- a fake consumer on several partitions --------------------------------------------------


class Metadata:
    """kafka-python's cluster metadata, as far as topic ids go."""

    def __init__(self) -> None:
        self.ids = {INSERT: "insert-1", DELETE: "delete-1"}

    def topic_id(self, topic: str) -> str | None:
        return self.ids.get(topic)


class Client:
    def __init__(self) -> None:
        self.cluster = Metadata()


class Coordinator:
    def __init__(self) -> None:
        self.rejoins = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


class Consumer:
    """The calls ConsumerLoop makes, on partitions of one or more topics, at most
    `per_poll` records of each partition a poll. Strict as kafka-python 3 is: seeking a
    partition not assigned raises ValueError ("Unassigned partition"), pausing or resuming
    one IllegalStateError, committing one fails as a commit after a rebalance does.

    `during_poll(n)` runs inside the n-th poll, before it fetches: on the loop's thread,
    while the batch polled before is being applied on the applier's. `on_commit` sees
    every commit before it lands. `revoke`/`assign` stand in for a rebalance (a partition
    assigned again starts unpaused, from its committed offset)."""

    def __init__(self, logs: dict[TopicPartition, list[Message]], per_poll: int = 2) -> None:
        self.logs = logs
        self.per_poll = per_poll
        self.position_of = dict.fromkeys(logs, 0)
        self.assigned = set(logs)
        self.paused: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.fetched: list[dict[TopicPartition, list[int]]] = []  # the offsets of each poll
        self.during_poll: Callable[[int], None] | None = None
        self.on_commit: Callable[[dict[TopicPartition, int]], None] | None = None
        self.closed = False
        self._client = Client()
        self._coordinator = Coordinator()

    def _check(self, *partitions: TopicPartition) -> None:
        missing = set(partitions) - self.assigned
        if missing:
            raise IllegalStateError(f"No current assignment for partition {missing}")

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Message]]:
        if self.during_poll is not None:
            self.during_poll(len(self.fetched) + 1)
        batch = {}
        for partition in sorted(self.assigned - self.paused):
            at = self.position_of[partition]
            records = self.logs[partition][at : at + self.per_poll]
            self.position_of[partition] += len(records)
            if records:
                batch[partition] = records
        self.fetched.append({p: [m.offset for m in records] for p, records in batch.items()})
        return batch

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self.assigned:
            raise ValueError("Unassigned partition")  # kafka-python 3's KafkaConsumer.seek
        self.position_of[partition] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._check(*partitions)
        for partition in partitions:
            self.position_of[partition] = 0

    def pause(self, *partitions: TopicPartition) -> None:
        self._check(*partitions)
        self.paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._check(*partitions)
        self.paused -= set(partitions)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if set(offsets) - self.assigned:
            raise CommitFailedError("the group rebalanced: partition no longer assigned")
        plain = {partition: meta.offset for partition, meta in offsets.items()}
        if self.on_commit is not None:
            self.on_commit(plain)
        self.committed |= plain
        self.commits.append(plain)

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int:
        self._check(partition)
        return self.position_of[partition]

    def highwater(self, partition: TopicPartition) -> int:
        return len(self.logs[partition])

    def close(self, autocommit: bool = True) -> None:
        self.closed = True

    def revoke(self, *partitions: TopicPartition) -> None:
        self.assigned -= set(partitions)
        self.paused -= set(partitions)

    def drained(self) -> bool:
        return all(self.committed.get(p) == len(log) for p, log in self.logs.items())


# --- a member worker reading two topics, with recording handlers ----------------------------


class Faults:
    """Exceptions a handler raises, in turn, each time it meets the event first written at
    a position (met again after the last: no more failures)."""

    def __init__(self, planned: Mapping[Position, Sequence[Exception]] | None = None) -> None:
        self.planned = {position: list(raised) for position, raised in (planned or {}).items()}

    def meet(self, position: Position) -> None:
        raised = self.planned.get(position)
        if raised:
            raise raised.pop(0)


def bug() -> RuntimeError:
    return RuntimeError("a bug in the handler")


def database_gone() -> OperationalError:
    return OperationalError("INSERT ...", {}, Exception("server closed the connection"))


class Worker:
    """A member worker reading `profile-insert` (one event at a time: the real handler) and
    `profile-delete` (a batch handler), on a SQLite file. `applied`: the position of every
    event whose transaction committed, in commit order; `hold(position)` runs on the
    applier's thread as a handler meets an event (before its fault, if any)."""

    def __init__(self, database: Database, broker: FakeBroker, faults: Faults) -> None:
        self.database = database
        self.broker = broker
        self.faults = faults
        self.applied: list[Position] = []
        self.hold: Callable[[Position], None] | None = None
        event.listen(database.sessions, "after_commit", self._committed)

    def _committed(self, session: Session) -> None:
        self.applied.extend(session.info.pop("applied", []))

    def _meet(self, uuid: str, uow: UnitOfWork) -> None:
        position = position_in(uuid)
        if self.hold is not None:
            self.hold(position)
        self.faults.meet(position)
        uow.session.info.setdefault("applied", []).append(position)

    def on_insert(self, event: ProfileInsert, uow: UnitOfWork) -> Summary | None:
        self._meet(event.uuid, uow)
        return on_profile_insert(event, uow)

    def on_deletes(self, events: Sequence[ProfileDelete], uow: UnitOfWork) -> list[None]:
        for deleted in events:
            self._meet(deleted.uuid, uow)
        return [None] * len(events)

    def processor(self) -> EventProcessor:
        routes = (
            Route(PROFILE_INSERT, self.on_insert),
            Route(PROFILE_DELETE, batch=self.on_deletes),
        )
        return EventProcessor(routes, self.database, ProcessedEvent, self.broker.producer())

    def applied_in(self, partition: TopicPartition) -> list[int]:
        return [o for t, p, o in self.applied if (t, p) == (partition.topic, partition.partition)]


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """Fresh member databases (SQLite files), disposed after the test."""
    made: list[Database] = []

    def make() -> Database:
        database = Database.from_url(
            f"sqlite:///{tmp_path / f'member{len(made)}.db'}", MemberBase.metadata
        )
        create_tables(database)
        made.append(database)
        return database

    yield make
    for database in made:
        database.engine.dispose()


def pipelined_loop(
    consumer: Consumer,
    worker: Worker,
    clock: FakeClock,
    stop: threading.Event | None = None,
    *,
    pipelined: bool = True,
) -> ConsumerLoop:
    return ConsumerLoop(
        consumer,
        worker.processor(),
        stop,
        clock=clock,
        backoff=lambda attempt: BACKOFF,
        pipelined=pipelined,
    )


def finish(loop: ConsumerLoop) -> None:
    """Stop the loop the way a worker does (settle what is in flight, close)."""
    loop.stop.set()
    loop.run()


def watch_commits(consumer: Consumer, worker: Worker, exempt: set[Position]) -> list[str]:
    """What went wrong at a commit, as it lands: a committed offset that passes a record
    whose event is not committed in the database (nor `exempt`: dead-lettered)."""
    wrong: list[str] = []

    def check(offsets: dict[TopicPartition, int]) -> None:
        applied = set(worker.applied)
        for partition, offset in offsets.items():
            for message in consumer.logs[partition][:offset]:
                origin = origin_of(message)
                if origin not in applied and origin not in exempt:
                    wrong.append(
                        f"{partition.topic}[{partition.partition}] committed to "
                        f"{offset} before {origin} was applied"
                    )

    consumer.on_commit = check
    return wrong


def drain(loop: ConsumerLoop, consumer: Consumer, clock: FakeClock, limit: int = 500) -> int:
    """Poll, a second of fake time apart, until every partition is committed to its end;
    the polls it took."""
    for polls in range(limit):
        if consumer.drained():
            return polls
        loop.poll_once()
        clock.advance(BACKOFF)
    raise AssertionError(f"not drained after {limit} polls: {consumer.committed}")


P0 = TopicPartition(INSERT, 0)
P1 = TopicPartition(DELETE, 0)
P2 = TopicPartition(DELETE, 1)


# --- 1. offsets after the DB commit, never for a batch being applied ------------------------


def test_a_batch_s_offsets_are_committed_after_its_transaction_never_while_it_is_applied(
    databases: Callable[[], Database],
) -> None:
    worker = Worker(databases(), FakeBroker(), Faults())
    consumer = Consumer({P0: stream(INSERT, 0, 6)}, per_poll=3)
    wrong = watch_commits(consumer, worker, exempt=set())
    entered, released = threading.Event(), threading.Event()

    def hold_the_first_batch(position: Position) -> None:
        if position == (INSERT, 0, 0):
            entered.set()
            assert released.wait(5), "the test never released the first batch"

    worker.hold = hold_the_first_batch
    seen_meanwhile: list[Any] = []

    def meanwhile(poll: int) -> None:
        if poll == 2:  # the first batch is still in its transaction
            seen_meanwhile.append((dict(consumer.committed), list(worker.applied)))
            released.set()

    consumer.during_poll = meanwhile
    loop = pipelined_loop(consumer, worker, FakeClock())

    loop.poll_once()  # the first batch (0-2) is handed over and held in its handler
    assert entered.wait(5)
    assert consumer.commits == []
    loop.poll_once()  # 3-5 fetched while 0-2 is applied; then 0-2 settled, 3-5 handed over

    assert seen_meanwhile == [({}, [])]  # polled again: nothing of 0-2 committed yet
    assert consumer.fetched == [{P0: [0, 1, 2]}, {P0: [3, 4, 5]}]
    assert consumer.commits == [{P0: 3}]  # 0-2 settled; 3-5 is in flight, not committed
    loop.poll_once()  # nothing new: 3-5 settled
    assert consumer.commits == [{P0: 3}, {P0: 6}]
    assert wrong == []  # each commit found its records' transaction committed
    assert worker.applied_in(P0) == [0, 1, 2, 3, 4, 5]
    assert loop.counts[Outcome.APPLIED] == 6
    finish(loop)


def test_the_last_batch_in_flight_is_settled_by_the_next_poll_even_an_empty_one(
    databases: Callable[[], Database],
) -> None:
    worker = Worker(databases(), FakeBroker(), Faults())
    consumer = Consumer({P0: stream(INSERT, 0, 2)})
    loop = pipelined_loop(consumer, worker, FakeClock())

    loop.poll_once()
    assert consumer.commits == []  # handed over, not settled
    loop.poll_once()  # polls nothing, settles

    assert consumer.commits == [{P0: 2}]
    assert consumer.fetched == [{P0: [0, 1]}, {}]
    finish(loop)


# --- 2. a partition sent back is not applied from the next batch ---------------------------


@pytest.mark.parametrize(
    ("faults", "sent_back", "retry_at"),
    [
        pytest.param(
            {(INSERT, 0, 1): [bug(), bug()]},  # the batch, then the record alone
            {P0},
            {P0: 1},
            id="a-handler-bug-sends-back-its-partition",
        ),
        pytest.param(
            {(INSERT, 0, 1): [database_gone()]},
            {P0, P1},
            {P0: 0, P1: 0},
            id="a-transient-failure-sends-back-the-whole-batch",
        ),
    ],
)
def test_a_partition_sent_back_is_dropped_from_the_next_batch_and_applied_once_in_order(
    databases: Callable[[], Database],
    caplog: pytest.LogCaptureFixture,
    faults: dict[Position, list[Exception]],
    sent_back: set[TopicPartition],
    retry_at: dict[TopicPartition, int],
) -> None:
    """Batch A is P0 0-1 and P1 0-1; P0@1 fails. While A is applied, B is polled: P0 2-3,
    P1 2-3, and P2 0-1 (which arrived meanwhile). What A sent back must not be applied
    from B: it waits out its backoff, then comes again from its record, once, in order."""
    worker = Worker(databases(), FakeBroker(), Faults(faults))
    late = stream(DELETE, 1, 6)
    consumer = Consumer({P0: stream(INSERT, 0, 6), P1: stream(DELETE, 0, 6), P2: []})
    consumer.during_poll = lambda poll: consumer.logs[P2].extend(late) if poll == 2 else None
    wrong = watch_commits(consumer, worker, exempt=set())
    clock = FakeClock()
    loop = pipelined_loop(consumer, worker, clock)

    with caplog.at_level(logging.CRITICAL, logger="shared.messaging.processor"):
        loop.poll_once()  # A handed over
        loop.poll_once()  # B fetched; A settled: sent back; B handed over without it

        assert consumer.fetched[1] == {P0: [2, 3], P1: [2, 3], P2: [0, 1]}
        assert consumer.paused == sent_back
        assert {p: consumer.position_of[p] for p in sent_back} == retry_at
        loop.poll_once()  # within the backoff: B settled, C (what flows) handed over
        for partition in sent_back:  # nothing of it applied past its retry point
            assert worker.applied_in(partition) == list(range(retry_at[partition]))
        assert consumer.committed[P2] == 2  # the partition A did not hold flowed
        assert consumer.paused == sent_back

        polls = drain(loop, consumer, clock)

    assert wrong == []
    for partition in (P0, P1, P2):
        assert worker.applied_in(partition) == list(range(6)), partition
    assert consumer.committed == {P0: 6, P1: 6, P2: 6}
    assert loop.counts == {Outcome.APPLIED: 18, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 0}
    assert loop.attempt_of(P0, 1) == 1  # the partition moved on: its tries forgotten
    assert polls < 20
    finish(loop)


# --- 3. stopping, and errors ------------------------------------------------------------------


def test_run_with_stop_set_settles_the_batch_in_flight_before_closing(
    databases: Callable[[], Database],
) -> None:
    worker = Worker(databases(), FakeBroker(), Faults())
    consumer = Consumer({P0: stream(INSERT, 0, 3), P1: stream(DELETE, 0, 2)}, per_poll=5)
    stop = threading.Event()
    loop = pipelined_loop(consumer, worker, FakeClock(), stop)
    loop.poll_once()  # handed over, in flight
    assert consumer.commits == []

    stop.set()
    loop.run()

    assert consumer.commits == [{P0: 3, P1: 2}]
    assert consumer.closed
    assert len(consumer.fetched) == 1  # run polled nothing more once told to stop
    assert loop.counts[Outcome.APPLIED] == 5


def test_a_stop_set_by_a_batch_being_applied_leaves_everything_fetched_committed(
    databases: Callable[[], Database],
) -> None:
    """The stop comes from the applier's thread while the loop polls on: whichever poll
    the loop was in, what it fetched is applied and committed before it closes."""
    worker = Worker(databases(), FakeBroker(), Faults())
    consumer = Consumer({P0: stream(INSERT, 0, 9), P1: stream(DELETE, 0, 9)}, per_poll=2)
    stop = threading.Event()
    worker.hold = lambda position: stop.set() if position == (DELETE, 0, 2) else None
    loop = pipelined_loop(consumer, worker, FakeClock(), stop)

    loop.run()

    assert consumer.closed
    assert len(consumer.fetched) in (2, 3)  # stopped while the second batch was applied
    assert consumer.committed == consumer.position_of
    for partition in (P0, P1):
        assert worker.applied_in(partition) == list(range(consumer.committed[partition]))


class Escaped(Exception):
    """Something `apply` does not turn into a report (it never should)."""


@pytest.mark.parametrize("pipelined", [False, True], ids=["unpipelined", "pipelined"])
def test_an_error_escaping_apply_surfaces_from_the_loop_and_nothing_is_committed(
    databases: Callable[[], Database], pipelined: bool
) -> None:
    worker = Worker(databases(), FakeBroker(), Faults())
    consumer = Consumer({P0: stream(INSERT, 0, 4)})
    loop = pipelined_loop(consumer, worker, FakeClock(), pipelined=pipelined)

    def escapes(*args: Any) -> Any:
        raise Escaped("from apply")

    loop._processor.apply = escapes  # type: ignore[method-assign, assignment]

    if pipelined:
        loop.poll_once()  # handed over: the error waits in its future
        with pytest.raises(Escaped):
            loop.settle_in_flight()
        assert loop.settle_in_flight() == set()  # raised once; nothing left in flight
        loop.poll_once()
        with pytest.raises(Escaped):
            loop.poll_once()  # settling the batch before it
    else:
        with pytest.raises(Escaped):
            loop.poll_once()
    consumer.position_of[P0] = 0  # read again: run hands the poll over, then settles it
    with pytest.raises(Escaped):
        loop.run()  # out of run too, which still closes the consumer

    assert consumer.commits == []
    assert consumer.closed


# --- 4. a long stream: once, in order, as the unpipelined loop ---------------------------------


LONG_STREAM_FAULTS: dict[Position, list[Exception]] = {
    (INSERT, 0, 12): [bug(), bug()],
    (DELETE, 1, 40): [bug(), bug(), bug()],
    (INSERT, 2, 77): [database_gone()],
    (DELETE, 0, 120): [database_gone(), bug(), bug()],
    (INSERT, 1, 149): [bug()],
}
POISON: Position = (DELETE, 2, 50)


def long_stream(seed: int = 18) -> dict[TopicPartition, list[Message]]:
    """Three partitions of each topic, 150 to 190 records each, about one in twenty the
    same event as one of the ten before it again (a producer's retry), and at `POISON` a
    record that is not JSON. Faults and the poison fall on events' first copies."""
    chance = random.Random(seed)
    firsts = {*LONG_STREAM_FAULTS, POISON}
    logs: dict[TopicPartition, list[Message]] = {}
    for topic in (INSERT, DELETE):
        for number in range(3):
            log: list[Message] = []
            for offset in range(chance.randrange(150, 190)):
                earlier = [
                    m.offset
                    for m in log[-10:]
                    if origin_of(m) == (topic, number, m.offset) and origin_of(m) != POISON
                ]
                if earlier and (topic, number, offset) not in firsts and chance.random() < 0.05:
                    log.append(record(topic, number, offset, first=chance.choice(earlier)))
                else:
                    log.append(record(topic, number, offset))
            logs[TopicPartition(topic, number)] = log
    topic, number, offset = POISON
    good = logs[TopicPartition(topic, number)][offset]
    logs[TopicPartition(topic, number)][offset] = Message(
        topic, b"k", b"{not json", good.headers, number, offset
    )
    return logs


def run_the_long_stream(database: Database, pipelined: bool) -> dict[str, Any]:
    logs, dead = long_stream(), {POISON}
    broker = FakeBroker()
    faults = Faults(LONG_STREAM_FAULTS)
    worker = Worker(database, broker, faults)
    consumer = Consumer(logs, per_poll=7)
    wrong = watch_commits(consumer, worker, exempt=dead)
    clock = FakeClock()
    loop = pipelined_loop(consumer, worker, clock, pipelined=pipelined)
    drain(loop, consumer, clock)
    finish(loop)
    with database.sessions() as session:
        users = set(session.scalars(select(User.uuid)))
        inbox = set(session.execute(select(ProcessedEvent.event_id, ProcessedEvent.topic)))
    expected = {  # each event once, where it first came, in offset order
        partition: list(dict.fromkeys(origin_of(m)[2] for m in log if origin_of(m) not in dead))
        for partition, log in logs.items()
    }
    return {
        "wrong commits": wrong,
        "applied in order": {p: worker.applied_in(p) == expected[p] for p in logs},
        "applied once": len(worker.applied) == len(set(worker.applied)),
        "applied": len(worker.applied),
        "faults left": [position for position, left in faults.planned.items() if left],
        "committed": consumer.committed,
        "ends": {partition: len(log) for partition, log in logs.items()},
        "counts": loop.counts,
        "topic counts": loop.topic_counts,
        "users": users,
        "inbox": inbox,
        "dead letters": [
            m.header("ce_id") for topic in sorted(broker.topics) for m in broker.topics[topic]
        ],
    }


def test_a_long_stream_is_applied_once_in_order_and_ends_as_the_unpipelined_loop_does(
    databases: Callable[[], Database], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.CRITICAL, logger="shared.messaging.processor"):
        pipelined = run_the_long_stream(databases(), pipelined=True)
        unpipelined = run_the_long_stream(databases(), pipelined=False)

    assert pipelined["wrong commits"] == []
    assert all(pipelined["applied in order"].values()), pipelined["applied in order"]
    assert pipelined["applied once"]
    assert pipelined["committed"] == pipelined["ends"]
    assert pipelined["dead letters"] == [f"{DELETE}/2/50"]
    assert pipelined["counts"][Outcome.DUPLICATE] > 20  # the producer's retries
    assert pipelined["faults left"] == []  # every planned failure happened
    assert pipelined == unpipelined


# --- found by these tests, fixed: the pipelined loop's settling after the overlapping poll --


def test_a_partition_revoked_by_the_overlapping_poll_and_sent_back_is_let_go_not_a_crash(
    databases: Callable[[], Database], caplog: pytest.LogCaptureFixture
) -> None:
    """Unpipelined, nothing polls between apply and settle, so the assignment cannot change
    in between; pipelined, the next poll does, and a rebalance may take away a partition
    the batch in flight then sends back. Its new owner starts from the committed offset:
    the old owner has nothing to seek, pause or resume (as `_resume_due` already knows)."""
    worker = Worker(databases(), FakeBroker(), Faults({(INSERT, 0, 1): [bug(), bug()]}))
    consumer = Consumer({P0: stream(INSERT, 0, 4), P1: stream(DELETE, 0, 4)})
    consumer.during_poll = lambda poll: consumer.revoke(P0) if poll == 2 else None
    clock = FakeClock()
    loop = pipelined_loop(consumer, worker, clock)

    with caplog.at_level(logging.CRITICAL):
        loop.poll_once()
        loop.poll_once()  # P0 revoked during this poll; A then sends P0 back
        for _ in range(3):
            loop.poll_once()
            clock.advance(BACKOFF)

    assert consumer.committed[P1] == 4  # the partition still ours flowed
    assert P0 not in consumer.paused
    finish(loop)


def test_a_partition_sent_back_is_dropped_also_when_another_topic_was_created_again(
    databases: Callable[[], Database], caplog: pytest.LogCaptureFixture
) -> None:
    """poll_once settles the batch in flight itself when a topic was created again, and
    throws away the partitions it sent back; `_hand_over` then settles nothing and hands
    the sent-back partition's later records over: applied before the record sent back,
    and committed past it (a crash then loses that record for good)."""
    worker = Worker(databases(), FakeBroker(), Faults({(DELETE, 0, 1): [bug(), bug()]}))
    consumer = Consumer({P0: stream(INSERT, 0, 4), P1: stream(DELETE, 0, 4)})
    consumer.during_poll = lambda poll: (
        consumer._client.cluster.ids.update({INSERT: "insert-2"}) if poll == 2 else None
    )
    wrong = watch_commits(consumer, worker, exempt=set())
    clock = FakeClock()
    loop = pipelined_loop(consumer, worker, clock)

    with caplog.at_level(logging.CRITICAL):
        drain(loop, consumer, clock)

    assert consumer._coordinator.rejoins == 1  # profile-insert was read again
    assert wrong == []
    assert worker.applied_in(P1) == [0, 1, 2, 3]
    finish(loop)
