"""reconcile against the real thing: simulated activity sent through a real broker, applied
by the batch service's worker (its EventProcessor and batch handler, on SQLite and
PostgreSQL), finds no difference, and agrees with the simulator's own expected totals;
a summary tampered with afterwards is reported, exactly that field of that partner."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, text

from batch_service.consumer import BATCH_WORKER
from batch_service.models import Base
from devtools.simulate import ActivitySimulator, SimulatedEvent, expected_totals, produce
from operations.reconcile import SUMMARY, Counters, Difference, reconcile_batch
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.kafka import make_consumer, make_producer
from shared.messaging.processor import EventProcessor, Route
from shared.storage.db import Database
from tests.kafka_tools import topics_of_own, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


@pytest.fixture
def names(kafka_bootstrap: str) -> dict[str, str]:
    """The batch service's eight topics under names of this test's own."""
    return topics_of_own(kafka_bootstrap, BATCH_WORKER.topics)


@pytest.fixture
def worker(
    database: Database, names: dict[str, str], kafka_bootstrap: str
) -> Iterator[tuple[str, ConsumerLoop]]:
    """The batch worker's routes on the test's topics, in its own group, running."""
    group = unique_name("batch-service")
    routes = [
        dataclasses.replace(
            route,
            topic=dataclasses.replace(
                route.topic, name=names[route.topic.name], consumer_group=group
            ),
        )
        for route in BATCH_WORKER.routes
    ]
    assert all(isinstance(route, Route) and route.batch is not None for route in routes)
    servers = kafka_bootstrap.split(",")
    dead_letters = make_producer(servers)
    processor = EventProcessor(routes, database, BATCH_WORKER.inbox, dead_letters)
    consumer = make_consumer(servers, group, [route.topic.name for route in routes])
    loop = ConsumerLoop(consumer, processor)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield group, loop
    finally:
        loop.stop.set()
        thread.join(30)
        dead_letters.close()


def send(servers: list[str], topic: str, value: dict[str, Any], key: str, ce_id: str) -> None:
    producer = make_producer(servers)
    try:
        headers = [("ce_id", ce_id.encode())]
        producer.send(topic, json.dumps(value).encode(), key.encode(), headers).get(30)
    finally:
        producer.close()


def test_the_batch_worker_leaves_what_reconcile_recomputes_and_a_tampered_row_shows(
    database: Database,
    database_url: str,
    names: dict[str, str],
    worker: tuple[str, ConsumerLoop],
    kafka_bootstrap: str,
) -> None:
    group, _ = worker
    servers = kafka_bootstrap.split(",")
    live, gone, never = (
        [str(uuid.uuid4()) for _ in range(4)],
        str(uuid.uuid4()),
        str(uuid.uuid4()),
    )
    for partner in [*live, gone]:
        send(servers, names["partner-created"], {"partnerId": partner}, partner, str(uuid.uuid4()))
    simulator = ActivitySimulator([*live, gone, never], seed=4, skew=0.8)
    sent = produce(servers, simulator, count=1500, topic_names=names, partners=live)
    # The partner deleted half way, and some events redelivered under their ce_id.
    send(servers, names["partner-deleted"], {"partnerId": gone}, gone, str(uuid.uuid4()))
    again: list[SimulatedEvent] = sent.events[:: len(sent.events) // 20][:20]
    more = produce(servers, simulator, count=500, topic_names=names, partners=live)
    produce(servers, again, topic_names=names)
    # An orphan deletion: counted by nobody.
    orphan = {"followerId": str(uuid.uuid4()), "partnerId": live[0]}
    send(servers, names["follow-deleted"], orphan, live[0], str(uuid.uuid4()))

    report = reconcile_batch(servers, database_url, topic_names=names, group=group, wait=60)

    assert report.lag == 0, report
    assert report.differences == [], report
    assert report.events_read == 5 + 1500 + 1 + 500 + 20 + 1
    assert (report.duplicates, report.undecodable, report.orphan_deletions) == (20, 0, 1)
    assert (report.deleted_partners, report.waiting_partners) == (1, 1)
    assert report.partners_checked == 4
    # Three computations agree: the simulator's, reconcile's and the batch service's.
    totals = expected_totals([*sent.events, *more.events], live)
    expected = {p: Counters(**totals[p].as_dict()) for p in live}
    assert report.expected == expected == report.stored
    assert sum(c.follower_count for c in expected.values()) > 0
    assert sum(c.post_count for c in expected.values()) > 0

    # The test going red: one counter off by one, one summary gone.
    tampered = live[1]
    with database.engine.begin() as connection:
        connection.execute(
            text("UPDATE partner_summaries SET star_sum = star_sum + 1 WHERE partner_id = :p"),
            {"p": tampered},
        )
        connection.execute(
            text("DELETE FROM partner_summaries WHERE partner_id = :p"), {"p": live[2]}
        )
    report = reconcile_batch(servers, database_url, topic_names=names, group=group)
    star_sum = expected[tampered].star_sum
    assert sorted(report.differences, key=lambda d: d.partner_id) == sorted(
        [
            Difference(tampered, "star_sum", star_sum, star_sum + 1),
            Difference(
                live[2], SUMMARY, "present", "absent", "partner-created read, no partner-deleted"
            ),
        ],
        key=lambda d: d.partner_id,
    )
    assert not report.ok

    # A thing applied twice, though no counter shows it (a post counts once at net 2):
    # the nets do.
    with database.engine.begin() as connection:
        post = connection.execute(
            text(
                "SELECT partner_id, item_id FROM partner_activity "
                "WHERE kind = 'post' AND net = 1 AND partner_id = :p LIMIT 1"
            ),
            {"p": live[0]},
        ).one()
        connection.execute(
            text("UPDATE partner_activity SET net = 2 WHERE kind = 'post' AND item_id = :i"),
            {"i": post[1]},
        )
    report = reconcile_batch(servers, database_url, topic_names=names, group=group)
    assert (
        Difference(post[0], f"post {post[1]} net", 1, 2, "creations minus deletions of this thing")
        in report.differences
    )
    assert len(report.differences) == 3
