"""The consumer loop against a real broker and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer
from sqlalchemy import MetaData, func, select

from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.handlers import on_profile_insert
from member_service.models import Base, FavoriteStyle, ProcessedEvent, User
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.kafka import make_consumer, make_producer
from shared.messaging.pipeline import PROFILE_DELETE, PROFILE_INSERT, ProfileDelete
from shared.messaging.processor import EventProcessor, Outcome, Route, Summary
from shared.storage.db import Database, UnitOfWork
from tests.kafka_tools import committed_offsets, create_topic, read_topic, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


@pytest.fixture
def topic(kafka_bootstrap: str):  # type: ignore[no-untyped-def]
    """A private copy of `profile-insert`: its own name, group and dead-letter topic."""
    spec = dataclasses.replace(
        PROFILE_INSERT,
        name=unique_name("profile-insert"),
        consumer_group=unique_name("member-service"),
    )
    create_topic(kafka_bootstrap, spec.name, partitions=3)
    create_topic(kafka_bootstrap, spec.dead_letter)
    return spec


def profile(member_id: str) -> bytes:
    nickname = f"nick-{member_id[:8]}"  # nicknames are unique (issue 17)
    payload = {"uuid": member_id, "role": "USER", "nickname": nickname, "favoriteStyles": [1, 2]}
    return json.dumps(payload).encode()


def consume_until(loop: ConsumerLoop, done: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(loop.counts.values()) < done:
        assert time.monotonic() < deadline, f"only {loop.counts} within {timeout}s"
        loop.poll_once()


def count(database: Database, model: type) -> int:
    with database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_applies_records_dead_letters_poison_and_commits_offsets_after(
    database: Database,
    topic,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    members = [str(uuid.uuid4()) for _ in range(10)]
    for n, member_id in enumerate(members):
        headers = [("ce_id", f"event-{n}".encode())]
        producer.send(topic.name, profile(member_id), member_id.encode(), headers=headers)
        if n == 4:
            producer.send(topic.name, b"not json", member_id.encode(), headers=[("ce_id", b"p")])
    producer.flush()
    producer.close()
    dlt_producer = make_producer(kafka_bootstrap.split(","))
    processor = EventProcessor(
        (Route(topic, on_profile_insert),), database, PROFILE_INSERT_WORKER.inbox, dlt_producer
    )
    consumer = make_consumer(kafka_bootstrap.split(","), topic.consumer_group, [topic.name])
    loop = ConsumerLoop(consumer, processor)

    consume_until(loop, 11)
    consumer.close(autocommit=False)
    dlt_producer.close()

    assert loop.counts[Outcome.APPLIED] == 10
    assert loop.counts[Outcome.DEAD_LETTERED] == 1
    assert count(database, User) == 10
    assert count(database, FavoriteStyle) == 20
    [dead] = read_topic(kafka_bootstrap, topic.dead_letter, expect=1)
    assert dead.value == b"not json"
    assert dead.header("dlt-original-topic") == topic.name
    committed = committed_offsets(kafka_bootstrap, topic.consumer_group, topic.name)
    per_partition = {p: 0 for p in committed}
    for record in read_topic(kafka_bootstrap, topic.name, expect=11):
        per_partition[record.partition] = record.offset + 1
    assert committed == {p: (end or None) for p, end in per_partition.items()}


def test_a_second_group_replaying_the_topic_changes_nothing(
    database: Database,
    topic,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n in range(5):
        member_id = str(uuid.uuid4())
        producer.send(topic.name, profile(member_id), headers=[("ce_id", f"e{n}".encode())])
    producer.flush()
    producer.close()
    dlt_producer = make_producer(kafka_bootstrap.split(","))

    outcomes = []
    for group in (topic.consumer_group, unique_name("replay")):
        processor = EventProcessor(
            (Route(topic, on_profile_insert),),
            database,
            PROFILE_INSERT_WORKER.inbox,
            dlt_producer,
        )
        consumer = make_consumer(kafka_bootstrap.split(","), group, [topic.name])
        loop = ConsumerLoop(consumer, processor)
        consume_until(loop, 5)
        consumer.close(autocommit=False)
        outcomes.append(loop.counts)
    dlt_producer.close()

    assert outcomes[0][Outcome.APPLIED] == 5
    assert outcomes[1][Outcome.DUPLICATE] == 5
    assert outcomes[1][Outcome.APPLIED] == 0
    assert outcomes[1][Outcome.DEAD_LETTERED] == 0
    assert count(database, User) == 5
    assert count(database, ProcessedEvent) == 5  # one inbox row per event
    assert read_topic(kafka_bootstrap, topic.dead_letter, timeout=5) == []


def test_run_stops_on_signal_and_leaves_the_group(
    database: Database,
    topic,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> None:
    dlt_producer = make_producer(kafka_bootstrap.split(","))
    processor = EventProcessor(
        (Route(topic, on_profile_insert),), database, PROFILE_INSERT_WORKER.inbox, dlt_producer
    )
    consumer = make_consumer(kafka_bootstrap.split(","), topic.consumer_group, [topic.name])
    stop = threading.Event()
    loop = ConsumerLoop(consumer, processor, stop)
    thread = threading.Thread(target=loop.run)
    thread.start()
    time.sleep(1)  # let the loop run (poll, join the group) a while before it is told to stop

    stop.set()
    thread.join(10)
    dlt_producer.close()

    assert not thread.is_alive()


def test_one_group_reads_two_topics_commits_each_after_the_db_and_resumes_each(
    database: Database,
    topic,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> None:
    """One ConsumerLoop, one group, two topics (issue 17's member worker reads
    profile-insert and profile-delete): each record goes through its topic's handler
    once, each topic's offsets are committed only once the inbox rows of the records
    before them are committed, and a new consumer of the group resumes each topic where
    the first one stopped."""
    deletes = dataclasses.replace(
        PROFILE_DELETE, name=unique_name("profile-delete"), consumer_group=topic.consumer_group
    )
    create_topic(kafka_bootstrap, deletes.name, partitions=2)
    create_topic(kafka_bootstrap, deletes.dead_letter)
    servers = kafka_bootstrap.split(",")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    positions: dict[tuple[str, int, int], str] = {}

    def send(name: str, value: bytes, key: str, event_id: str) -> None:
        sent = producer.send(name, value, key.encode(), headers=[("ce_id", event_id.encode())])
        metadata = sent.get(timeout=10)
        positions[(name, metadata.partition, metadata.offset)] = event_id

    def send_round(tag: str, inserts: int, removals: int) -> None:
        for n in range(inserts):
            send(topic.name, profile(str(uuid.uuid4())), f"i{n}", f"{tag}-insert-{n}")
        for n in range(removals):
            member = str(uuid.uuid4())
            send(deletes.name, json.dumps({"uuid": member}).encode(), member, f"{tag}-delete-{n}")

    deleted: list[str] = []

    def on_delete(event: ProfileDelete, uow: UnitOfWork) -> Summary | None:
        deleted.append(event.uuid)
        return Summary("deleted")

    routes = (Route(topic, on_profile_insert), Route(deletes, on_delete))
    dlt_producer = make_producer(servers)
    commits: list[dict[tuple[str, int], int]] = []

    def stored() -> set[str]:
        with database.sessions() as session:
            return set(session.scalars(select(ProcessedEvent.event_id)))

    def run_round(expected: int) -> ConsumerLoop:
        processor = EventProcessor(routes, database, ProcessedEvent, dlt_producer)
        consumer = make_consumer(servers, topic.consumer_group, [topic.name, deletes.name])
        commit = consumer.commit

        def checked_commit(offsets: Any) -> None:
            # Every record below each committed offset is in the (committed) inbox.
            inbox = stored()
            for tp, at in offsets.items():
                below = [e for (t, p, o), e in positions.items() if (t, p) == tp and o < at.offset]
                assert set(below) <= inbox, f"{tp} committed to {at.offset} before its DB commit"
            commits.append({(tp.topic, tp.partition): at.offset for tp, at in offsets.items()})
            commit(offsets)

        consumer.commit = checked_commit
        loop = ConsumerLoop(consumer, processor)
        consume_until(loop, expected)
        consumer.close(autocommit=False)
        return loop

    send_round("first", inserts=6, removals=4)
    producer.flush()
    first = run_round(10)
    send_round("second", inserts=3, removals=2)
    producer.flush()
    producer.close()
    second = run_round(5)
    dlt_producer.close()

    assert first.topic_counts == {
        topic.name: {Outcome.APPLIED: 6, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 0},
        deletes.name: {Outcome.APPLIED: 4, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 0},
    }
    # The second consumer read only what came after the first one's commits, per topic.
    assert second.topic_counts == {
        topic.name: {Outcome.APPLIED: 3, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 0},
        deletes.name: {Outcome.APPLIED: 2, Outcome.DUPLICATE: 0, Outcome.DEAD_LETTERED: 0},
    }
    assert len(deleted) == len(set(deleted)) == 6
    assert count(database, User) == 9
    assert stored() == set(positions.values())
    with database.sessions() as session:
        rows = session.execute(select(ProcessedEvent.event_id, ProcessedEvent.topic))
        topics = {event_id: name for event_id, name in rows}
    assert {topics[e] for e in topics if "-delete-" in e} == {deletes.name}
    assert {topics[e] for e in topics if "-insert-" in e} == {topic.name}
    assert commits, "nothing was committed"
    for name in (topic.name, deletes.name):
        ends: dict[int, int | None] = {}
        for t, p, o in positions:
            if t == name:
                ends[p] = max(ends.get(p) or 0, o + 1)
        committed = committed_offsets(kafka_bootstrap, topic.consumer_group, name)
        assert {p: c for p, c in committed.items() if c is not None} == ends
    assert read_topic(kafka_bootstrap, topic.dead_letter, timeout=2) == []
    assert read_topic(kafka_bootstrap, deletes.dead_letter, timeout=2) == []
