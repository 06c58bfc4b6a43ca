"""The rate limiter on a real Redis (scripts/ensure-redis.sh starts it): several API
processes sharing one Redis enforce one limit together, and what Redis holds does not
give away the emails it counts."""

from __future__ import annotations

import hashlib
import random

import pytest
import redis

from auth_service.ratelimit import Limit, RateLimiter, RedisCounter, key_secret

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.integration


def test_limiters_sharing_redis_enforce_one_limit_together() -> None:
    """Two API processes each have their own limiter; with Redis they count together."""
    window = random.randint(10_000, 20_000)  # a window (and so keys) no other run uses
    limits = {"signup-per-address": Limit(4, window)}
    secret = key_secret("the service's secret, the same in every process")
    first = RateLimiter(limits, RedisCounter(REDIS_URL), secret=secret)
    second = RateLimiter(limits, RedisCounter(REDIS_URL), secret=secret)
    address = f"10.{random.randint(0, 255)}.0.1"
    answers = [(first if n % 2 else second).check("signup-per-address", address) for n in range(5)]
    assert answers[:4] == [None] * 4
    assert answers[4] is not None and answers[4].retry_after <= 2 * window


def test_the_sliding_window_reads_the_window_before_from_redis() -> None:
    window = random.randint(30_001, 40_000)
    start = (10**9 // window + 1) * window  # the start of a fixed window
    clock = [start + window - 1.0]  # one second before the boundary
    limiter = RateLimiter(
        {"signup-per-address": Limit(4, window)},
        RedisCounter(REDIS_URL),
        clock=lambda: clock[0],
        secret=key_secret("s" * 32),
    )
    assert [limiter.check("signup-per-address", "k") for _ in range(4)] == [None] * 4
    clock[0] += 2.0  # the next fixed window: the four still weigh almost whole
    refusal = limiter.check("signup-per-address", "k")
    assert refusal is not None and window // 4 < refusal.retry_after <= window
    assert RedisCounter(REDIS_URL).add("x", window, clock[0], 0) == (0, 0)  # a read adds nothing


def test_what_redis_holds_cannot_be_matched_against_a_list_of_emails() -> None:
    window = random.randint(20_001, 30_000)
    email = f"someone{random.randint(0, 10**9)}@example.com"
    RateLimiter(
        {"login-failures-per-email": Limit(5, window)},
        RedisCounter(REDIS_URL),
        secret=key_secret("k" * 32),
    ).check("login-failures-per-email", email)
    stored = [
        key.decode()
        for key in redis.Redis.from_url(REDIS_URL).scan_iter(f"signup-pipeline:rate:*:{window}:*")
    ]
    assert len(stored) == 1
    unkeyed = hashlib.sha256(f"login-failures-per-email\0{email}".encode()).hexdigest()[:32]
    assert email not in stored[0] and unkeyed not in stored[0]
    # Another secret (another deployment) counts under other keys.
    other = RateLimiter(
        {"login-failures-per-email": Limit(1, window)},
        RedisCounter(REDIS_URL),
        secret=key_secret("j" * 32),
    )
    assert other.check("login-failures-per-email", email) is None
