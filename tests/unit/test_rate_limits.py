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
    Limit,
    MemoryCounter,
    RateLimiter,
    RedisCounter,
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


def test_the_attempt_over_the_limit_is_refused_until_its_window_ends() -> None:
    clock = Clock(60 * 16_667 + 20.0)  # 20 s into a 60 s window
    limiter = RateLimiter({"signup-per-address": Limit(3, 60)}, MemoryCounter(), clock)
    assert [limiter.check("signup-per-address", "10.0.0.1") for _ in range(3)] == [None] * 3
    refusal = limiter.check("signup-per-address", "10.0.0.1")
    assert refusal is not None and (refusal.what, refusal.retry_after) == (
        "signup-per-address",
        40,
    )
    assert limiter.check("signup-per-address", "10.0.0.2") is None  # another key
    clock.now += 40
    assert limiter.check("signup-per-address", "10.0.0.1") is None  # a new window


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
    assert 1 <= int(refused.headers["Retry-After"]) <= 60  # type: ignore[attr-defined]
    assert other.status_code == 201  # type: ignore[attr-defined]


def test_the_per_email_limit_holds_whichever_address_the_attempts_come_from(
    database: Database,
) -> None:
    limiter = RateLimiter({"login-per-email": Limit(3, 900)}, MemoryCounter())
    client = limited_client(database, limiter)
    body = {"email": "Kim@Example.com", "password": "wrong password"}
    answers = [
        from_address(client, f"192.0.2.{n}", "/auth/login", body).status_code  # type: ignore[attr-defined]
        for n in range(4)
    ]
    # The same account, written differently, is the same key.
    again = from_address(client, "192.0.2.99", "/auth/login", {**body, "email": "kim@example.COM"})
    assert answers == [401, 401, 401, 429]
    assert again.status_code == 429  # type: ignore[attr-defined]


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
        counter.hit(key, 60, 0.0)
    assert counter.hit("d", 60, 1.0) == 1  # full: "b", counted longest ago, goes
    assert counter.hit("a", 60, 2.0) == 3  # kept
    assert counter.hit("b", 60, 3.0) == 1  # forgotten, starts again ("c" goes)
    assert counter.hit("c", 60, 4.0) == 1


def test_the_memory_counter_drops_a_window_when_it_ends_and_keeps_others_apart() -> None:
    counter = MemoryCounter()
    assert [counter.hit("a", 60, 59.0), counter.hit("a", 60, 59.5)] == [1, 2]
    assert counter.hit("a", 900, 59.5) == 1  # another window length, counted apart
    assert counter.hit("a", 60, 60.0) == 1  # the next minute
    assert counter.hit("a", 900, 60.0) == 2


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


def test_an_unreachable_redis_lets_attempts_through() -> None:
    limiter = RateLimiter({"login-per-email": Limit(1, 60)}, RedisCounter("redis://127.0.0.1:9/0"))
    assert [limiter.check("login-per-email", "a@b.co") for _ in range(3)] == [None] * 3


def test_every_limit_has_a_default_and_a_variable() -> None:
    """A kind of limit added to shared.config without a default (or the reverse) would
    be unconfigurable or unlimited."""
    from auth_service.ratelimit import DEFAULT_LIMITS, LIMIT_VARIABLES

    assert set(DEFAULT_LIMITS) == set(LIMIT_VARIABLES)


@pytest.mark.parametrize("path", ["/auth/signup", "/auth/login"])
def test_an_email_the_schema_refuses_never_reaches_the_limiter(
    database: Database, path: str
) -> None:
    """Seen by an outside probe: an unpaired surrogate in the email made the limiter,
    which encoded the email before validation, answer 500 with a traceback."""
    limiter = RateLimiter(
        {"signup-per-email": Limit(5, 60), "login-per-email": Limit(5, 60)}, MemoryCounter()
    )
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
