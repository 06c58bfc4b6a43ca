"""One worker, one consumer group, several topics (issue 17): each record goes to its own
topic's schema and handler, a poll mixing the topics is one transaction, and whatever is
said of a record (its dead-letter topic, its counters) names its own topic."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from member_service.handlers import on_profile_insert
from member_service.models import Base as MemberBase
from member_service.models import OutboxEvent, ProcessedEvent, User
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.kafka import Message
from shared.messaging.pipeline import (
    PARTNER_CREATED,
    PROFILE_DELETE,
    PROFILE_INSERT,
    TOPICS,
    ProfileDelete,
    ProfileInsert,
)
from shared.messaging.processor import EventProcessor, Outcome, Route, Summary
from shared.runtime import WorkerSpec, process_topics
from shared.storage.db import Database, UnitOfWork
from shared.telemetry.metrics import exposition
from tests.fakes import FakeBroker, FakeClock, FakeConsumer
from tests.schema import create_tables

INSERT = PROFILE_INSERT.name
DELETE = PROFILE_DELETE.name


def uuid_of(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


def insert_value(number: int) -> bytes:
    document = {"uuid": uuid_of(number), "role": "USER", "nickname": f"u{number}"}
    return json.dumps(document | {"favoriteStyles": [1]}).encode()


def delete_value(number: int) -> bytes:
    return json.dumps({"uuid": uuid_of(number)}).encode()


class Recorder:
    """The two handlers of a member worker reading `profile-insert` and `profile-delete`:
    what each was given, and in which transaction."""

    def __init__(self, fail_delete_of: str | None = None) -> None:
        self.calls: list[tuple[str, Any, int]] = []
        self.fail_delete_of = fail_delete_of

    def on_insert(self, event: ProfileInsert, uow: UnitOfWork) -> Summary | None:
        self.calls.append((INSERT, event, id(uow)))
        return on_profile_insert(event, uow)

    def on_delete(self, event: ProfileDelete, uow: UnitOfWork) -> Summary | None:
        self.calls.append((DELETE, event, id(uow)))
        if event.uuid == self.fail_delete_of:
            raise RuntimeError("a bug in the delete handler")
        return Summary("profile deleted")

    def routes(self) -> tuple[Route[Any], ...]:
        return (Route(PROFILE_INSERT, self.on_insert), Route(PROFILE_DELETE, self.on_delete))


@pytest.fixture
def member_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'member.db'}", MemberBase.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


def processor_on(database: Database, broker: FakeBroker, recorder: Recorder) -> EventProcessor:
    return EventProcessor(recorder.routes(), database, ProcessedEvent, broker.producer())


def inbox(database: Database) -> set[tuple[str, str, str]]:
    with database.sessions() as session:
        rows = session.execute(
            select(ProcessedEvent.consumer, ProcessedEvent.event_id, ProcessedEvent.topic)
        )
        return {tuple(row) for row in rows}  # type: ignore[misc]


def users(database: Database) -> set[str]:
    with database.sessions() as session:
        return set(session.scalars(select(User.uuid)))


def fill(broker: FakeBroker) -> None:
    """profile-insert: 1, 2; profile-delete: 1, one that fails its schema, 3."""
    for number in (1, 2):
        broker.append(INSERT, insert_value(number), b"k", [("ce_id", b"insert-%d" % number)])
    broker.append(DELETE, delete_value(1), b"k", [("ce_id", b"delete-1")])
    broker.append(DELETE, b'{"uuid": "not a uuid"}', b"k", [("ce_id", b"bad-delete")])
    broker.append(DELETE, delete_value(3), b"k", [("ce_id", b"delete-3")])


def test_one_poll_of_two_topics_goes_through_each_topics_handler_in_one_transaction(
    member_db: Database,
) -> None:
    broker = FakeBroker()
    fill(broker)
    recorder = Recorder()
    processor = processor_on(member_db, broker, recorder)
    insert_p, delete_p = TopicPartition(INSERT, 0), TopicPartition(DELETE, 0)

    report = processor.apply({insert_p: broker.topics[INSERT], delete_p: broker.topics[DELETE]})

    assert [(topic, type(event)) for topic, event, _ in recorder.calls] == [
        (INSERT, ProfileInsert),
        (INSERT, ProfileInsert),
        (DELETE, ProfileDelete),
        (DELETE, ProfileDelete),
    ]
    assert [event.uuid for _, event, _ in recorder.calls] == [uuid_of(n) for n in (1, 2, 1, 3)]
    assert len({transaction for _, _, transaction in recorder.calls}) == 1  # one transaction
    assert report.by_topic == {
        INSERT: [Outcome.APPLIED, Outcome.APPLIED],
        DELETE: [Outcome.APPLIED, Outcome.APPLIED, Outcome.DEAD_LETTERED],
    }
    assert report.partitions[insert_p].commit_to == 2
    assert report.partitions[delete_p].commit_to == 3
    # The bad record of profile-delete is parked on profile-delete's DLT, not insert's.
    [dead] = broker.topics[PROFILE_DELETE.dead_letter]
    assert dead.value == b'{"uuid": "not a uuid"}'
    assert dead.header("dlt-original-topic") == DELETE
    assert "profile-delete schema" in (dead.header("dlt-error") or "")
    assert broker.topics[PROFILE_INSERT.dead_letter] == []
    # One inbox for the group, each row naming its event's topic.
    assert inbox(member_db) == {
        ("member-service", "insert-1", INSERT),
        ("member-service", "insert-2", INSERT),
        ("member-service", "delete-1", DELETE),
        ("member-service", "delete-3", DELETE),
    }
    assert users(member_db) == {uuid_of(1), uuid_of(2)}


def test_redelivered_records_of_both_topics_are_duplicates_and_positions_stay_apart(
    member_db: Database,
) -> None:
    """Without a ce_id an event is known by its position, which names its topic: offset 0
    of partition 0 of each topic are two events, not one."""
    broker = FakeBroker()
    broker.append(INSERT, insert_value(7), b"k", [])
    broker.append(DELETE, delete_value(8), b"k", [])
    recorder = Recorder()
    processor = processor_on(member_db, broker, recorder)
    batch = {
        TopicPartition(INSERT, 0): broker.topics[INSERT],
        TopicPartition(DELETE, 0): broker.topics[DELETE],
    }

    first = processor.apply(batch)
    again = processor.apply(batch)

    assert first.by_topic == {INSERT: [Outcome.APPLIED], DELETE: [Outcome.APPLIED]}
    assert again.by_topic == {INSERT: [Outcome.DUPLICATE], DELETE: [Outcome.DUPLICATE]}
    assert len(recorder.calls) == 2
    assert {event_id for _, event_id, _ in inbox(member_db)} == {
        f"{INSERT}:0:0",
        f"{DELETE}:0:0",
    }


class TwoTopicConsumer:
    """One consumer in one group assigned partition 0 of each of several topics: a
    FakeConsumer per topic behind the calls ConsumerLoop makes."""

    def __init__(self, broker: FakeBroker, topics: list[str]) -> None:
        self.parts = {topic: FakeConsumer(broker, topic) for topic in topics}
        self.closed = False

    def _of(self, partition: TopicPartition) -> FakeConsumer:
        return self.parts[partition.topic]

    def assignment(self) -> set[Any]:
        return {tp for part in self.parts.values() for tp in part.assignment()}

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Message]]:
        records: dict[Any, list[Message]] = {}
        for part in self.parts.values():
            records.update(part.poll(timeout_ms, max_records))
        return records

    def pause(self, *partitions: TopicPartition) -> None:
        for partition in partitions:
            self._of(partition).pause(partition)

    def resume(self, *partitions: TopicPartition) -> None:
        for partition in partitions:
            self._of(partition).resume(partition)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._of(partition).seek(partition, offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for partition in partitions:
            self._of(partition).seek_to_beginning(partition)

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int:
        return self._of(partition).position(partition, timeout_ms)

    def highwater(self, partition: TopicPartition) -> int:
        return self._of(partition).highwater(partition)

    def commit(self, offsets: dict[Any, Any]) -> None:
        for topic, part in self.parts.items():
            mine = {tp: at for tp, at in offsets.items() if tp.topic == topic}
            if mine:
                part.commit(mine)

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition()[0].decode())
        for sample in family.samples
    }


def counted(before: dict[Any, float], after: dict[Any, float], topic: str) -> dict[str, float]:
    names = ("consumed", "applied", "duplicate", "dead_lettered", "retried")
    series = {name: f"signup_events_{name}_total" for name in names}
    series["handled"] = "signup_event_handler_duration_seconds_count"
    label = (("topic", topic),)
    return {
        name: after.get((metric, label), 0.0) - before.get((metric, label), 0.0)
        for name, metric in series.items()
    }


def test_the_loop_commits_each_topics_offsets_and_counts_each_record_under_its_topic(
    member_db: Database,
) -> None:
    broker = FakeBroker()
    fill(broker)
    processor = processor_on(member_db, broker, Recorder())
    consumer = TwoTopicConsumer(broker, [INSERT, DELETE])
    loop = ConsumerLoop(consumer, processor, clock=FakeClock())
    before = scrape()

    loop.poll_once()

    after = scrape()
    assert consumer.parts[INSERT].commits == [2]
    assert consumer.parts[DELETE].commits == [3]
    assert counted(before, after, INSERT) == {
        "consumed": 2,
        "applied": 2,
        "duplicate": 0,
        "dead_lettered": 0,
        "retried": 0,
        "handled": 2,
    }
    assert counted(before, after, DELETE) == {
        "consumed": 3,
        "applied": 2,
        "duplicate": 0,
        "dead_lettered": 1,
        "retried": 0,
        "handled": 2,
    }
    assert loop.topic_counts == {
        INSERT: {Outcome.APPLIED: 2, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 0},
        DELETE: {Outcome.APPLIED: 2, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 1},
    }
    for topic in (INSERT, DELETE):
        assert ("signup_consumer_lag", (("partition", "0"), ("topic", topic))) in after


def test_a_bug_on_one_topic_retries_only_its_partition_then_parks_it_on_its_own_dlt(
    member_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker()
    broker.append(INSERT, insert_value(1), b"k", [("ce_id", b"insert-1")])
    broker.append(DELETE, delete_value(5), b"k", [("ce_id", b"delete-5")])
    broker.append(DELETE, delete_value(6), b"k", [("ce_id", b"delete-6")])
    recorder = Recorder(fail_delete_of=uuid_of(5))
    processor = processor_on(member_db, broker, recorder)
    consumer = TwoTopicConsumer(broker, [INSERT, DELETE])
    clock = FakeClock()
    loop = ConsumerLoop(consumer, processor, clock=clock, backoff=float)
    before = scrape()

    with caplog.at_level(logging.CRITICAL, logger="shared.messaging.processor"):
        loop.poll_once()  # the batch fails; record by record, insert-1 goes in
        assert consumer.parts[INSERT].commits == [1]
        assert consumer.parts[DELETE].commits == []
        assert consumer.parts[DELETE].paused and not consumer.parts[INSERT].paused
        for _ in range(4):  # attempts 2..5, each after its backoff
            clock.advance(10)
            loop.poll_once()

    assert consumer.parts[DELETE].commits == [2]
    [dead] = broker.topics[PROFILE_DELETE.dead_letter]
    assert (dead.header("ce_id"), dead.header("dlt-attempts")) == ("delete-5", "5")
    assert broker.topics[PROFILE_INSERT.dead_letter] == []
    counts = counted(before, scrape(), DELETE)
    assert (counts["retried"], counts["dead_lettered"], counts["applied"]) == (8, 1, 1)
    assert counted(before, scrape(), INSERT)["retried"] == 0


class Cluster:
    def __init__(self) -> None:
        self.ids = {INSERT: "insert-1", DELETE: "delete-1"}

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


def test_a_second_topic_created_again_is_read_again_alone(member_db: Database) -> None:
    broker = FakeBroker()
    broker.append(INSERT, insert_value(1), b"k", [("ce_id", b"insert-1")])
    broker.append(DELETE, delete_value(1), b"k", [("ce_id", b"delete-1")])
    consumer = TwoTopicConsumer(broker, [INSERT, DELETE])
    consumer._client = Client()  # type: ignore[attr-defined]
    consumer._coordinator = Coordinator()  # type: ignore[attr-defined]
    recorder = Recorder()
    loop = ConsumerLoop(consumer, processor_on(member_db, broker, recorder), clock=FakeClock())
    loop.poll_once()

    broker.topics[DELETE] = []  # profile-delete is created again, with new records
    broker.append(DELETE, delete_value(2), b"k", [("ce_id", b"delete-2")])
    broker.append(DELETE, delete_value(3), b"k", [("ce_id", b"delete-3")])
    consumer._client.cluster.ids[DELETE] = "delete-2"  # type: ignore[attr-defined]
    loop.poll_once()
    loop.poll_once()

    deleted = [event.uuid for topic, event, _ in recorder.calls if topic == DELETE]
    assert deleted == [uuid_of(1), uuid_of(2), uuid_of(3)]
    assert consumer.parts[INSERT].commits == [1]  # untouched
    assert consumer.parts[DELETE].commits == [1, 2]
    assert consumer._coordinator.rejoins == 1  # type: ignore[attr-defined]


def test_a_spec_reads_several_topics_of_one_group_and_names_every_topic_it_uses() -> None:
    recorder = Recorder()
    spec = WorkerSpec(routes=recorder.routes(), inbox=ProcessedEvent, outbox=OutboxEvent)

    assert spec.topics == (PROFILE_INSERT, PROFILE_DELETE)
    assert spec.consumer_group == "member-service"
    published = [t.name for t in TOPICS if t.producer == "member-service"]
    assert process_topics("member", spec) == [
        INSERT,
        f"{INSERT}.DLT",
        DELETE,
        f"{DELETE}.DLT",
        *published,
    ]
    assert PARTNER_CREATED.name in published


def test_a_spec_refuses_topics_of_different_groups_or_one_topic_twice() -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="different groups"):
        WorkerSpec(
            routes=(Route(PROFILE_INSERT, recorder.on_insert), Route(PARTNER_CREATED, print)),
            inbox=ProcessedEvent,
        )
    with pytest.raises(ValueError, match="routed twice"):
        WorkerSpec(routes=(Route(PROFILE_INSERT, recorder.on_insert),) * 2, inbox=ProcessedEvent)
    with pytest.raises(ValueError, match="at least one"):
        WorkerSpec(routes=(), inbox=ProcessedEvent)
