"""`signup-pipeline status` and `trace` against real databases (SQLite and PostgreSQL)
and a real broker: the numbers they report are the rows and records that are there."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from auth_service.models import Base as AuthBase
from auth_service.models import Member
from auth_service.models import OutboxEvent as AuthOutbox
from batch_service.handlers import apply_batch
from batch_service.models import Base as BatchBase
from batch_service.models import DeletedPartner, PartnerSummary
from devtools.postgres import PostgresServer
from member_service.models import Base as MemberBase
from member_service.models import DeletedMember, Partner, User
from member_service.models import OutboxEvent as MemberOutbox
from operations.cli import main
from operations.offsets import OffsetReader
from operations.sources import Endpoints
from operations.status import read_status, show_status
from operations.trace import show_trace
from shared.messaging.housekeeping import Housekeeper
from shared.messaging.kafka import create_topics, make_consumer, pipeline_topics
from shared.messaging.pipeline import (
    TOPICS,
    CoordinateClosed,
    FollowCreated,
    FollowDeleted,
    PartnerDeleted,
    PostCreated,
    PostDeleted,
    ReviewCreated,
    Topic,
)
from shared.storage.db import Database, utcnow
from tests.kafka_tools import create_topic, unique_name
from tests.schema import create_tables

pytestmark = pytest.mark.integration

BASES = {"auth": AuthBase, "member": MemberBase, "batch": BatchBase}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNREACHABLE_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
UNREACHABLE_BROKER = "127.0.0.1:1"


@pytest.fixture
def databases(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Database]]:
    """The three services' databases, each its own, on the backend of `database_url`."""
    urls = {"auth": database_url}
    for service in ("member", "batch"):
        if make_url(database_url).get_backend_name() == "sqlite":
            urls[service] = f"sqlite:///{tmp_path / f'{service}.db'}"
        else:
            server: PostgresServer = request.getfixturevalue("postgres")
            urls[service] = server.create_database()
    made = {
        service: Database.from_url(url, BASES[service].metadata) for service, url in urls.items()
    }
    for database in made.values():
        create_tables(database)
    yield made
    for database in made.values():
        database.engine.dispose()


@pytest.fixture
def topics(kafka_bootstrap: str) -> tuple[Topic, ...]:
    """Private copies of the pipeline's topics and groups, so no other test's records
    count: profile-insert and partner-created first, as in TOPICS."""
    copies = tuple(
        dataclasses.replace(
            topic,
            name=unique_name(topic.name),
            consumer_group=unique_name(topic.consumer_group),
            partitions=3,
        )
        for topic in TOPICS
    )
    for topic in copies:
        create_topic(kafka_bootstrap, topic.name, partitions=3)
        create_topic(kafka_bootstrap, topic.dead_letter)
    return copies


def endpoints_of(databases: dict[str, Database], bootstrap: str) -> Endpoints:
    return Endpoints(
        database_urls={
            service: d.engine.url.render_as_string(hide_password=False)
            for service, d in databases.items()
        },
        bootstrap_servers=bootstrap.split(","),
    )


def add_rows(database: Database, model: Any, rows: list[dict[str, Any]]) -> None:
    with database.engine.begin() as connection:
        connection.execute(insert(model), rows)


def outbox_row(
    topic: str, key: str, created: dt.datetime, published: dt.datetime | None, **more: Any
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "topic": topic,
        "key": key,
        "payload": "{}",
        "source": "test",
        "traceparent": None,
        "created_at": created,
        "published_at": published,
    } | more


def member_row(member_id: str, role: str, created: dt.datetime, **more: Any) -> dict[str, Any]:
    return {
        "uuid": member_id,
        "email": f"{member_id}@example.com",
        "email_key": f"{member_id}@example.com",
        "password_hash": "x",
        "name": "Kim",
        "phone": "+82-10-1234-5678",
        "birth": dt.date(1994, 5, 17),
        "gender": "FEMALE",
        "role": role,
        "nickname": "nick",
        "created_at": created,
        "status": "PENDING",
    } | more


def profile_row(member_id: str, created: dt.datetime) -> dict[str, Any]:
    return {"uuid": member_id, "nickname": "nick", "created_at": created}


