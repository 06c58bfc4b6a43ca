"""A member's whole life under load, on the real processes (issue 17): three relays per
service that has an outbox (the auth API with three gunicorn workers, each relaying; three
member workers, each with its relay) on PostgreSQL.

500 members sign up and are deleted at once (signup, login, DELETE /auth/me, one right
after the other) while 500 others sign up and stay, 16 clients at a time, with the member
workers held (SIGSTOP) meanwhile so that both of their topics pile up and deletions can be
read before their inserts. Once everything has drained, a deleted member has left
nothing anywhere (no profile, no summary, none of its personal data in any text column
of any table of the three databases, its account DELETED, a tombstone in the member
service and, for a partner whose profile was made, in the batch service) and a kept
member exists exactly once (ACTIVE, one profile with its styles, one summary for a
partner); every event was claimed once by its consumer's inbox and none was
dead-lettered.

Then a deletion forced to be consumed before its insert: the insert creates nothing."""

from __future__ import annotations

import datetime as dt
import functools
import json
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import KafkaProducer
from sqlalchemy import MetaData, String, Text, create_engine, select, text

from devtools.http_client import request
from devtools.stack import Stack
from shared.messaging.kafka import read_topic
from shared.messaging.outbox import cloudevent_headers
from tests.e2e.conftest import running_stack
from tests.faults.harness import (
    CONSUMED,
    Registry,
    Signup,
    inbox_against_topics,
    reconcile,
)
from tests.pipeline_checks import dead_letters, wait_caught_up
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

MEMBERS = 500  # deleted at once, and as many kept
CLIENTS = 16
MEMBER_WORKERS = ("member-worker", "member-worker-2", "member-worker-3")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres: Any, kafka_bootstrap: str
) -> Iterator[Stack]:
    """The auth API with 3 gunicorn workers (3 relays), 3 member workers (3 relays)."""
    started = running_stack(tmp_path_factory, postgres, kafka_bootstrap, "lifeload", api_workers=3)
    stack = next(started)
    try:
        for instance in MEMBER_WORKERS[1:]:
            stack.spawn("member-worker", instance=instance)
        stack.wait_ready(60, list(MEMBER_WORKERS[1:]))
        yield stack
    finally:
        for _ in started:  # stops the stack
            pass


def rows(url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query), params)]
    finally:
        engine.dispose()


def text_columns(url: str) -> dict[str, str]:
    """Every value of every text column of every table of a database, lower case, one
    string per table.column (values joined by NUL), to search for personal data."""
    engine = create_engine(url)
    metadata = MetaData()
    found = {}
    try:
        metadata.reflect(engine)
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                columns = [c for c in table.columns if isinstance(c.type, String | Text)]
                for column in columns:
                    values = connection.scalars(select(column).where(column.is_not(None)))
                    found[f"{table.name}.{column.name}"] = "\0".join(
                        str(value).lower() for value in values
                    )
    finally:
        engine.dispose()
    return found


def body(tag: str, number: int, role: str) -> dict[str, Any]:
    """A signup whose personal data is unique and contains no other member's."""
    return {
        "email": f"lf{tag}-{number:04d}q@example.com",
        "password": "correct horse battery",
        "name": f"Lf{tag} Person{number:04d}q",
        "phone": f"+82-{number:04d}-{tag[:4]}",
        "birth": "1994-05-17",
        "gender": "FEMALE",
        "role": role,
        "nickname": f"lf{tag}n{number:04d}q",
        "favoriteStyles": [1 + number % 7, 20 + number % 3],
    }


