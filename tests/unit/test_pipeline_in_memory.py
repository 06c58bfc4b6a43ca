"""The pipeline's guarantees, checked in one process on real SQLite with a fake broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import func, select

from batch_service.models import PartnerSummary
from member_service.models import FavoriteStyle, Partner, ProcessedEvent, User
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.kafka import Message
from shared.messaging.processor import Outcome
from shared.telemetry.tracecontext import trace_id_of
from tests.fakes import FakeConsumer
from tests.processing import process_one
from tests.unit.pipeline_harness import InMemoryPipeline, signup_body


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[InMemoryPipeline]:
    harness = InMemoryPipeline(tmp_path)
    yield harness
    harness.close()


def count(database, model) -> int:  # type: ignore[no-untyped-def]
    with database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def sign_up(pipeline: InMemoryPipeline, **overrides: object) -> str:
    response = pipeline.client.post("/auth/signup", json=signup_body(**overrides))
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["uuid"])


def test_partner_signup_becomes_profile_styles_and_summary(pipeline: InMemoryPipeline) -> None:
    partner_id = sign_up(pipeline, role="PARTNER", favoriteStyles=[5, 2])
    pipeline.run()

    with pipeline.member_db.sessions() as session:
        assert session.get(Partner, partner_id) is not None
        assert session.get(User, partner_id) is None
        styles = session.scalars(
            select(FavoriteStyle.style_id).where(FavoriteStyle.member_uuid == partner_id)
        ).all()
    assert sorted(styles) == [2, 5]
    with pipeline.batch_db.sessions() as session:
        summary = session.get(PartnerSummary, partner_id)
    assert summary is not None
    assert (summary.post_count, summary.follower_count, summary.coordinate_count) == (0, 0, 0)
    assert (summary.review_count, summary.average_star) == (0, 0.0)


def test_user_signup_creates_user_and_publishes_no_partner_event(
    pipeline: InMemoryPipeline,
) -> None:
    user_id = sign_up(pipeline, role="USER")
    pipeline.run()

    with pipeline.member_db.sessions() as session:
        assert session.get(User, user_id) is not None
    assert pipeline.broker.topics["partner-created"] == []
    assert count(pipeline.batch_db, PartnerSummary) == 0


def test_event_value_is_exactly_the_contract_json_with_cloudevents_headers(
    pipeline: InMemoryPipeline,
) -> None:
    member_id = sign_up(pipeline, role="PARTNER", nickname="shop", favoriteStyles=[9])
    pipeline.run()

    [record] = pipeline.broker.topics["profile-insert"]
    assert record.key == member_id.encode()
    assert json.loads(record.value) == {
        "uuid": member_id,
        "role": "PARTNER",
        "nickname": "shop",
        "favoriteStyles": [9],
    }
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_source"] == b"auth-service"
    assert headers["ce_type"] == b"profile-insert"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_time"].endswith(b"Z")
    [announced] = pipeline.broker.topics["partner-created"]
    assert announced.key == member_id.encode()
    assert json.loads(announced.value) == {"partnerId": member_id}
    assert dict(announced.headers)["ce_source"] == b"member-service"
    assert dict(announced.headers)["ce_id"] != headers["ce_id"]


def test_trace_id_of_the_signup_request_follows_the_partner_event(
    pipeline: InMemoryPipeline,
) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = pipeline.client.post(
        "/auth/signup", json=signup_body(role="PARTNER"), headers={"traceparent": trace}
    )
    assert response.status_code == 201
    pipeline.run()

    [record] = pipeline.broker.topics["profile-insert"]
    [announced] = pipeline.broker.topics["partner-created"]
    assert trace_id_of(record.header("traceparent")) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(announced.header("traceparent")) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_redelivered_event_creates_no_second_profile(pipeline: InMemoryPipeline) -> None:
    partner_id = sign_up(pipeline, role="PARTNER", favoriteStyles=[1, 2, 3])
    pipeline.run()
    [record] = pipeline.broker.topics["profile-insert"]

    outcomes = [process_one(pipeline.member, record) for _ in range(5)]

    assert outcomes == [Outcome.DUPLICATE] * 5
    assert count(pipeline.member_db, Partner) == 1
    assert count(pipeline.member_db, FavoriteStyle) == 3
    pipeline.member_relay.publish_pending()
    assert len(pipeline.broker.topics["partner-created"]) == 1, partner_id


def test_redelivered_partner_created_creates_no_second_summary(
    pipeline: InMemoryPipeline,
) -> None:
    sign_up(pipeline, role="PARTNER")
    pipeline.run()
    [announced] = pipeline.broker.topics["partner-created"]

    assert process_one(pipeline.batch, announced) == Outcome.DUPLICATE
    assert count(pipeline.batch_db, PartnerSummary) == 1


def test_event_without_ce_id_is_deduplicated_by_its_position(pipeline: InMemoryPipeline) -> None:
    value = json.dumps(
        {
            "uuid": "0b8f7a52-7f0e-4c43-9a38-0d2b4f5f5d11",
            "role": "USER",
            "nickname": "old",
            "favoriteStyles": [],
        }
    ).encode()
    spring_record = Message("profile-insert", b"k", value, [], partition=2, offset=41)

    assert process_one(pipeline.member, spring_record) == Outcome.APPLIED
    assert process_one(pipeline.member, spring_record) == Outcome.DUPLICATE
    assert count(pipeline.member_db, User) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"uuid": "x", "role": "USER", "nickname": "a", "favoriteStyles": []}', "schema"),
        (
            b'{"uuid": "0b8f7a52-7f0e-4c43-9a38-0d2b4f5f5d11", "role": "ADMIN",'
            b' "nickname": "ab", "favoriteStyles": []}',
            "schema",
        ),
        (
            b'{"uuid": "0b8f7a52-7f0e-4c43-9a38-0d2b4f5f5d11", "role": "USER",'
            b' "nickname": "ab", "favoriteStyles": [true]}',
            "schema",
        ),
    ],
)
def test_poison_record_goes_to_dlt_byte_for_byte_with_why_and_where(
    pipeline: InMemoryPipeline, value: bytes, reason: str
) -> None:
    headers = [("ce_id", b"poison-1"), ("traceparent", b"00-abc")]
    poison = Message("profile-insert", b"the-key", value, headers, partition=3, offset=17)

    assert process_one(pipeline.member, poison) == Outcome.DEAD_LETTERED

    [dead] = pipeline.broker.topics["profile-insert.DLT"]
    assert (dead.key, dead.value) == (b"the-key", value)
    assert dead.headers[:2] == headers
    extra = dict(dead.headers)
    assert reason in extra["dlt-error"].decode()
    assert b"\n" not in extra["dlt-error"]
    assert extra["dlt-original-topic"] == b"profile-insert"
    assert extra["dlt-original-partition"] == b"3"
    assert extra["dlt-original-offset"] == b"17"
    assert extra["dlt-attempts"] == b"1"
    assert count(pipeline.member_db, ProcessedEvent) == 0


def test_poison_record_does_not_stop_the_records_after_it(pipeline: InMemoryPipeline) -> None:
    first = sign_up(pipeline)
    pipeline.auth_relay.publish_pending()
    pipeline.broker.append("profile-insert", b"garbage", b"k", [])
    second = sign_up(pipeline)
    pipeline.auth_relay.publish_pending()
    consumer = FakeConsumer(pipeline.broker, "profile-insert")
    loop = ConsumerLoop(consumer, pipeline.member)

    loop.poll_once()

    assert consumer.committed == 3
    assert loop.counts[Outcome.APPLIED] == 2
    assert loop.counts[Outcome.DEAD_LETTERED] == 1
    with pipeline.member_db.sessions() as session:
        assert session.get(User, first) is not None
        assert session.get(User, second) is not None


def test_rejected_signup_publishes_nothing(pipeline: InMemoryPipeline) -> None:
    body = signup_body()
    assert pipeline.client.post("/auth/signup", json=body).status_code == 201
    duplicate = pipeline.client.post("/auth/signup", json=dict(body, email=body["email"].upper()))
    invalid = pipeline.client.post("/auth/signup", json=dict(body, role="ADMIN"))

    assert (duplicate.status_code, invalid.status_code) == (409, 400)
    pipeline.run()
    assert len(pipeline.broker.topics["profile-insert"]) == 1


def test_relay_keeps_rows_while_broker_refuses_and_sends_them_once_it_is_back(
    pipeline: InMemoryPipeline,
) -> None:
    pipeline.broker.down = True
    ids = [sign_up(pipeline) for _ in range(3)]

    assert pipeline.auth_relay.publish_pending() == 0
    assert pipeline.broker.topics["profile-insert"] == []

    pipeline.broker.down = False
    assert pipeline.auth_relay.publish_pending() == 3
    assert pipeline.auth_relay.publish_pending() == 0
    sent = [record.key.decode() for record in pipeline.broker.topics["profile-insert"]]
    assert sent == ids


def test_event_contradicting_stored_state_is_dead_lettered(pipeline: InMemoryPipeline) -> None:
    member_id = sign_up(pipeline)
    pipeline.run()
    [record] = pipeline.broker.topics["profile-insert"]
    replayed_with_new_id = Message(
        record.topic, record.key, record.value, [("ce_id", b"another-id")], 0, 99
    )

    assert process_one(pipeline.member, replayed_with_new_id) == Outcome.DEAD_LETTERED
    assert count(pipeline.member_db, User) == 1, member_id


def profile_insert_as(record: Message, role: str, event_id: bytes, offset: int) -> Message:
    """`record`'s profile-insert with another role (and another event id, at `offset`)."""
    value = json.loads(record.value)
    value["role"] = role
    value["favoriteStyles"] = [30, 31]
    return Message(
        record.topic, record.key, json.dumps(value).encode(), [("ce_id", event_id)], 0, offset
    )


