"""Several API processes enforce one rate limit when they share Redis."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devtools.http_client import request
from devtools.stack import Stack
from tests.e2e.conftest import running_stack
from tests.unit.pipeline_harness import signup_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> Iterator[Stack]:
    window = random.randint(20_000, 30_000)  # a window, so keys, that no other run shares
    yield from running_stack(
        tmp_path_factory,
        postgres,
        kafka_bootstrap,
        "rl",
        api_workers=2,
        rate_limits=True,
        extra_env={
            "AUTH_RATE_LIMIT_REDIS_URL": "redis://127.0.0.1:6379/0",
            "AUTH_RATE_LIMIT_SIGNUP_PER_ADDRESS": f"3/{window}",
            # As behind nginx: the client is the address in X-Forwarded-For.
            "TRUSTED_PROXY_HOPS": "1",
        },
    )


def test_two_gunicorn_workers_sharing_redis_accept_exactly_the_limit(stack: Stack) -> None:
    # Each request on a new connection: gunicorn spreads them over both workers, which
    # with limits in process memory would accept up to 3 each.
    answers = [request("POST", f"{stack.url('auth')}/auth/signup", signup_body()) for _ in range(8)]
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 3, statuses
    assert statuses.count(429) == 5, statuses
    refused = next(body for status, body in answers if status == 429)
    assert refused["error"] == "too_many_requests"


def post_from(url: str, address: str, body: dict[str, Any]) -> tuple[int, float]:
    """(status, seconds) of one POST that a proxy forwarded for `address`."""
    request_ = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-Forwarded-For": address},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request_, timeout=30) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def test_the_owner_logs_in_under_a_stream_of_wrong_passwords_from_many_addresses(
    stack: Stack,
) -> None:
    """Counted in Redis by two gunicorn workers: 120 wrong passwords for a known email
    from 120 addresses, 4 at a time, and its owner's right password from a 121st still
    logs in (slowed down, never refused)."""
    auth = stack.url("auth")
    body = signup_body()
    status, _ = post_from(f"{auth}/auth/signup", f"203.0.113.{random.randint(1, 250)}", body)
    assert status == 201
    wrong = {"email": body["email"], "password": "not the password at all"}
    with ThreadPoolExecutor(4) as pool:
        attacks = list(
            pool.map(
                lambda n: post_from(f"{auth}/auth/login", f"198.51.100.{n}", wrong)[0],
                range(1, 121),
            )
        )
    right = {"email": body["email"].upper(), "password": body["password"]}
    owner, seconds = post_from(f"{auth}/auth/login", "192.0.2.200", right)
    assert attacks == [401] * 120
    assert owner == 200
    assert 0.25 <= seconds < 10  # slowed down (2 s at most), not refused
