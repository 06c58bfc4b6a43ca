"""Signup and login are rate-limited per client address and per email: a 429 with a JSON
error and Retry-After, in memory or, shared by several processes, in Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from auth_service.api import create_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base, Member, OutboxEvent
from auth_service.ratelimit import (
    DEFAULT_LIMITS,
    LOGIN_DELAY_MAX,
    Limit,
    MemoryCounter,
    RateLimiter,
    client_key,
    key_secret,
    rate_limiter,
)
from shared.config import ConfigError, rate_limit_settings
from shared.storage.db import Database
from tests.schema import sqlite_database
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

SECRET = key_secret("the service's secret")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    with sqlite_database(tmp_path / "auth.db", Base.metadata) as database:
        yield database


def limited_client(database: Database, limiter: RateLimiter | None) -> FlaskClient:
    app = create_app(database, TokenIssuer("k" * 32), hasher=FAST_HASHER, limiter=limiter)
    return app.test_client()


def from_address(client: FlaskClient, address: str, path: str, body: dict[str, object]) -> object:
    return client.post(path, json=body, environ_base={"REMOTE_ADDR": address})


def test_the_attempt_over_the_limit_is_refused_until_the_sliding_window_has_room() -> None:
    clock = Clock(60 * 16_667 + 20.0)  # 20 s into a 60 s window
    limiter = RateLimiter({"signup-per-address": Limit(3, 60)}, MemoryCounter(), clock)
    assert [limiter.check("signup-per-address", "10.0.0.1") for _ in range(3)] == [None] * 3
    refusal = limiter.check("signup-per-address", "10.0.0.1")
    # 4 counted (the refused one too); one more fits once the 60 s window sliding past
    # them holds 2: 70 s later, half way through the next fixed window.
    assert refusal is not None and (refusal.what, refusal.retry_after) == (
        "signup-per-address",
        70,
    )
    assert limiter.check("signup-per-address", "10.0.0.2") is None  # another key
    clock.now += 40  # a new fixed window, but the sliding one still holds the four
    assert limiter.check("signup-per-address", "10.0.0.1") is not None
    clock.now += 60  # long enough after for 5 to have faded to under 2
    assert limiter.check("signup-per-address", "10.0.0.1") is None


def test_no_burst_of_twice_the_limit_around_a_window_boundary() -> None:
    """Seen by an outside probe with fixed windows: 40 signups in 4 s around a minute
    boundary, under a limit of 20 a minute."""
    clock = Clock(60 * 20_000 + 58.0)
    limiter = RateLimiter({"signup-per-address": Limit(20, 60)}, MemoryCounter(), clock)
    accepted = 0
    for _ in range(80):  # 80 attempts over 4 s, across the boundary
        accepted += limiter.check("signup-per-address", "10.0.0.1") is None
        clock.now += 0.05
    assert accepted == 20


@pytest.mark.parametrize("into", [0.0, 17.5, 59.9])
def test_retry_after_is_when_the_next_attempt_is_accepted(into: float) -> None:
    clock = Clock(60 * 30_000 + into)
    limiter = RateLimiter({"login-per-address": Limit(5, 60)}, MemoryCounter(), clock)
    for _ in range(4):
        limiter.check("login-per-address", "k")
        clock.now += 7.0
    refusal = None
    while refusal is None:
        refusal = limiter.check("login-per-address", "k")
    clock.now += refusal.retry_after - 1.0
    assert limiter.blocked("login-per-address", "k") is not None  # one second early
    clock.now += 1.0
    assert limiter.blocked("login-per-address", "k") is None


def test_signups_over_the_per_address_limit_get_429_json_with_retry_after(
    database: Database,
) -> None:
    limiter = RateLimiter({"signup-per-address": Limit(2, 60)}, MemoryCounter())
    client = limited_client(database, limiter)
    statuses = [
        from_address(client, "203.0.113.9", "/auth/signup", signup_body()).status_code  # type: ignore[attr-defined]
        for _ in range(3)
    ]
    refused = from_address(client, "203.0.113.9", "/auth/signup", signup_body())
    other = from_address(client, "198.51.100.7", "/auth/signup", signup_body())

    assert statuses == [201, 201, 429]
    assert refused.status_code == 429  # type: ignore[attr-defined]
    assert refused.json["error"] == "too_many_requests"  # type: ignore[attr-defined]
    # Within two windows: the sliding window still covers part of the one before.
    assert 1 <= int(refused.headers["Retry-After"]) <= 120  # type: ignore[attr-defined]
    assert other.status_code == 201  # type: ignore[attr-defined]


class Pauses(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def login_client(database: Database, limiter: RateLimiter) -> tuple[FlaskClient, Pauses]:
    pauses = Pauses()
    app = create_app(
        database, TokenIssuer("k" * 32), hasher=FAST_HASHER, limiter=limiter, pause=pauses
    )
    return app.test_client(), pauses


def default_limits(clock: Clock) -> RateLimiter:
    limits = {name: Limit.parse(name, text) for name, text in DEFAULT_LIMITS.items()}
    return RateLimiter(limits, MemoryCounter(), clock)


def test_wrong_passwords_from_many_addresses_never_lock_the_owner_out(
    database: Database,
) -> None:
    """Seen by an outside probe: eleven wrong passwords from different addresses, and
    the owner's right one got 429 with Retry-After: 861."""
    clock = Clock()
    client, pauses = login_client(database, default_limits(clock))
    body = signup_body()
    assert client.post("/auth/signup", json=body).status_code == 201
    wrong = {"email": body["email"], "password": "not the password"}
    attacks = [
        from_address(client, f"198.51.{n // 250}.{n % 250}", "/auth/login", wrong).status_code  # type: ignore[attr-defined]
        for n in range(300)
    ]
    right = {"email": body["email"].upper(), "password": body["password"]}
    owner = from_address(client, "203.0.113.50", "/auth/login", right)

    assert attacks == [401] * 300  # never refused either: slowed down
    assert owner.status_code == 200, owner.json  # type: ignore[attr-defined]
    # No delay up to the limit's 10 failures, then a growing one from 0.25 s, capped.
    assert 0.25 < pauses[0] < 0.3 and pauses == sorted(pauses)
    assert len(pauses) == (300 - 11) + 1 and pauses[-1] == LOGIN_DELAY_MAX


