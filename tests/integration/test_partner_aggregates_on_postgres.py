"""The partner aggregates on real PostgreSQL: the unit module's classes again (the
counter update is a different statement there: one UPDATE ... FROM unnest(...) for every
partner of a batch), and what only PostgreSQL can show: two workers counting the same
partners at once lose nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from kafka.structs import TopicPartition

from batch_service.models import Base
from devtools.postgres import PostgresServer
from shared.messaging.kafka import Message
from shared.storage.db import Database
from tests.fakes import FakeBroker
from tests.lifecycle import batch_processor, partner_created_record, uuid_of
from tests.schema import create_tables
from tests.unit import test_partner_aggregates as unit
from tests.unit.test_partner_aggregates import counters, database, follow, post  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database."""
    return postgres.create_database()


class TestCountersOnPostgres(unit.TestCounters):
    pass


class TestOrderOnPostgres(unit.TestOrder):
    pass


class TestPartnersLifeOnPostgres(unit.TestPartnersLife):
    pass


class TestBatchingOnPostgres(unit.TestBatching):
    pass


class TestApiOnPostgres(unit.TestApi):
    pass


def _in_parallel(*work: Callable[[], Any]) -> None:
    """Run each callable in its own thread, started together; re-raise the first error."""
    start = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def run(job: Callable[[], Any]) -> None:
        start.wait()
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]


def _poll(processor: Any, messages: list[Message]) -> None:
    batch: dict[TopicPartition, list[Message]] = {}
    for message in messages:
        batch.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
    report = processor.apply(batch)
    assert all(p.retry_at is None for p in report.partitions.values()), report.partitions


def test_a_summary_opening_while_another_worker_counts_its_activity_misses_none(
    database_url: str,
) -> None:
    """Worker A opens partners' summaries while worker B counts activity for the same
    partners (two topics, two workers after a rebalance). Without the per-partner lock,
    A computes a summary from activity rows B has not committed, and B, finding no
    summary yet, leaves its events waiting for a partner-created already applied: lost."""
    databases = [Database.from_url(database_url, Base.metadata) for _ in range(2)]
    create_tables(databases[0])
    try:
        opener = batch_processor(databases[0], FakeBroker())
        counter = batch_processor(databases[1], FakeBroker())
        for round_number in range(30):
            partners = [uuid_of(70_000 + 100 * round_number + n) for n in range(8)]
            created = [partner_created_record(p) for p in partners]
            activity = [post(p, f"{round_number}-{n}") for p in partners for n in range(3)]
            activity += [follow(p, uuid_of(90_000 + n)) for p in partners for n in range(2)]
            _in_parallel(partial(_poll, opener, created), partial(_poll, counter, activity))
            for partner in partners:
                assert counters(databases[0], partner) == (3, 2, 0, 0, 0), (
                    f"round {round_number}: {partner}"
                )
    finally:
        for db in databases:
            db.engine.dispose()


def test_two_workers_counting_one_hot_partner_lose_no_increment(database_url: str) -> None:
    """Two workers, each a topic's partitions, add to one hot partner's counters at
    once: every increment lands (UPDATE x = x + delta under the row's lock)."""
    databases = [Database.from_url(database_url, Base.metadata) for _ in range(2)]
    create_tables(databases[0])
    hot = uuid_of(80_000)
    try:
        _poll(batch_processor(databases[0], FakeBroker()), [partner_created_record(hot)])
        posting = batch_processor(databases[0], FakeBroker())
        following = batch_processor(databases[1], FakeBroker())
        for round_number in range(20):
            posts = [post(hot, f"{round_number}-{n}") for n in range(25)]
            fans = [follow(hot, uuid_of(100_000 + 25 * round_number + n)) for n in range(25)]
            _in_parallel(partial(_poll, posting, posts), partial(_poll, following, fans))
        assert counters(databases[0], hot) == (500, 500, 0, 0, 0)
    finally:
        for db in databases:
            db.engine.dispose()