@pytest.mark.parametrize("first", ["USER", "PARTNER"])
def test_an_event_giving_a_member_the_other_role_is_dead_lettered_whole(
    pipeline: InMemoryPipeline, first: str
) -> None:
    """Seen by an outside probe: a PARTNER insert for a USER's uuid was applied (a users
    and a partners row, a summary), and the styles of both were merged."""
    sign_up(pipeline, role=first)
    pipeline.run()
    [record] = pipeline.broker.topics["profile-insert"]
    other = "PARTNER" if first == "USER" else "USER"
    users, partners, styles = (count(pipeline.member_db, m) for m in (User, Partner, FavoriteStyle))

    flipped = profile_insert_as(record, other, b"flipped-role", 99)
    assert process_one(pipeline.member, flipped) == Outcome.DEAD_LETTERED

    # Nothing of it stayed: no profile of the other role, no styles merged, no event.
    assert (count(pipeline.member_db, User), count(pipeline.member_db, Partner)) == (
        users,
        partners,
    )
    assert count(pipeline.member_db, FavoriteStyle) == styles
    assert pipeline.member_relay.publish_pending() == 0
    [letter] = pipeline.broker.topics["profile-insert.DLT"]
    assert letter.value == flipped.value
    error = letter.header("dlt-error") or ""
    assert "conflicts with stored state" in error and "member_roles" in error, error


def test_two_roles_for_one_uuid_in_one_batch_apply_the_first_only(
    pipeline: InMemoryPipeline,
) -> None:
    sign_up(pipeline, role="USER")
    pipeline.auth_relay.publish_pending()
    [record] = pipeline.broker.topics["profile-insert"]
    flipped = profile_insert_as(record, "PARTNER", b"same-batch", 1)
    partition = TopicPartition(record.topic, 0)

    report = pipeline.member.apply({partition: [record, flipped]}, lambda _p, _o: 1)

    assert sorted(o.value for o in report.outcomes) == ["applied", "dead_lettered"]
    assert (count(pipeline.member_db, User), count(pipeline.member_db, Partner)) == (1, 0)