# 2,000 argon2 hashes and verifications on two cores, then the drain: about 3 minutes on
# a quiet machine, more beside other tests.
@pytest.mark.timeout(600)
def test_500_members_deleted_at_once_and_500_kept_under_load(stack: Stack) -> None:
    tag = f"{time.time_ns() % 10**4:04d}"
    registry = Registry()
    bodies: dict[str, dict[str, Any]] = {}
    auth = stack.url("auth")

    def live(number: int) -> None:
        deleted = number % 2 == 0  # deleted and kept interleaved
        role = "PARTNER" if (number // 2) % 2 else "USER"  # half of each group
        sent = body(tag, number, role)
        status, answer = request("POST", f"{auth}/auth/signup", sent, timeout=60)
        assert status == 201, (status, answer)
        signup = Signup(
            answer["uuid"], role, tuple(sent["favoriteStyles"]), sent["email"], sent["password"]
        )
        bodies[signup.uuid] = sent
        registry.record(signup)
        if deleted:
            registry.delete(stack, signup)

    # The member workers are held (SIGSTOP) while the requests go in, so that both of
    # their topics pile up and a member's profile-delete can be read before its
    # profile-insert, as Kafka allows (the two topics are not ordered between them):
    # the deletion must win either way. Left running, every insert is applied long
    # before its deletion (login and delete each cost an argon2 verification).
    held = [stack.processes[name] for name in MEMBER_WORKERS]
    started = time.monotonic()
    for process in held:
        process.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(live, range(2 * MEMBERS)))
    finally:
        for process in held:
            process.signal(signal.SIGCONT)
    driven = time.monotonic() - started
    assert len(registry.deleted) == MEMBERS
    assert len(registry.kept()) == MEMBERS

    # Drained: every kept member ACTIVE with its profile, every deleted one gone and
    # tombstoned (reconcile() says what is still wrong), both outboxes empty, every
    # group committed each of its topics to the end.
    wait_until(
        lambda: not reconcile(stack, registry, stack.database_urls).problems,
        150,
        "every kept member ACTIVE with its profile, every deleted one erased",
        interval=1.0,
    )
    for service in ("auth", "member"):
        query = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        url = stack.database_urls[service]
        wait_until(
            functools.partial(lambda u, q: rows(u, q) == [(0,)], url, query),
            60,
            f"the {service} outbox is empty",
        )
    assert stack.bootstrap_servers
    for group, _, topic in CONSUMED:
        wait_caught_up(stack.bootstrap_servers, {group: topic}, 60)
    drained = time.monotonic() - started
    final = reconcile(stack, registry, stack.database_urls)
    print(f"\n[lifecycle under load] driven {driven:.1f} s, drained {drained:.1f} s")
    print(final.line())
    assert final.problems == [], final.problems
    assert final.users + final.partners == MEMBERS
    assert final.summaries == MEMBERS // 2

    # No personal data of a deleted member anywhere; a kept member's is found (the
    # search works).
    columns = {
        f"{service}: {name}": values
        for service, url in stack.database_urls.items()
        for name, values in text_columns(url).items()
    }
    gone = {s.uuid for s in registry.deleted}
    leaks: list[tuple[str, str, Any]] = []
    for member_id, sent in bodies.items():
        for field in ("email", "name", "phone", "nickname"):
            value = str(sent[field]).lower()
            holding = [name for name, values in columns.items() if value in values]
            if member_id in gone and holding:
                leaks.append((member_id, field, holding))
            if member_id not in gone and not holding:
                leaks.append((member_id, field, "kept, but not found"))
    assert leaks == [], leaks[:10]

    # A deleted partner whose partner-created went out has a batch tombstone (else a
    # late partner-created would open its summary again); only those deleted have one.
    servers = stack.bootstrap_servers.split(",")
    deleted_partners = {s.uuid for s in registry.deleted if s.role == "PARTNER"}
    announced = {
        r.key.decode()
        for r in read_topic(servers, "partner-created", timeout=10)
        if r.key and r.key.decode() in deleted_partners
    }
    erased = {
        r.key.decode()
        for r in read_topic(servers, "partner-deleted", timeout=10)
        if r.key and r.key.decode() in deleted_partners
    }
    batch_tombstones = {
        p for (p,) in rows(stack.database_urls["batch"], "SELECT partner_id FROM deleted_partners")
    }
    print(
        f"deleted partners: {len(deleted_partners)}, partner-created sent for "
        f"{len(announced)}, partner-deleted for {len(erased)}, batch tombstones "
        f"{len(batch_tombstones)}"
    )
    assert announced <= batch_tombstones == erased <= deleted_partners

    # Every event claimed once by its consumer's inbox; none dead-lettered.
    keys = [s.uuid for s in registry.accepted]
    assert inbox_against_topics(stack.database_urls, servers, keys) == {}
    for _, _, topic in CONSUMED:
        assert dead_letters(stack.bootstrap_servers, topic, keys) == [], topic


