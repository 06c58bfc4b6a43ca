"""Races of a member's life on real PostgreSQL (issue 17): members asking for one
nickname in one poll or in concurrent workers' polls get exactly one profile and the
others a profile-rejected, never a dead letter; an insert and a deletion of one member
applied at once by two workers end with the deletion winning, whichever came first."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import func, select

from batch_service.handlers import on_partner_created, on_partner_deleted
from batch_service.models import Base as BatchBase
from batch_service.models import DeletedPartner, PartnerSummary
from devtools.postgres import PostgresServer
from member_service.handlers import on_profile_delete, on_profile_insert
from member_service.models import Base as MemberBase
from member_service.models import DeletedMember, MemberRole, User
from member_service.models import ProcessedEvent as MemberInbox
from shared.messaging.kafka import Message
from shared.messaging.pipeline import (
    PROFILE_DELETE,
    PROFILE_INSERT,
    PartnerCreated,
    PartnerDeleted,
    ProfileDelete,
    ProfileInsert,
)
from shared.messaging.processor import EventProcessor, Outcome, Route, Summary
from shared.storage.db import Database, UnitOfWork
from tests.fakes import FakeBroker
from tests.lifecycle import insert_record, member_processor, outbox, uuid_of
from tests.schema import create_tables

pytestmark = pytest.mark.integration

SPELLINGS = ["Mimi", "mimi", "MIMI", "ｍｉｍｉ", "mImI", "Ｍｉｍｉ", "miMI"]


@pytest.fixture
def pg_member_db(postgres: PostgresServer) -> Iterator[Database]:
    database = Database.from_url(postgres.create_database(), MemberBase.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


def count(database: Database, model: Any) -> int:
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def apply_until_done(processor: Any, messages: list[Message]) -> list[Outcome]:
    """A worker's view of one poll: apply it, and read again from where a partition must
    start again (a deadlock between workers is transient), until everything is done."""
    outcomes: list[Outcome] = []
    pending = messages
    for _ in range(50):
        batch: dict[TopicPartition, list[Message]] = {}
        for message in pending:
            batch.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
        report = processor.apply(batch)
        outcomes += report.outcomes
        pending = [
            message
            for message in pending
            if (
                retry := report.partitions[TopicPartition(message.topic, message.partition)]
            ).retry_at
            is not None
            and message.offset >= retry.retry_at
        ]
        if not pending:
            return outcomes
    raise AssertionError(f"never done: {len(pending)} records left")


def slow_member_processor(database: Database, broker: FakeBroker) -> EventProcessor:
    """The member worker's processor, its insert handler pausing 20 ms after it ran (a
    slow worker, a GC pause): its transaction stays open with the nickname claimed, so
    the other workers' transactions reach that nickname while it is uncommitted."""

    def slow_insert(event: ProfileInsert, uow: UnitOfWork) -> Summary:
        summary = on_profile_insert(event, uow)
        time.sleep(0.02)
        return summary

    routes: tuple[Route[Any], ...] = (
        Route(PROFILE_INSERT, slow_insert),
        Route(PROFILE_DELETE, on_profile_delete),
    )
    return EventProcessor(routes, database, MemberInbox, broker.producer())


