"""Rate limits: at most N attempts per window for one key (a client address, an email).

Fixed windows, counted in this process's memory by default, or in Redis when a URL is
configured, so that every API process (every gunicorn worker, every copy) enforces one
limit together. Keys are HMACs under a server secret before they are stored: what Redis
holds cannot be matched against a list of email addresses. An IPv6 client is counted
by its /64, which one host controls whole. A Redis that does not answer lets requests
through (and says so in the log): limits protect the service, they must not take it
down.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared.config import (
    RATE_LIMIT_VARIABLES,
    ConfigError,
    RateLimitSettings,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """`attempts` per `window` seconds."""

    attempts: int
    window: int

    @classmethod
    def parse(cls, variable: str, text: str) -> Limit:
        """`10/60`: ten per minute."""
        count, _, seconds = text.partition("/")
        try:
            limit = cls(int(count), int(seconds))
        except ValueError:
            limit = cls(0, 0)
        if limit.attempts < 1 or limit.window < 1:
            raise ConfigError(
                f"{variable}={text!r} is not a limit: use ATTEMPTS/SECONDS, e.g. 10/60"
            )
        return limit


class Counter(Protocol):
    """Where attempts are counted."""

    def hit(self, key: str, window: int, now: float) -> int:
        """Count one attempt for `key` in the window holding `now`; the window's total."""
        ...


class MemoryCounter:
    """Counts in this process (one limit per process: enough for one API process).

    One table per window length, for its current window only: when the window ends the
    table is dropped whole. A table holds at most `max_keys` keys; past that the key
    counted longest ago is forgotten, so memory (about 9 MB per table when full) and
    time per attempt stay bounded whatever a flood of distinct keys does. Forgetting
    takes 50,000 other keys counted within one window.
    """

    def __init__(self, max_keys: int = 50_000) -> None:
        self._windows: dict[int, tuple[int, OrderedDict[str, int]]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def hit(self, key: str, window: int, now: float) -> int:
        """See Counter."""
        index = int(now // window)
        with self._lock:
            current, counts = self._windows.get(window, (index, OrderedDict()))
            if current != index:
                counts = OrderedDict()
            self._windows[window] = (index, counts)
            count = counts.get(key, 0) + 1
            counts[key] = count
            counts.move_to_end(key)  # the first key is the one counted longest ago
            if len(counts) > self._max_keys:
                counts.popitem(last=False)
            return count


class RedisCounter:
    """Counts in Redis, shared by every process that uses the same URL."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def hit(self, key: str, window: int, now: float) -> int:
        """See Counter."""
        slot = f"signup-pipeline:rate:{key}:{window}:{int(now // window)}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(slot)
        pipe.expire(slot, window + 1)
        count, _ = pipe.execute()
        return int(count)

    def ping(self) -> None:
        """Raise unless Redis answers."""
        self._redis.ping()


@dataclass(frozen=True)
class Refusal:
    """An attempt over its limit: what was exceeded and when to come back."""

    what: str
    retry_after: int


def client_key(address: str | None) -> str:
    """The key a client address is counted under: an IPv4 address as it is (also when
    written IPv4-mapped), an IPv6 address by its /64."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def key_secret(master: str) -> bytes:
    """The secret rate-limit keys are made with, derived from the service's own secret
    (every process of the service derives the same one)."""
    return hmac.new(master.encode(), b"signup-pipeline rate-limit keys", hashlib.sha256).digest()


class RateLimiter:
    """Checks named limits for keys; `check` counts the attempt and says if it is over.

    Processes that share a counter must share `secret` too (a random one otherwise)."""

    def __init__(
        self,
        limits: Mapping[str, Limit],
        counter: Counter,
        clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
    ) -> None:
        self._limits = dict(limits)
        self._counter = counter
        self._clock = clock
        self._secret = secret or os.urandom(32)
        self._warned_at = 0.0

    def check(self, name: str, key: str) -> Refusal | None:
        """Count an attempt of kind `name` (e.g. `signup-per-email`) for `key`; a Refusal
        if that makes it one too many in its window."""
        limit = self._limits.get(name)
        if limit is None:
            return None
        now = self._clock()
        digest = hmac.new(self._secret, f"{name}\0{key}".encode(), hashlib.sha256).hexdigest()[:32]
        try:
            count = self._counter.hit(digest, limit.window, now)
        except Exception as exc:  # the store is away: let the attempt through
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("rate-limit store unavailable, not limiting: %s", exc)
            return None
        if count <= limit.attempts:
            return None
        retry_after = math.ceil(limit.window - now % limit.window)
        return Refusal(name, max(retry_after, 1))


# Defaults: generous to people, costly to scripts. Signups per email also bound how fast
# the 409 `email_taken` answer can be used to test whether an address has an account.
DEFAULT_LIMITS = {
    "signup-per-address": "20/60",
    "signup-per-email": "5/3600",
    "login-per-address": "30/60",
    "login-per-email": "10/900",
}
LIMIT_VARIABLES = RATE_LIMIT_VARIABLES  # kind -> AUTH_RATE_LIMIT_<KIND>


def rate_limiter(settings: RateLimitSettings, secret: bytes) -> RateLimiter | None:
    """The auth API's limits: AUTH_RATE_LIMITS=off disables them; AUTH_RATE_LIMIT_<KIND>
    (ATTEMPTS/SECONDS) overrides one; AUTH_RATE_LIMIT_REDIS_URL shares them, between
    processes that pass the same `secret` (see key_secret): required, because a
    per-process secret would split a shared count without a word."""
    switch = (settings.switch or "on").lower()
    if switch not in ("on", "off"):
        raise ConfigError(f"AUTH_RATE_LIMITS={switch!r} must be on or off")
    if switch == "off":
        return None
    limits = {
        name: Limit.parse(LIMIT_VARIABLES[name], settings.limits.get(name) or default)
        for name, default in DEFAULT_LIMITS.items()
    }
    url = settings.redis_url
    counter: Any = MemoryCounter()
    if url:
        try:
            counter = RedisCounter(url)
        except ValueError as exc:
            raise ConfigError(f"AUTH_RATE_LIMIT_REDIS_URL is not a Redis URL: {exc}") from None
    return RateLimiter(limits, counter, secret=secret)