def publish(stack: Stack, topic: str, key: str, document: dict[str, Any]) -> str:
    """Publish one record as the outbox relay would (CloudEvents headers); its ce_id."""
    event_id = str(uuid.uuid4())
    row = SimpleNamespace(
        event_id=event_id,
        source="auth-service",
        topic=topic,
        created_at=dt.datetime.now(dt.UTC),
        traceparent=None,
    )
    producer = KafkaProducer(bootstrap_servers=(stack.bootstrap_servers or "").split(","))
    try:
        producer.send(
            topic, json.dumps(document).encode(), key.encode(), headers=cloudevent_headers(row)
        ).get(30)
    finally:
        producer.close()
    return event_id


def test_a_deletion_consumed_before_its_insert_makes_the_insert_create_nothing(
    stack: Stack,
) -> None:
    member_url = stack.database_urls["member"]
    member_id = str(uuid.uuid4())
    deletion = publish(stack, "profile-delete", member_id, {"uuid": member_id})

    def claimed(event_id: str) -> bool:
        query = "SELECT 1 FROM processed_events WHERE event_id = :id"
        return bool(rows(member_url, query, id=event_id))

    wait_until(lambda: claimed(deletion), 60, "the member worker applies the deletion")
    tombstone = "SELECT 1 FROM deleted_members WHERE uuid = :id"
    assert rows(member_url, tombstone, id=member_id) == [(1,)]

    nickname = f"late{uuid.uuid4().hex[:10]}"
    insert = publish(
        stack,
        "profile-insert",
        member_id,
        {"uuid": member_id, "role": "PARTNER", "nickname": nickname, "favoriteStyles": [4, 5]},
    )
    wait_until(lambda: claimed(insert), 60, "the member worker applies the late insert")
    assert stack.bootstrap_servers
    wait_caught_up(stack.bootstrap_servers, {"member-service": "profile-insert"}, 60)

    # Applied (its inbox row), not dead-lettered, and it made nothing: no profile, no
    # styles, no nickname claimed, no answer and no partner-created queued or sent.
    assert dead_letters(stack.bootstrap_servers, "profile-insert", [member_id]) == []
    for table, column in (
        ("users", "uuid"),
        ("partners", "uuid"),
        ("member_roles", "uuid"),
        ("favorite_styles", "member_uuid"),
        ("outbox", "key"),
    ):
        query = f"SELECT count(*) FROM {table} WHERE {column} = :id"
        assert rows(member_url, query, id=member_id) == [(0,)], table
    status, _ = request("GET", f"{stack.url('member')}/members/{member_id}")
    assert status == 404
    time.sleep(1)  # what a relay would have sent by now
    servers = stack.bootstrap_servers.split(",")
    for topic in ("profile-created", "profile-rejected", "partner-created"):
        sent = [r for r in read_topic(servers, topic, timeout=10) if r.key == member_id.encode()]
        assert sent == [], topic
    # The nickname it asked for was never claimed: a new member gets it.
    status, answer = request(
        "POST",
        f"{stack.url('auth')}/auth/signup",
        body(f"{uuid.uuid4().int % 10**4:04d}", 1, "USER") | {"nickname": nickname},
        timeout=30,
    )
    assert status == 201, answer
    wait_until(
        lambda: (
            request("GET", f"{stack.url('auth')}/auth/signups/{answer['uuid']}")[1].get("status")
            == "ACTIVE"
        ),
        60,
        "a new member with the late insert's nickname is ACTIVE",
    )
