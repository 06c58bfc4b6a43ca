"""The batch worker's pipelined loop against a real broker and a real database (SQLite and
PostgreSQL): a few thousand simulated activity events, some sent twice, drained by the
batch service's processor in a pipelined ConsumerLoop with the worker's poll size, while
the database fails now and then (whole polls sent back: kafka-python's own seek and
pause, with the next poll already fetched). Every event is counted once, the summaries
are exactly what the simulator says, and once stopped the group's offsets are at the end
of every partition."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import MetaData
from sqlalchemy.exc import OperationalError

from batch_service.consumer import BATCH_WORKER
from batch_service.models import Base
from devtools.simulate import ActivitySimulator, SimulatedEvent, expected_totals, produce
from operations.reconcile import Counters, reconcile_batch
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.kafka import make_consumer, make_producer
from shared.messaging.processor import EventProcessor, Outcome, Route, Summary
from shared.storage.db import Database, UnitOfWork
from tests.kafka_tools import topics_of_own, unique_name

pytestmark = pytest.mark.integration

EVENTS = 3000
SENT_AGAIN = 30
FAILING_CALLS = {1, 3}  # the batch handler's calls on which the database is "gone"


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


@pytest.fixture
def names(kafka_bootstrap: str) -> dict[str, str]:
    """The batch service's topics under names of this test's own."""
    return topics_of_own(kafka_bootstrap, BATCH_WORKER.topics)


class Polls:
    """What the consumer's polls returned (the partitions of each poll that returned
    records); `overlapping` is set once a poll returned records of a partition the first
    such poll had: the first batch's partitions, fetched again while it is applied."""

    def __init__(self, consumer: Any) -> None:
        self.partitions: list[set[TopicPartition]] = []
        self.overlapping = threading.Event()
        poll = consumer.poll

        def watched(*args: Any, **kwargs: Any) -> Any:
            records = poll(*args, **kwargs)
            if records:
                self.partitions.append(set(records))
                if len(self.partitions) > 1 and self.partitions[0] & self.partitions[-1]:
                    self.overlapping.set()
            return records

        consumer.poll = watched


class FlakyDatabase:
    """The batch worker's batch handler, but on some calls the database is gone (a
    transient failure: the whole poll goes back, to be read again after a backoff). The
    first call fails only once the next poll fetched more of its partitions, so that what
    it sends back has records in the next batch, which the loop must drop."""

    def __init__(
        self,
        handler: Callable[[Sequence[Any], UnitOfWork], Sequence[Summary | None]],
        polls: Polls,
    ) -> None:
        self.handler = handler
        self.polls = polls
        self.calls = 0

    def __call__(self, events: Sequence[Any], uow: UnitOfWork) -> Sequence[Summary | None]:
        self.calls += 1
        if self.calls == 1:
            assert self.polls.overlapping.wait(30), self.polls.partitions
        if self.calls in FAILING_CALLS:
            raise OperationalError("UPDATE partner_summaries", {}, Exception("connection lost"))
        return self.handler(events, uow)


@dataclasses.dataclass
class Worker:
    group: str
    loop: ConsumerLoop
    flaky: FlakyDatabase
    thread: threading.Thread


@pytest.fixture
def worker(database: Database, names: dict[str, str], kafka_bootstrap: str) -> Iterator[Worker]:
    """The batch worker's routes on the test's topics, in its own group, in a pipelined
    loop polling as many records as the worker does; `thread.start()` runs it."""
    assert BATCH_WORKER.pipelined
    group = unique_name("batch-service")
    servers = kafka_bootstrap.split(",")
    polled = {"max_poll_records": BATCH_WORKER.max_poll_records}
    topics = [names[route.topic.name] for route in BATCH_WORKER.routes]
    consumer = make_consumer(servers, group, topics, **polled)
    [handler] = {route.batch for route in BATCH_WORKER.routes}
    assert handler is not None
    flaky = FlakyDatabase(handler, Polls(consumer))
    routes = [
        Route(
            dataclasses.replace(route.topic, name=names[route.topic.name], consumer_group=group),
            batch=flaky,
        )
        for route in BATCH_WORKER.routes
    ]
    dead_letters = make_producer(servers)
    processor = EventProcessor(routes, database, BATCH_WORKER.inbox, dead_letters)
    loop = ConsumerLoop(consumer, processor, pipelined=True)
    thread = threading.Thread(target=loop.run, daemon=True)
    try:
        yield Worker(group, loop, flaky, thread)
    finally:
        loop.stop.set()
        if thread.is_alive():
            thread.join(30)
        dead_letters.close()
    assert not thread.is_alive()


def send(servers: list[str], topic: str, value: dict[str, Any], key: str) -> None:
    producer = make_producer(servers)
    try:
        headers = [("ce_id", str(uuid.uuid4()).encode())]
        producer.send(topic, json.dumps(value).encode(), key.encode(), headers).get(30)
    finally:
        producer.close()


def test_the_pipelined_batch_worker_drains_activity_once_with_exact_summaries(
    database_url: str,
    names: dict[str, str],
    worker: Worker,
    kafka_bootstrap: str,
) -> None:
    servers = kafka_bootstrap.split(",")
    partners = [str(uuid.uuid4()) for _ in range(40)]
    for partner in partners:
        send(servers, names["partner-created"], {"partnerId": partner}, partner)
    simulator = ActivitySimulator(partners, seed=18, skew=1.0)
    sent = produce(servers, simulator, count=EVENTS, topic_names=names, partners=partners)
    again: list[SimulatedEvent] = sent.events[:: EVENTS // SENT_AGAIN][:SENT_AGAIN]
    produce(servers, again, topic_names=names)
    total = len(partners) + EVENTS + SENT_AGAIN

    worker.thread.start()  # a backlog: polls of up to 2,000, the next fetched meanwhile
    loop = worker.loop
    deadline = time.monotonic() + 120
    while sum(loop.counts.values()) < total:
        assert time.monotonic() < deadline, f"only {loop.counts} of {total} within 120 s"
        time.sleep(0.1)
    loop.stop.set()  # settles the poll in flight, then closes
    worker.thread.join(30)
    assert not worker.thread.is_alive()

    # Once each: a record of a partition sent back, applied from the batch polled
    # meanwhile, would come again with its partition and count as a duplicate.
    assert loop.counts == {
        Outcome.APPLIED: len(partners) + EVENTS,
        Outcome.DUPLICATE: SENT_AGAIN,
        Outcome.DEAD_LETTERED: 0,
    }
    assert worker.flaky.calls > max(FAILING_CALLS)  # the database failed; polls came again
    report = reconcile_batch(servers, database_url, topic_names=names, group=worker.group)
    assert report.lag == 0, report  # the stopped worker's offsets are at every end
    assert report.differences == [], report
    assert report.duplicates == SENT_AGAIN
    totals = expected_totals(sent.events, partners)
    expected = {p: Counters(**totals[p].as_dict()) for p in partners}
    assert report.stored == expected
