"""A signup travels auth → member → batch through real processes, a real broker and
real PostgreSQL, and survives redelivery, poison records and a killed worker."""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, func, select, text

from devtools.http_client import request, wait_for_status
from devtools.stack import PROCESSES, Stack
from member_service.models import FavoriteStyle, Partner, User
from tests.kafka_tools import read_topic
from tests.pipeline_checks import dead_letters, duplicates, event_ids, inbox_rows, wait_caught_up
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def sign_up(stack: Stack, **overrides: object) -> str:
    status, body = request("POST", f"{stack.url('auth')}/auth/signup", signup_body(**overrides))
    assert status == 201, body
    return str(body["uuid"])


def member_counts(stack: Stack, member_ids: list[str]) -> dict[str, int]:
    engine = create_engine(stack.database_urls["member"])
    try:
        with engine.connect() as connection:
            counts = {
                name: connection.scalar(
                    select(func.count()).select_from(model).where(column.in_(member_ids))
                )
                for name, model, column in (
                    ("users", User, User.uuid),
                    ("partners", Partner, Partner.uuid),
                    ("styles", FavoriteStyle, FavoriteStyle.member_uuid),
                )
            }
    finally:
        engine.dispose()
    return {name: int(value or 0) for name, value in counts.items()}


def summary_count(stack: Stack, partner_ids: list[str]) -> int:
    engine = create_engine(stack.database_urls["batch"])
    try:
        with engine.connect() as connection:
            value = connection.scalar(
                text("SELECT count(*) FROM partner_summaries WHERE partner_id = ANY(:ids)"),
                {"ids": partner_ids},
            )
    finally:
        engine.dispose()
    return int(value or 0)


def test_user_and_partner_signups_reach_the_member_and_batch_apis(stack: Stack) -> None:
    user_id = sign_up(stack, role="USER", nickname="just-a-user", favoriteStyles=[4, 2])
    partner_id = sign_up(stack, role="PARTNER", nickname="a-shop", favoriteStyles=[7])

    _, user = wait_for_status(f"{stack.url('member')}/members/{user_id}")
    _, partner = wait_for_status(f"{stack.url('member')}/members/{partner_id}")
    _, summary = wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary")

    assert (user["role"], user["nickname"], user["favoriteStyles"]) == (
        "USER",
        "just-a-user",
        [4, 2],
    )
    assert (partner["role"], partner["favoriteStyles"]) == ("PARTNER", [7])
    assert summary == {
        "partnerId": partner_id,
        "postCount": 0,
        "followerCount": 0,
        "coordinateCount": 0,
        "reviewCount": 0,
        "averageStar": 0.0,
        "score": 0.0,
    }
    status, _ = request("GET", f"{stack.url('batch')}/partners/{user_id}/summary")
    assert status == 404


def test_the_auth_worker_takes_the_member_services_answer_to_each_signup(stack: Stack) -> None:
    assert set(stack.processes) == set(PROCESSES)  # the six, the auth worker among them
    assert set(stack.health_ports) == {"auth-worker", "member-worker", "batch-worker"}
    first = sign_up(stack, role="USER", nickname="answered-nick")
    _, created = wait_for_status(f"{stack.url('member')}/members/{first}")

    active = wait_until(
        lambda: signup_status(stack, first) == {"status": "ACTIVE"} or None,
        what="the first signup ACTIVE (profile-created through the auth worker)",
    )
    taken = sign_up(stack, role="USER", nickname="ANSWERED-nick")  # the same, case aside
    rejected = wait_until(
        lambda: signup_status(stack, taken).get("status") == "REJECTED" or None,
        what="the second signup REJECTED (profile-rejected through the auth worker)",
    )

    assert created["nickname"] == "answered-nick"
    assert active and rejected
    assert signup_status(stack, taken) == {"status": "REJECTED", "reason": "nickname_taken"}
    assert request("GET", f"{stack.url('member')}/members/{taken}")[0] == 404
    worker_log = stack.processes["auth-worker"].log_path.read_text()
    assert "profile-created" in worker_log and "profile-rejected" in worker_log


def signup_status(stack: Stack, member_id: str) -> dict[str, object]:
    status, body = request("GET", f"{stack.url('auth')}/auth/signups/{member_id}")
    assert status == 200, body
    return dict(body)