def test_failures_refuse_only_the_address_they_come_from(database: Database) -> None:
    clock = Clock()
    client, _ = login_client(database, default_limits(clock))
    body = signup_body()
    client.post("/auth/signup", json=body)
    wrong = {"email": body["email"], "password": "not the password"}
    answers = [
        from_address(client, "192.0.2.7", "/auth/login", wrong).status_code  # type: ignore[attr-defined]
        for _ in range(11)
    ]
    right = {"email": body["email"], "password": body["password"]}
    refused = from_address(client, "192.0.2.7", "/auth/login", right)
    elsewhere = from_address(client, "192.0.2.8", "/auth/login", right)
    other_email = from_address(client, "192.0.2.7", "/auth/login", {**wrong, "email": "o@x.com"})

    assert answers == [401] * 10 + [429]
    assert refused.status_code == 429  # type: ignore[attr-defined]
    assert "failed logins for this email from this address" in refused.json["message"]  # type: ignore[attr-defined]
    assert 1 <= int(refused.headers["Retry-After"]) <= 900  # type: ignore[attr-defined]
    assert elsewhere.status_code == 200  # type: ignore[attr-defined]
    assert other_email.status_code == 401  # type: ignore[attr-defined]
    # The same mailbox written another way is the same key.
    variant = {**right, "email": body["email"].upper()}
    assert from_address(client, "192.0.2.7", "/auth/login", variant).status_code == 429  # type: ignore[attr-defined]


def test_successful_logins_count_toward_no_failure_limit(database: Database) -> None:
    client, pauses = login_client(database, default_limits(Clock()))
    body = signup_body()
    client.post("/auth/signup", json=body)
    right = {"email": body["email"], "password": body["password"]}
    answers = [
        from_address(client, "192.0.2.9", "/auth/login", right).status_code  # type: ignore[attr-defined]
        for _ in range(25)
    ]
    assert answers == [200] * 25
    assert pauses == []


def test_a_refused_signup_stores_nothing(database: Database) -> None:
    limiter = RateLimiter({"signup-per-email": Limit(1, 3600)}, MemoryCounter())
    client = limited_client(database, limiter)
    body = signup_body()
    assert client.post("/auth/signup", json=body).status_code == 201
    other_email = {**signup_body(), "email": body["email"].upper()}
    second = client.post("/auth/signup", json=other_email)
    assert second.status_code == 429  # refused before it could even be a 409
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Member)) == 1
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 1


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2::17", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        (None, "unknown"),
        ("not an address", "not an address"),
    ],
)
def test_a_client_is_counted_by_its_ipv4_address_or_its_ipv6_64(
    address: str | None, key: str
) -> None:
    assert client_key(address) == key


def test_one_ipv6_host_cannot_escape_the_per_address_limit_by_changing_its_address(
    database: Database,
) -> None:
    limiter = RateLimiter({"login-per-address": Limit(3, 60)}, MemoryCounter())
    client = limited_client(database, limiter)
    answers = [
        from_address(
            client, f"2001:db8:1:2::{n:x}", "/auth/login", {"email": f"u{n}@x.co", "password": "p"}
        ).status_code  # type: ignore[attr-defined]
        for n in range(1, 9)
    ]
    neighbour = from_address(
        client, "2001:db8:1:3::1", "/auth/login", {"email": "v@x.co", "password": "p"}
    )
    assert answers == [401] * 3 + [429] * 5
    assert neighbour.status_code == 401  # type: ignore[attr-defined]


