"""A member's whole life on the contract's processes, a real broker and PostgreSQL
(issue 17): a nickname clash ends REJECTED and erased, one of twenty concurrent asks for
a nickname wins, a deleted partner leaves nothing personal in any of the three databases,
and how long a signup takes to be ACTIVE and a deletion to reach the last service."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Date, MetaData, String, Text, cast, create_engine, func, or_, select

from auth_service.models import Base as AuthBase
from batch_service.models import Base as BatchBase
from devtools.stack import Stack
from member_service.models import Base as MemberBase
from tests.unit.pipeline_harness import signup_body

pytestmark = pytest.mark.e2e

POLL = 0.01  # seconds between two polls of a timed wait
TIMED_RUNS = 20
METADATA: dict[str, MetaData] = {
    "auth": AuthBase.metadata,
    "member": MemberBase.metadata,
    "batch": BatchBase.metadata,
}


def call(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON body, headers) of one request, with a bearer token if given."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def sign_up(stack: Stack, body: dict[str, Any]) -> str:
    status, answer, headers = call("POST", f"{stack.url('auth')}/auth/signup", body)
    assert status == 201, answer
    assert headers["Location"] == f"/auth/signups/{answer['uuid']}"
    return str(answer["uuid"])


def signup_status(stack: Stack, member_id: str) -> dict[str, Any]:
    status, answer, _ = call("GET", f"{stack.url('auth')}/auth/signups/{member_id}")
    assert status == 200, answer
    return dict(answer)


def timed(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Seconds until `predicate()` is true, polled every POLL seconds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(POLL)
    return time.monotonic() - start


def settled(stack: Stack, member_id: str, timeout: float = 30.0) -> tuple[dict[str, Any], float]:
    """The signup's answer once it is no longer PENDING, and the seconds it took."""
    seen: dict[str, Any] = {}

    def answered() -> bool:
        seen.update(signup_status(stack, member_id))
        return bool(seen["status"] != "PENDING")

    seconds = timed(answered, f"signup {member_id} answered (ACTIVE or REJECTED)", timeout)
    return seen, seconds


def profile_status(stack: Stack, member_id: str) -> int:
    return call("GET", f"{stack.url('member')}/members/{member_id}")[0]


def summary_status(stack: Stack, member_id: str) -> int:
    return call("GET", f"{stack.url('batch')}/partners/{member_id}/summary")[0]


def log_in(stack: Stack, email: str, password: str) -> str:
    status, answer, _ = call(
        "POST", f"{stack.url('auth')}/auth/login", {"email": email, "password": password}
    )
    assert status == 200, answer
    return str(answer["accessToken"])


def personal_body(**overrides: Any) -> dict[str, Any]:
    """A signup whose every personal value is its own (nothing another test's member
    holds), so that finding one in a table can only be this member's."""
    tag = uuid.uuid4().hex[:10]
    day = dt_of(random.randrange(1, 20_000))
    return signup_body(
        email=f"erase-{tag}@example.com",
        name=f"Erasable {tag}",
        phone=f"+82-10-{random.randrange(10**7, 10**8)}",
        birth=day,
        nickname=f"gone-{tag}",
        **overrides,
    )


def dt_of(days: int) -> str:
    return (dt.date(1920, 1, 1) + dt.timedelta(days=days)).isoformat()


def rows_holding(stack: Stack, text: str) -> list[tuple[str, str, str, Any]]:
    """(service, table, column, value) of every String, Text or Date column, in every
    table of the three services' databases, whose value (as text) contains `text`,
    case-insensitively: personal data left behind, outbox payloads included."""
    pattern = f"%{text.lower()}%"
    found = []
    for service, metadata in METADATA.items():
        engine = create_engine(stack.database_urls[service])
        try:
            with engine.connect() as connection:
                for table in metadata.sorted_tables:
                    columns = [c for c in table.columns if isinstance(c.type, String | Text | Date)]
                    if not columns:
                        continue
                    as_text = [cast(c, Text) for c in columns]
                    query = select(*as_text).where(
                        or_(*(func.lower(c).like(pattern) for c in as_text))
                    )
                    for row in connection.execute(query):
                        for column, value in zip(columns, row, strict=True):
                            if value is not None and text.lower() in str(value).lower():
                                found.append((service, table.name, column.name, value))
        finally:
            engine.dispose()
    return found


def outbox_topics(stack: Stack, service: str, member_id: str) -> list[str]:
    """The topics of the outbox rows keyed by `member_id` in `service`'s database."""
    outbox = METADATA[service].tables["outbox"]
    engine = create_engine(stack.database_urls[service])
    try:
        with engine.connect() as connection:
            query = select(outbox.c.topic).where(outbox.c.key == member_id).order_by(outbox.c.id)
            return list(connection.scalars(query))
    finally:
        engine.dispose()


@dataclass
class PartnerLife:
    member_id: str
    body: dict[str, Any]
    token: str
    to_active: float  # seconds from the 201 to ACTIVE
    to_erased: float  # seconds from the 202 to 404 from the member and batch APIs