def run_workers(url: str, polls: list[list[Message]], broker: FakeBroker) -> list[list[Outcome]]:
    """Each poll applied by a worker of its own (its own engine, as processes have), all
    starting at the same moment; each worker's outcomes."""
    start = threading.Barrier(len(polls))
    results: list[list[Outcome]] = [[] for _ in polls]
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        database = Database.from_url(url, MemberBase.metadata)
        try:
            processor = slow_member_processor(database, broker)
            start.wait(10)
            results[worker] = apply_until_done(processor, polls[worker])
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            database.engine.dispose()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(len(polls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    return results


def assert_one_profile_and_the_rest_rejected(
    database: Database, broker: FakeBroker, asked: int
) -> None:
    assert count(database, User) == 1
    assert count(database, MemberRole) == 1
    answers = sorted(topic for topic, _, _ in outbox(database))
    assert answers == ["profile-created"] + ["profile-rejected"] * (asked - 1)
    [(created,)] = [(key,) for topic, key, _ in outbox(database) if topic == "profile-created"]
    with database.sessions() as session:
        assert session.scalar(select(User.uuid)) == created
    assert dict(broker.topics) == {}  # nothing dead-lettered


def test_twenty_asks_for_one_nickname_in_one_poll_make_one_profile(
    pg_member_db: Database,
) -> None:
    messages = [
        insert_record(uuid_of(n), SPELLINGS[n % len(SPELLINGS)], partition=n % 4) for n in range(20)
    ]
    broker = FakeBroker()

    outcomes = apply_until_done(member_processor(pg_member_db, broker), messages)

    assert outcomes == [Outcome.APPLIED] * 20
    assert_one_profile_and_the_rest_rejected(pg_member_db, broker, 20)


@pytest.mark.parametrize("record_by_record", [False, True], ids=["batches", "record-by-record"])
def test_twenty_asks_for_one_nickname_in_concurrent_workers_make_one_profile(
    postgres: PostgresServer, record_by_record: bool
) -> None:
    """Four workers (each its own engine, as processes have) apply five asks each at the
    same moment, several rounds. `record-by-record`: each worker's poll also holds a
    contradiction (a second profile for a uuid), which fails the poll's transaction, so
    the asks are applied one by one, concurrently; a nickname clash must still never
    fail an event, in either pass."""
    url = postgres.create_database()
    setup = Database.from_url(url, MemberBase.metadata)
    create_tables(setup)
    setup.engine.dispose()
    workers = 4
    for round_number in range(5):
        broker = FakeBroker()
        nickname = f"Round{round_number}"
        spellings = [nickname, nickname.lower(), nickname.upper(), nickname.swapcase()]
        base = round_number * 1000
        polls: list[list[Message]] = []
        for worker in range(workers):
            poll = [
                insert_record(uuid_of(base + worker * 5 + n), spellings[n % 4], partition=worker)
                for n in range(5)
            ]
            if record_by_record:
                # A member of its own, then a contradicting second profile for it.
                own = uuid_of(base + 500 + worker)
                poll.insert(0, insert_record(own, f"own-{round_number}-{worker}", partition=worker))
                poll.append(insert_record(own, "contradiction", "PARTNER", partition=worker))
            polls.append(poll)
        results = run_workers(url, polls, broker)

        check = Database.from_url(url, MemberBase.metadata)
        try:
            with check.sessions() as session:
                holders = session.scalars(
                    select(MemberRole.uuid).where(MemberRole.nickname_key == nickname.lower())
                ).all()
            assert len(holders) == 1, holders
            answers = [
                topic
                for topic, key, _ in outbox(check)
                if int(key[-12:]) // 1000 == round_number and int(key[-12:]) % 1000 < 500
            ]
            assert sorted(answers) == ["profile-created"] + ["profile-rejected"] * 19
            dead = broker.topics.get("profile-insert.DLT", [])
            if record_by_record:
                assert all(
                    o in (Outcome.APPLIED, Outcome.DEAD_LETTERED) for r in results for o in r
                )
                assert len(dead) == workers  # the contradictions, and only them
                assert {m.value for m in dead} == {p[-1].value for p in polls}, (
                    "a nickname clash was dead-lettered"
                )
            else:
                assert dead == []
                assert [len(r) for r in results] == [5] * workers
                assert all(o is Outcome.APPLIED for r in results for o in r)
        finally:
            check.engine.dispose()


def hold_then_race(
    database: Database,
    first: Callable[[UnitOfWork], Summary],
    second: Callable[[UnitOfWork], Summary],
) -> list[str]:
    """`first` applied in a transaction held open while `second` runs in another thread;
    `second` must wait for it (the member's lock), then go on once it committed."""
    said: list[str] = []
    second_done = threading.Event()

    def other_worker() -> None:
        with database.unit_of_work() as uow:
            summary = second(uow)
            uow.commit()
        said.append(str(summary))
        second_done.set()

    racer = threading.Thread(target=other_worker)
    with database.unit_of_work() as uow:
        said.append(str(first(uow)))
        racer.start()
        assert not second_done.wait(0.5), "the second transaction did not wait for the first"
        uow.commit()
    racer.join(10)
    assert second_done.is_set()
    return said


@pytest.mark.parametrize("first", ["insert", "delete"])
def test_an_insert_and_a_deletion_at_once_end_deleted_whichever_comes_first(
    pg_member_db: Database, first: str
) -> None:
    member = uuid_of(1)

    def insert(uow: UnitOfWork) -> Summary:
        return on_profile_insert(ProfileInsert(member, "PARTNER", "Mimi", [1, 2]), uow)

    def delete(uow: UnitOfWork) -> Summary:
        return on_profile_delete(ProfileDelete(member), uow)

    if first == "insert":
        said = hold_then_race(pg_member_db, insert, delete)
        assert said[1].startswith("member deleted (PARTNER profile, 2 styles")
        assert outbox(pg_member_db) == [("partner-deleted", member, {"partnerId": member})]
    else:
        said = hold_then_race(pg_member_db, delete, insert)
        assert said[1] == "member already deleted: no profile created, no answer"
        assert outbox(pg_member_db) == []
    assert count(pg_member_db, User) == count(pg_member_db, MemberRole) == 0
    assert count(pg_member_db, DeletedMember) == 1


@pytest.mark.parametrize("first", ["created", "deleted"])
def test_a_partner_created_and_deleted_at_once_end_deleted_whichever_comes_first(
    postgres: PostgresServer, first: str
) -> None:
    database = Database.from_url(postgres.create_database(), BatchBase.metadata)
    create_tables(database)
    partner = uuid_of(1)

    def created(uow: UnitOfWork) -> Summary:
        return on_partner_created(PartnerCreated(partner), uow)

    def deleted(uow: UnitOfWork) -> Summary:
        return on_partner_deleted(PartnerDeleted(partner), uow)

    try:
        if first == "created":
            said = hold_then_race(database, created, deleted)
            assert said[1] == "partner deleted (summary dropped)"
        else:
            said = hold_then_race(database, deleted, created)
            assert said[1] == "partner already deleted: no summary opened"
        assert count(database, PartnerSummary) == 0
        assert count(database, DeletedPartner) == 1
    finally:
        database.engine.dispose()