def test_the_memory_counter_forgets_the_least_recently_counted_key_when_full() -> None:
    counter = MemoryCounter(max_keys=3)
    for key in ("a", "b", "c", "a"):
        counter.add(key, 60, 0.0, 1)
    assert counter.add("d", 60, 1.0, 1) == (0, 1)  # full: "b", counted longest ago, goes
    assert counter.add("a", 60, 2.0, 1) == (0, 3)  # kept
    assert counter.add("b", 60, 3.0, 1) == (0, 1)  # forgotten, starts again ("c" goes)
    assert counter.add("c", 60, 4.0, 1) == (0, 1)


def test_the_memory_counter_keeps_one_window_before_and_keeps_window_lengths_apart() -> None:
    counter = MemoryCounter()
    assert [counter.add("a", 60, 59.0, 1), counter.add("a", 60, 59.5, 1)] == [(0, 1), (0, 2)]
    assert counter.add("a", 900, 59.5, 1) == (0, 1)  # another window length, counted apart
    assert counter.add("a", 60, 60.0, 1) == (2, 1)  # the next minute sees the one before
    assert counter.add("a", 60, 61.0, 0) == (2, 1)  # reading counts nothing
    assert counter.add("a", 900, 60.0, 1) == (0, 2)
    assert counter.add("a", 60, 180.0, 1) == (0, 1)  # two minutes on: both gone


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"AUTH_RATE_LIMITS": "maybe"}, "must be on or off"),
        ({"AUTH_RATE_LIMIT_SIGNUP_PER_EMAIL": "five"}, "is not a limit"),
        ({"AUTH_RATE_LIMIT_LOGIN_PER_ADDRESS": "0/60"}, "is not a limit"),
        ({"AUTH_RATE_LIMIT_REDIS_URL": "http://nope"}, "not a Redis URL"),
    ],
)
def test_a_wrong_rate_limit_setting_is_a_clear_config_error(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        rate_limiter(rate_limit_settings(env), SECRET)


def test_rate_limits_can_be_switched_off() -> None:
    assert rate_limiter(rate_limit_settings({"AUTH_RATE_LIMITS": "off"}), SECRET) is None
    assert rate_limiter(rate_limit_settings({}), SECRET) is not None


def test_an_unreachable_redis_refuses_signup_and_login_with_503_and_unreadiness(
    database: Database,
) -> None:
    """Seen by an outside probe: with the Redis URL pointing at nothing, every signup and
    login got through and readiness stayed 200."""
    limiter = rate_limiter(
        rate_limit_settings({"AUTH_RATE_LIMIT_REDIS_URL": "redis://127.0.0.1:9/0"}), SECRET
    )
    client = limited_client(database, limiter)
    body = signup_body()
    signup = client.post("/auth/signup", json=body)
    login = client.post("/auth/login", json={"email": body["email"], "password": "x" * 9})
    ready = client.get("/health/ready")
    for answer in (signup, login, ready):
        assert answer.status_code == 503, answer.json
        assert answer.json["error"] == "unavailable"
    assert signup.headers["Retry-After"] == login.headers["Retry-After"] == "5"
    assert "rate-limit store" in ready.json["message"]
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Member)) == 0


def test_without_redis_more_than_one_worker_is_refused_at_start() -> None:
    """Seen by an outside probe: two workers without Redis each counted alone, and 40 of
    60 signups from one address got through, without a word at start."""
    with pytest.raises(ConfigError, match="2 API workers would each count alone"):
        rate_limiter(rate_limit_settings({}), SECRET, workers=2)
    assert rate_limiter(rate_limit_settings({}), SECRET, workers=1) is not None
    shared = {"AUTH_RATE_LIMIT_REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert rate_limiter(rate_limit_settings(shared), SECRET, workers=4) is not None
    off = {"AUTH_RATE_LIMITS": "off"}
    assert rate_limiter(rate_limit_settings(off), SECRET, workers=4) is None


def test_the_retired_per_email_login_limit_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="lock its owner out"):
        rate_limit_settings({"AUTH_RATE_LIMIT_LOGIN_PER_EMAIL": "10/900"})


def test_every_limit_has_a_default_and_a_variable() -> None:
    """A kind of limit added to shared.config without a default (or the reverse) would
    be unconfigurable or unlimited."""
    from auth_service.ratelimit import LIMIT_VARIABLES

    assert set(DEFAULT_LIMITS) == set(LIMIT_VARIABLES)


@pytest.mark.parametrize("path", ["/auth/signup", "/auth/login"])
def test_an_email_the_schema_refuses_never_reaches_the_limiter(
    database: Database, path: str
) -> None:
    """Seen by an outside probe: an unpaired surrogate in the email made the limiter,
    which encoded the email before validation, answer 500 with a traceback."""
    limits = {name: Limit(5, 60) for name in DEFAULT_LIMITS}
    limiter = RateLimiter(limits, MemoryCounter())
    client = limited_client(database, limiter)
    body = (
        {**signup_body(), "email": "EMAIL"}
        if path.endswith("signup")
        else {
            "email": "EMAIL",
            "password": "correct horse battery staple",
        }
    )
    raw = json.dumps(body).replace('"EMAIL"', '"\\ud800@example.com"')
    answer = client.post(path, data=raw, content_type="application/json")
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["error"] == "validation_failed"