def live_and_delete_a_partner(
    stack: Stack, before_deletion: Callable[[dict[str, Any]], None] | None = None
) -> PartnerLife:
    """Sign up a partner, wait until ACTIVE (timed) and its summary, log in, delete the
    account, wait until the member and batch APIs no longer know it (timed);
    `before_deletion` sees the signup body just before the DELETE."""
    body = personal_body(role="PARTNER")
    member_id = sign_up(stack, body)
    to_active = timed(
        lambda: signup_status(stack, member_id)["status"] != "PENDING",
        f"signup {member_id} answered",
    )
    assert signup_status(stack, member_id) == {"status": "ACTIVE"}
    timed(lambda: summary_status(stack, member_id) == 200, f"summary of {member_id} opened")
    assert profile_status(stack, member_id) == 200
    token = log_in(stack, body["email"], body["password"])
    if before_deletion is not None:
        before_deletion(body)

    status, answer, _ = call(
        "DELETE", f"{stack.url('auth')}/auth/me", {"password": body["password"]}, token
    )
    assert (status, answer) == (202, {"uuid": member_id})
    to_erased = timed(
        lambda: profile_status(stack, member_id) == 404 and summary_status(stack, member_id) == 404,
        f"partner {member_id} erased from the member and batch services",
    )
    return PartnerLife(member_id, body, token, to_active, to_erased)


def test_a_taken_nickname_ends_rejected_and_erased_and_the_email_is_free_again(
    stack: Stack,
) -> None:
    holder = sign_up(stack, signup_body(role="USER", nickname="Mimi"))
    assert settled(stack, holder)[0] == {"status": "ACTIVE"}

    body = signup_body(role="PARTNER", nickname="mimi")  # the same nickname, case aside
    clash = sign_up(stack, body)
    answer, seconds = settled(stack, clash)
    print(f"nickname clash: REJECTED {seconds * 1000:.0f} ms after the 201")

    assert answer == {"status": "REJECTED", "reason": "nickname_taken"}
    assert seconds < 10, "a rejection is a matter of seconds at most"
    assert profile_status(stack, clash) == 404
    assert summary_status(stack, clash) == 404
    again = sign_up(stack, {**body, "nickname": "not-mimi"})
    assert again not in (clash, holder)
    assert settled(stack, again)[0] == {"status": "ACTIVE"}


def test_of_twenty_concurrent_signups_for_one_nickname_exactly_one_is_active(
    stack: Stack,
) -> None:
    variants = ["Crowded", "crowded", "CROWDED", "cRoWdEd"]
    bodies = [signup_body(nickname=variants[n % len(variants)]) for n in range(20)]
    ids: list[str | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def one(n: int) -> None:
        start.wait()
        ids[n] = sign_up(stack, bodies[n])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(ids), "every signup answered 201"
    answers = [settled(stack, member_id)[0] for member_id in ids if member_id]

    active = [a for a in answers if a == {"status": "ACTIVE"}]
    rejected = [a for a in answers if a == {"status": "REJECTED", "reason": "nickname_taken"}]
    assert (len(active), len(rejected)) == (1, 19), answers
    profiles = [profile_status(stack, member_id) for member_id in ids if member_id]
    assert sorted(profiles) == [200] + [404] * 19


def test_a_deleted_partner_leaves_nothing_personal_in_any_database(stack: Stack) -> None:
    def personal(body: dict[str, Any]) -> list[str]:
        return [body[field] for field in ("email", "name", "phone", "birth", "nickname")]

    def stored_while_alive(body: dict[str, Any]) -> None:
        # The search finds each value while the member lives (so its silence after the
        # deletion means something): the email in auth, the nickname in member too.
        for value in personal(body):
            assert rows_holding(stack, value), f"{value!r} not found before the deletion"
        assert {s for s, *_ in rows_holding(stack, body["nickname"])} == {"auth", "member"}

    life = live_and_delete_a_partner(stack, before_deletion=stored_while_alive)
    body = life.body

    for value in personal(body):
        assert rows_holding(stack, value) == [], f"{value!r} is still stored"
    # Of the member's outbox rows, only the deletion's announcements are left: the
    # others are purged with its data, published or not.
    assert outbox_topics(stack, "auth", life.member_id) == ["profile-delete"]
    assert outbox_topics(stack, "member", life.member_id) == ["partner-deleted"]
    status, answer, _ = call("GET", f"{stack.url('auth')}/auth/me", token=life.token)
    assert (status, answer["error"]) == (401, "invalid_token")
    again = sign_up(stack, {**body, "nickname": f"back-{uuid.uuid4().hex[:8]}"})
    assert again != life.member_id


def test_lifecycle_timings(stack: Stack) -> None:
    """Not a benchmark: how long the closing note's two waits take here, printed."""
    lives = [live_and_delete_a_partner(stack) for _ in range(TIMED_RUNS)]
    to_active = sorted(life.to_active * 1000 for life in lives)
    to_erased = sorted(life.to_erased * 1000 for life in lives)

    def p90(values: list[float]) -> float:
        return statistics.quantiles(values, n=10, method="inclusive")[-1]

    print(
        f"lifecycle timings: signup->ACTIVE median {statistics.median(to_active):.0f} ms "
        f"p90 {p90(to_active):.0f} ms; delete->erased median "
        f"{statistics.median(to_erased):.0f} ms p90 {p90(to_erased):.0f} ms (n={TIMED_RUNS})"
    )
    assert max(to_active) < 15_000 and max(to_erased) < 15_000