def test_redelivered_profile_insert_with_same_ce_id_creates_nothing_new(stack: Stack) -> None:
    partner_id = sign_up(stack, role="PARTNER", favoriteStyles=[1, 2, 3])
    wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary")
    original = next(
        r
        for r in read_topic(stack.bootstrap_servers, "profile-insert", expect=1)
        if r.key == partner_id.encode()
    )
    worker_port = stack.health_ports["member-worker"]
    before = duplicates(worker_port, "profile-insert")

    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers)
    for _ in range(3):
        producer.send("profile-insert", original.value, original.key, headers=original.headers)
    producer.flush()
    producer.close()
    # The inbox skips each copy and counts it; a copy that reached the handler again would
    # fail on the primary key and be dead-lettered instead, uncounted.
    wait_until(
        lambda: duplicates(worker_port, "profile-insert") >= before + 3,
        what="the member worker counts the 3 copies as duplicates",
    )

    assert duplicates(worker_port, "profile-insert") == before + 3
    assert dead_letters(stack.bootstrap_servers, "profile-insert", [partner_id]) == []
    assert member_counts(stack, [partner_id]) == {"users": 0, "partners": 1, "styles": 3}
    announced = [
        r
        for r in read_topic(stack.bootstrap_servers, "partner-created", expect=1)
        if r.key == partner_id.encode()
    ]
    assert len(announced) == 1
    assert summary_count(stack, [partner_id]) == 1
    assert dead_letters(stack.bootstrap_servers, "partner-created", [partner_id]) == []


def test_poison_record_lands_in_the_dlt_while_the_next_signup_still_flows(stack: Stack) -> None:
    poison_key = f"poison-{uuid.uuid4().hex[:8]}".encode()
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers)
    producer.send("profile-insert", b'{"uuid": "not-a-uuid", "role": "ADMIN"}', poison_key)
    producer.flush()
    producer.close()

    after = sign_up(stack, role="PARTNER")

    wait_for_status(f"{stack.url('batch')}/partners/{after}/summary")
    dead = wait_until(
        lambda: dead_letters(stack.bootstrap_servers, "profile-insert", [poison_key.decode()]),
        20,
        "the poison record reaches profile-insert.DLT",
    )
    assert len(dead) == 1
    assert dead[0].value == b'{"uuid": "not-a-uuid", "role": "ADMIN"}'
    assert "schema" in (dead[0].header("dlt-error") or "")


def test_member_worker_killed_mid_burst_loses_and_doubles_nothing(stack: Stack) -> None:
    roles = ["PARTNER" if n % 3 == 0 else "USER" for n in range(60)]
    member_ids: list[str] = []
    for n, role in enumerate(roles):
        member_ids.append(sign_up(stack, role=role, favoriteStyles=[1 + n % 5, 10]))
        if n == 20:
            stack.processes["member-worker"].signal(signal.SIGKILL)
            stack.processes["member-worker"].wait(5)
        if n == 40:
            stack.spawn("member-worker")
    partner_ids = [m for m, role in zip(member_ids, roles, strict=True) if role == "PARTNER"]

    def arrived() -> bool:
        counts = member_counts(stack, member_ids)
        return (
            counts["users"] + counts["partners"] == 60 and summary_count(stack, partner_ids) == 20
        )

    wait_until(arrived, 60, "all 60 members and 20 summaries arrive")
    # Whatever the killed worker had applied but not committed has been redelivered and
    # handled once both groups have committed their topics to the end.
    wait_caught_up(
        stack.bootstrap_servers,
        {"member-service": "profile-insert", "batch-service": "partner-created"},
    )

    assert member_counts(stack, member_ids) == {"users": 40, "partners": 20, "styles": 120}
    assert summary_count(stack, partner_ids) == 20
    assert dead_letters(stack.bootstrap_servers, "profile-insert", member_ids) == []
    assert dead_letters(stack.bootstrap_servers, "partner-created", partner_ids) == []
    # One inbox row per event: each was claimed (and so applied) exactly once.
    profile_events = event_ids(stack.bootstrap_servers, "profile-insert", member_ids)
    partner_events = event_ids(stack.bootstrap_servers, "partner-created", partner_ids)
    assert (len(profile_events), len(partner_events)) == (60, 20)
    assert inbox_rows(stack.database_urls["member"], "profile-insert", profile_events) == 60
    assert inbox_rows(stack.database_urls["batch"], "partner-created", partner_events) == 20
    for member_id in member_ids[::7]:
        _, body = wait_for_status(f"{stack.url('member')}/members/{member_id}")
        assert len(body["favoriteStyles"]) == 2


def test_requests_gunicorn_itself_rejects_are_answered_in_json(stack: Stack) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", stack.ports["member"], timeout=10)
    connection.request("GET", "/members/" + "a" * 5000)
    response = connection.getresponse()
    body = response.read()
    connection.close()

    assert response.status == 414
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body)["error"] == "uri_too_long"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("Cache-Control") == "no-store"


def test_sigterm_stops_every_process_cleanly_and_leaves_none_behind(stack: Stack) -> None:
    groups = [p.pid for p in stack.processes.values() if p.pid is not None]  # gunicorn workers too

    codes = stack.stop()

    assert codes == dict.fromkeys(stack.processes, 0)
    survivors = []
    for group in groups:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            continue
        survivors.append(group)
    assert survivors == []