def summary_row(partner_id: str, created: dt.datetime) -> dict[str, Any]:
    return {
        "partner_id": partner_id,
        "post_count": 0,
        "follower_count": 0,
        "coordinate_count": 0,
        "review_count": 0,
        "star_sum": 0,
        "created_at": created,
    }


def ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    """`per_partition[p]` records to partition p, each partition's in one batch: the batch
    shape on which the bundled broker's ListOffsets answers base offset + 1."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    try:
        sent = [
            producer.send(topic, b"{}", key=b"k", partition=partition)
            for partition, count in per_partition.items()
            for _ in range(count)
        ]
        producer.flush()
        for delivery in sent:
            delivery.get(timeout=10)
    finally:
        producer.close()


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` for `group` as its consumer would, without staying in the group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(partitions)
        consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        )
    finally:
        consumer.close(autocommit=False)


def status_document(endpoints: Endpoints, topics: tuple[Topic, ...]) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = show_status(endpoints, as_json=True, out=out, err=err, topics=topics)
    document: dict[str, Any] = json.loads(out.getvalue())
    # 1 exactly when a part could not be read, which stderr then names in one line.
    assert code == (1 if document["unavailable"] else 0)
    missing = ", ".join(document["unavailable"])
    said = f"error: incomplete: could not read {missing} (exit status 1)\n" if missing else ""
    assert err.getvalue() == said
    return document


# --- status ---------------------------------------------------------------------------


def test_status_reports_backlog_lag_dead_letters_and_last_minute_throughput(
    databases: dict[str, Database], topics: tuple[Topic, ...], kafka_bootstrap: str
) -> None:
    auth, member, batch = databases["auth"], databases["member"], databases["batch"]
    profile_insert, partner_created, profile_created, _, profile_delete, *_ = topics
    now = utcnow()
    recent, old = now - dt.timedelta(seconds=10), now - dt.timedelta(minutes=5)
    signups = ids(4)
    add_rows(auth, Member, [member_row(m, "USER", recent) for m in signups[:3]])
    add_rows(auth, Member, [member_row(signups[3], "USER", old)])
    add_rows(
        auth,
        AuthOutbox,
        [
            outbox_row(profile_insert.name, "a", now - dt.timedelta(seconds=30), None),
            outbox_row(profile_insert.name, "b", now - dt.timedelta(seconds=3), None),
            *[outbox_row(profile_insert.name, "c", old, recent) for _ in range(3)],
            outbox_row(profile_insert.name, "d", old, now - dt.timedelta(minutes=10)),
            outbox_row(profile_delete.name, "f", now - dt.timedelta(seconds=50), None),
        ],
    )
    add_rows(member, User, [profile_row(m, recent) for m in ids(2)])
    add_rows(member, Partner, [profile_row(ids(1)[0], recent), profile_row(ids(1)[0], old)])
    add_rows(
        member,
        MemberOutbox,
        [
            outbox_row(partner_created.name, "e", old, None),
            *[outbox_row(profile_created.name, "g", old, recent) for _ in range(2)],
        ],
    )
    add_rows(batch, PartnerSummary, [summary_row(ids(1)[0], recent)])
    add_rows(batch, PartnerSummary, [summary_row(p, old) for p in ids(2)])
    produce(kafka_bootstrap, profile_insert.name, {0: 7, 1: 3})
    produce(kafka_bootstrap, partner_created.name, {2: 2})
    produce(kafka_bootstrap, profile_insert.dead_letter, {0: 3})
    commit(kafka_bootstrap, profile_insert.consumer_group, profile_insert.name, {0: 4})
    commit(kafka_bootstrap, partner_created.consumer_group, partner_created.name, {2: 2})

    document = status_document(endpoints_of(databases, kafka_bootstrap), topics)

    assert document["unavailable"] == {}
    backlog = document["outbox"]["auth"]
    assert backlog["unpublished"] == 3
    assert 50 <= backlog["oldest_unpublished_age_seconds"] < 80
    waiting = backlog["topics"][profile_insert.name]
    assert waiting["unpublished"] == 2
    assert 30 <= waiting["oldest_unpublished_age_seconds"] < 60
    assert backlog["topics"][profile_delete.name]["unpublished"] == 1
    assert document["outbox"]["member"]["unpublished"] == 1
    # Other teams' services publish the activity topics: no outbox of ours to count.
    ours = ("auth-service", "member-service")
    published = {topic.name: 0 if topic.producer in ours else None for topic in topics}
    published |= {profile_insert.name: 3, profile_created.name: 2}
    assert document["throughput"] == {
        "signups_accepted": 3,
        "events_published": published,
        "profiles_created": 3,
        "summaries_created": 1,
    }
    member_lag = document["lag"][profile_insert.name]
    assert member_lag["group"] == profile_insert.consumer_group
    assert member_lag["total"] == (7 - 4) + 3
    assert [
        (p["end_offset"], p["committed_offset"], p["lag"]) for p in member_lag["partitions"]
    ] == [
        (7, 4, 3),
        (3, None, 3),
        (0, None, 0),
    ]
    assert document["lag"][partner_created.name]["total"] == 0
    assert document["consumer_groups"][profile_insert.consumer_group]["total"] == 6
    assert document["dead_letters"] == {
        topic.dead_letter: 3 if topic is profile_insert else 0 for topic in topics
    }


def test_status_counts_the_activity_the_batch_service_holds_but_does_not_count(
    databases: dict[str, Database], topics: tuple[Topic, ...], kafka_bootstrap: str
) -> None:
    """The batch worker's own handler leaves the state: activity for a partner not yet
    created waits, a deletion of something never counted is an orphan, activity for a
    deleted partner is dropped; status reads each from the batch database."""
    batch = databases["batch"]
    counted, unborn, other_unborn, gone = ids(4)
    follower, stranger = ids(2)
    add_rows(batch, PartnerSummary, [summary_row(counted, utcnow())])
    events: list[list[Any]] = [
        [PartnerDeleted(gone)],
        [
            PostCreated("p-1", counted),  # counted
            FollowCreated(follower, counted),
            FollowDeleted(stranger, counted),  # an orphan
            PostDeleted("p-9", counted),  # an orphan
            PostCreated("p-2", unborn),  # three events wait for two partners
            ReviewCreated("r-1", unborn, 4),
            CoordinateClosed("c-1", other_unborn),
            PostCreated("p-3", gone),  # dropped twice
            FollowCreated(follower, gone),
        ],
        [
            FollowDeleted(follower, counted),  # net 0 now: no longer counted, no orphan
            PostDeleted("p-10", gone),  # dropped
            PostCreated("p-11", unborn),  # waits
        ],
    ]
    for batch_events in events:
        with batch.unit_of_work() as uow:
            apply_batch(batch_events, uow)
            uow.commit()

    document = status_document(endpoints_of(databases, kafka_bootstrap), topics)
    screen = io.StringIO()
    show_status(endpoints_of(databases, kafka_bootstrap), out=screen, topics=topics)

    assert document["partner_activity"] == {
        "waiting": {"events": 4, "partners": 2},
        "orphan_deletions": 2,
        "dropped_events": 3,
    }
    text = " ".join(screen.getvalue().split())
    assert (
        "batch: partner activity not counted waiting for partner-created 4 events, 2 partners "
        "orphan deletions 2 (deletions of things never counted) dropped: partner deleted 3 events"
    ) in text


def test_status_command_reads_the_databases_and_broker_the_services_are_given(
    databases: dict[str, Database],
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_topics(kafka_bootstrap.split(","), pipeline_topics())  # as the workers do at start
    add_rows(databases["auth"], Member, [member_row(m, "USER", utcnow()) for m in ids(2)])
    for service, database in databases.items():
        url = database.engine.url.render_as_string(hide_password=False)
        monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    with pytest.raises(SystemExit) as exit_:
        main(["status", "--json"])

    assert exit_.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["unavailable"] == {}
    assert document["throughput"]["signups_accepted"] == 2
    assert document["outbox"]["auth"]["unpublished"] == 0
    assert set(document["consumer_groups"]) == {"member-service", "batch-service", "auth-service"}
    assert set(document["lag"]) == {topic.name for topic in TOPICS}
    assert all(isinstance(topic["total"], int) for topic in document["lag"].values())
    assert set(document["dead_letters"]) == {topic.dead_letter for topic in TOPICS}
    assert document["took_ms"] < 2000


def test_a_part_that_cannot_be_read_is_unavailable_and_the_rest_still_shows(
    databases: dict[str, Database], topics: tuple[Topic, ...]
) -> None:
    add_rows(databases["auth"], Member, [member_row(m, "USER", utcnow()) for m in ids(2)])
    endpoints = endpoints_of(databases, UNREACHABLE_BROKER)
    endpoints = dataclasses.replace(
        endpoints, database_urls={**endpoints.database_urls, "member": UNREACHABLE_POSTGRES}
    )

    started = time.monotonic()
    document = status_document(endpoints, topics)

    assert time.monotonic() - started < 5
    assert document["throughput"]["signups_accepted"] == 2
    assert document["throughput"]["summaries_created"] == 0
    assert document["throughput"]["profiles_created"] is None
    assert document["outbox"]["member"] is None
    assert set(document["unavailable"]) == {"member database", "kafka"}
    assert "Connection refused" in document["unavailable"]["member database"]
    assert "Connection refused" in document["unavailable"]["kafka"]
    assert set(document["lag"].values()) == {None}


def test_a_topic_the_broker_lacks_is_unavailable_not_zero(
    databases: dict[str, Database], topics: tuple[Topic, ...], kafka_bootstrap: str
) -> None:
    missing = dataclasses.replace(topics[1], name=unique_name("never-created"))

    document = status_document(endpoints_of(databases, kafka_bootstrap), (topics[0], missing))

    assert document["lag"][topics[0].name]["total"] == 0
    assert document["lag"][missing.name] is None
    assert document["consumer_groups"][missing.consumer_group]["total"] is None
    assert document["dead_letters"][missing.dead_letter] is None
    assert f"topic {missing.name}" in document["unavailable"]


def test_reading_status_does_not_make_the_consumer_group_rebalance(
    tmp_path: Path, topics: tuple[Topic, ...], kafka_bootstrap: str
) -> None:
    topic = topics[0]
    produce(kafka_bootstrap, topic.name, {0: 2, 1: 1})
    changes: list[str] = []

    class Listener(ConsumerRebalanceListener):
        def on_partitions_assigned(self, assigned: Any) -> None:
            changes.append(f"assigned {sorted(tp.partition for tp in assigned)}")

        def on_partitions_revoked(self, revoked: Any) -> None:
            if revoked:
                changes.append(f"revoked {sorted(tp.partition for tp in revoked)}")

    consumer = make_consumer(
        kafka_bootstrap.split(","), topic.consumer_group, [topic.name], listener=Listener()
    )
    try:
        deadline = time.monotonic() + 30
        consumed = 0
        while consumed < 3 and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            consumed += sum(len(records) for records in batch.values())
            if batch:
                consumer.commit()
        assert consumed == 3
        assigned = set(consumer.assignment())
        # What the join itself did stays out of it: Apache Kafka may first assign nothing
        # (a new topic not yet in every broker's metadata) and then everything.
        joined = list(changes)
        assert joined[-1] == f"assigned {sorted(tp.partition for tp in assigned)}"
        endpoints = Endpoints(
            {s: f"sqlite:///{tmp_path / s}.db" for s in BASES}, kafka_bootstrap.split(",")
        )

        readings = [read_status(endpoints, topics=topics) for _ in range(3)]
        for _ in range(10):  # a rebalance would show up within a few heartbeats
            consumer.poll(timeout_ms=200)

        assert changes == joined  # no revocation, no new assignment
        assert set(consumer.assignment()) == assigned
        lags = [r.lag[topic.name] for r in readings]
        assert [getattr(lag, "total", None) for lag in lags] == [0, 0, 0]
    finally:
        consumer.close(autocommit=False)


# --- trace ----------------------------------------------------------------------------


def trace_document(databases: dict[str, Database], member_id: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = show_trace(endpoints_of(databases, UNREACHABLE_BROKER), member_id, as_json=True, out=out)
    document: dict[str, Any] = json.loads(out.getvalue())
    return code, document


def ms(base: dt.datetime, milliseconds: float) -> dt.datetime:
    return base + dt.timedelta(milliseconds=milliseconds)


def test_trace_follows_a_partner_through_all_three_databases(
    databases: dict[str, Database],
) -> None:
    partner_id, t0 = ids(1)[0], utcnow() - dt.timedelta(seconds=5)
    add_rows(
        databases["auth"],
        Member,
        [member_row(partner_id, "PARTNER", t0, status="ACTIVE", status_changed_at=ms(t0, 70))],
    )
    insert_event = outbox_row(
        "profile-insert", partner_id, t0, ms(t0, 12.5), traceparent=TRACEPARENT
    )
    add_rows(databases["auth"], AuthOutbox, [insert_event])
    add_rows(databases["member"], Partner, [profile_row(partner_id, ms(t0, 40))])
    created_event = outbox_row(
        "partner-created", partner_id, ms(t0, 40), ms(t0, 55), traceparent=TRACEPARENT
    )
    answer = outbox_row("profile-created", partner_id, ms(t0, 40), ms(t0, 52))
    add_rows(databases["member"], MemberOutbox, [created_event, answer])
    add_rows(databases["batch"], PartnerSummary, [summary_row(partner_id, ms(t0, 81.25))])

    code, document = trace_document(databases, partner_id)

    assert code == 0
    assert [(s["step"], s["state"]) for s in document["steps"]] == [
        ("accepted", "done"),
        ("profile-insert published", "done"),
        ("profile created", "done"),
        ("profile-created published", "done"),
        ("account active", "done"),
        ("partner-created published", "done"),
        ("summary created", "done"),
    ]
    assert [s["ms_since_previous"] for s in document["steps"]] == [
        None,
        12.5,
        27.5,
        12.0,
        18.0,
        15.0,
        26.25,
    ]
    assert document["steps"][1]["ce_id"] == insert_event["event_id"]
    assert document["steps"][3]["ce_id"] == answer["event_id"]
    assert document["steps"][5]["ce_id"] == created_event["event_id"]
    assert document["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (document["role"], document["complete"], document["total_ms"]) == (
        "PARTNER",
        True,
        81.25,
    )


def test_trace_of_a_user_stops_after_its_profile_and_shows_what_is_pending(
    databases: dict[str, Database],
) -> None:
    user_id, waiting_id, t0 = *ids(2), utcnow() - dt.timedelta(seconds=2)
    add_rows(
        databases["auth"],
        Member,
        [member_row(user_id, "USER", t0, status="ACTIVE", status_changed_at=ms(t0, 30))],
    )
    add_rows(databases["auth"], Member, [member_row(waiting_id, "USER", t0)])
    add_rows(
        databases["auth"],
        AuthOutbox,
        [
            outbox_row("profile-insert", user_id, t0, ms(t0, 5)),
            outbox_row("profile-insert", waiting_id, t0, None),
        ],
    )
    add_rows(databases["member"], User, [profile_row(user_id, ms(t0, 20))])
    add_rows(
        databases["member"],
        MemberOutbox,
        [outbox_row("profile-created", user_id, ms(t0, 20), ms(t0, 25))],
    )

    code, done = trace_document(databases, user_id)
    _, waiting = trace_document(databases, waiting_id)

    assert code == 0
    assert [s["step"] for s in done["steps"]] == [
        "accepted",
        "profile-insert published",
        "profile created",
        "profile-created published",
        "account active",
    ]
    assert done["complete"] is True
    assert done["total_ms"] == 30.0
    assert [s["state"] for s in waiting["steps"]] == ["done"] + ["pending"] * 4
    assert waiting["steps"][1]["note"].startswith(
        "profile-insert not yet published (in outbox since"
    )


def test_trace_says_an_outbox_row_was_cleaned_up_by_housekeeping(
    databases: dict[str, Database],
) -> None:
    partner_id, long_ago = ids(1)[0], utcnow() - dt.timedelta(days=3)
    active = {"status": "ACTIVE", "status_changed_at": ms(long_ago, 60)}
    add_rows(databases["auth"], Member, [member_row(partner_id, "PARTNER", long_ago, **active)])
    add_rows(
        databases["auth"],
        AuthOutbox,
        [outbox_row("profile-insert", partner_id, long_ago, long_ago)],
    )
    add_rows(databases["member"], Partner, [profile_row(partner_id, ms(long_ago, 30))])
    add_rows(
        databases["member"],
        MemberOutbox,
        [outbox_row("partner-created", partner_id, long_ago, ms(long_ago, 40))],
    )
    add_rows(databases["batch"], PartnerSummary, [summary_row(partner_id, ms(long_ago, 70))])
    assert Housekeeper(databases["auth"], AuthOutbox).sweep()["outbox"] == 1
    assert Housekeeper(databases["member"], MemberOutbox).sweep()["outbox"] == 1

    code, document = trace_document(databases, partner_id)

    assert code == 0
    states = [s["state"] for s in document["steps"]]
    assert states == ["done", "cleaned_up", "done", "cleaned_up", "done", "cleaned_up", "done"]
    assert "outbox row already cleaned up" in document["steps"][1]["note"]
    assert document["steps"][2]["ms_since_previous"] == 30.0
    assert document["complete"] is True


def test_trace_of_a_rejected_signup_shows_the_reason_and_when_auth_applied_it(
    databases: dict[str, Database],
) -> None:
    member_id, t0 = ids(1)[0], utcnow() - dt.timedelta(seconds=5)
    erased = {"email": None, "email_key": None, "password_hash": None, "name": None}
    rejected = {"status": "REJECTED", "status_reason": "nickname_taken"}
    add_rows(
        databases["auth"],
        Member,
        [member_row(member_id, "PARTNER", t0, status_changed_at=ms(t0, 50)) | erased | rejected],
    )
    answer = outbox_row(
        "profile-rejected",
        member_id,
        ms(t0, 20),
        ms(t0, 31),
        payload=json.dumps({"uuid": member_id, "reason": "nickname_taken"}),
    )
    add_rows(databases["member"], MemberOutbox, [answer])

    code, document = trace_document(databases, member_id)

    assert code == 0
    assert [(s["step"], s["state"], s["note"]) for s in document["steps"]][2:] == [
        ("profile rejected", "done", "reason nickname_taken"),
        ("profile-rejected published", "done", ""),
        ("account rejected", "done", "reason nickname_taken"),
    ]
    assert document["steps"][1]["state"] == "erased"
    assert [s["ms_since_previous"] for s in document["steps"]] == [None, None, 20.0, 11.0, 19.0]
    assert document["steps"][3]["ce_id"] == answer["event_id"]
    assert (document["role"], document["complete"], document["total_ms"]) == (
        "PARTNER",
        True,
        50.0,
    )


def test_trace_of_a_deleted_partner_reads_the_tombstones_of_member_and_batch(
    databases: dict[str, Database],
) -> None:
    partner_id, t0 = ids(1)[0], utcnow() - dt.timedelta(seconds=5)
    deleted = {"status": "DELETED", "status_changed_at": ms(t0, 2_000), "email_key": None}
    add_rows(databases["auth"], Member, [member_row(partner_id, "PARTNER", t0) | deleted])
    delete_event = outbox_row("profile-delete", partner_id, ms(t0, 2_000), ms(t0, 2_010))
    add_rows(databases["auth"], AuthOutbox, [delete_event])
    add_rows(
        databases["member"], DeletedMember, [{"uuid": partner_id, "deleted_at": ms(t0, 2_030)}]
    )
    add_rows(
        databases["member"],
        MemberOutbox,
        [outbox_row("partner-deleted", partner_id, ms(t0, 2_030), ms(t0, 2_040))],
    )
    add_rows(
        databases["batch"],
        DeletedPartner,
        [{"partner_id": partner_id, "deleted_at": ms(t0, 2_055)}],
    )

    code, document = trace_document(databases, partner_id)

    assert code == 0
    assert [(s["step"], s["state"]) for s in document["steps"]] == [
        ("accepted", "done"),
        ("profile-insert published", "erased"),
        ("profile created", "erased"),
        ("profile-created published", "erased"),
        ("account active", "erased"),
        ("partner-created published", "erased"),
        ("summary created", "erased"),
        ("account deleted", "done"),
        ("profile-delete published", "done"),
        ("profile erased", "done"),
        ("partner-deleted published", "done"),
        ("summary erased", "done"),
    ]
    assert [s["ms_since_previous"] for s in document["steps"][7:]] == [
        2000.0,
        10.0,
        20.0,
        10.0,
        15.0,
    ]
    assert document["steps"][8]["ce_id"] == delete_event["event_id"]
    assert (document["complete"], document["total_ms"]) == (True, 2055.0)


def test_trace_of_an_unknown_uuid_exits_1(databases: dict[str, Database]) -> None:
    code, document = trace_document(databases, str(uuid.uuid4()))

    assert code == 1
    assert document["found"] is False
    assert document["unavailable"] == {}


# --- the commands run as an operator runs them: unreachable broker, the dev broker file ---

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]


def closed_port() -> int:
    """A port nothing listens on (just freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli(
    cwd: Path, *args: str, bootstrap: str | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    if bootstrap is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    started = time.monotonic()
    shown = subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return shown, time.monotonic() - started


@pytest.mark.parametrize(
    "args",
    [("dlt", "list", "profile-insert"), ("dlt", "replay", "partner-created.DLT")],
)
def test_dlt_with_the_broker_unreachable_is_one_line_naming_it_and_exit_1(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    address = f"127.0.0.1:{closed_port()}"

    shown, took = run_cli(tmp_path, *args, bootstrap=address)

    assert shown.returncode == 1, shown.stderr
    assert took < 10
    assert shown.stdout == ""
    [line] = shown.stderr.splitlines()
    assert "Traceback" not in line
    assert line == (
        f"error: cannot reach Kafka at {address}: Connection refused (from KAFKA_BOOTSTRAP_SERVERS)"
    )


def test_status_with_the_broker_unreachable_shows_the_rest_and_exits_1(tmp_path: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"

    shown, took = run_cli(tmp_path, "status", bootstrap=address)

    assert shown.returncode == 1, shown.stderr
    assert took < 10
    assert "Traceback" not in shown.stderr
    assert "3 profile-insert → member-service     unavailable: kafka:" in shown.stdout
    assert "Connection refused" in shown.stdout
    assert shown.stdout.splitlines()[-1].startswith("incomplete: could not read")
    assert shown.stdout.splitlines()[-1].endswith("kafka (exit status 1)")


def test_without_kafka_bootstrap_servers_the_commands_find_the_dev_broker(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    create_topics(kafka_bootstrap.split(","), pipeline_topics())
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-broker").write_text(kafka_bootstrap.split(",")[0] + "\n")

    listed, took = run_cli(tmp_path, "dlt", "list", "profile-insert")
    status, _ = run_cli(tmp_path, "status", "--json")

    assert listed.returncode == 0, listed.stderr
    assert re.match(r"\d+ dead-lettered record\(s\) in profile-insert\.DLT$", listed.stdout)
    assert took < 10
    document = json.loads(status.stdout)
    assert "kafka" not in document["unavailable"]
    assert document["sources"]["kafka"] == kafka_bootstrap.split(",")[0]
    # A dev that has stopped left its address behind: said so, in one line.
    (tmp_path / "var" / "dev-broker").write_text(f"127.0.0.1:{closed_port()}\n")
    stale, _ = run_cli(tmp_path, "dlt", "list", "profile-insert")
    assert stale.returncode == 1
    [line] = stale.stderr.splitlines()
    assert "left by signup-pipeline dev: is it still running?" in line


def test_reading_a_topic_stops_at_each_partitions_end_with_every_record(
    kafka_bootstrap: str,
) -> None:
    topic = unique_name("dead-letters")
    create_topic(kafka_bootstrap, topic, partitions=3)
    produce(kafka_bootstrap, topic, {0: 10, 2: 3})  # batches of many: Tansu's short end

    started = time.monotonic()
    with OffsetReader(kafka_bootstrap.split(","), 10) as reader:
        records = reader.read(topic, reader.log_ranges([topic])[topic])

    assert time.monotonic() - started < 5  # by the ends, not by waiting for a quiet poll
    assert sorted((m.partition, m.offset) for m in records) == [
        *((0, o) for o in range(10)),
        *((2, o) for o in range(3)),
    ]
