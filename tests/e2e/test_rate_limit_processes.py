"""Several API processes enforce one rate limit when they share Redis."""

from __future__ import annotations

import random
from collections.abc import Iterator

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
