"""Rate limits: at most N attempts per sliding window for one key (a client address, an
email, both).

Counted in this process's memory (one API process only), or in Redis when a URL is
configured, so that every API process (every gunicorn worker, every copy) enforces one
limit together. Keys are HMACs under a server secret before they are stored: what Redis
holds cannot be matched against a list of email addresses. An IPv6 client is counted
by its /64, which one host controls whole. A Redis that does not answer fails closed:
the limited actions (signup, login) answer 503 and the API is not ready until it
answers again; letting them through uncounted would switch the limits off for whoever
can make Redis slow.
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
from typing import Protocol

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
    """Where attempts are counted, in fixed windows; the limiter slides over two of them."""

    def add(self, key: str, window: int, now: float, amount: int) -> tuple[int, int]:
        """Add `amount` (0: only read) to `key`'s count in the window holding `now`; the
        counts of the window before it and of that window, after the addition."""
        ...

    def ping(self) -> None:
        """Raise unless the counts can be read and written."""
        ...


class MemoryCounter:
    """Counts in this process (one limit per process: enough for one API process; the
    auth API refuses to start with it under more than one gunicorn worker).

    Per window length, a table for the current window and one for the window before;
    when a window ends the older table is dropped whole. A table holds at most
    `max_keys` keys; past that the key counted longest ago is forgotten, so memory
    (about 9 MB per table when full) and time per attempt stay bounded whatever a flood
    of distinct keys does. Forgetting takes 50,000 other keys counted within one window.
    """

    def __init__(self, max_keys: int = 50_000) -> None:
        self._windows: dict[int, tuple[int, OrderedDict[str, int], OrderedDict[str, int]]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def add(self, key: str, window: int, now: float, amount: int) -> tuple[int, int]:
        """See Counter."""
        index = int(now // window)
        with self._lock:
            current, counts, before = self._windows.get(
                window, (index, OrderedDict(), OrderedDict())
            )
            if current != index:
                before = counts if current == index - 1 else OrderedDict()
                counts = OrderedDict()
            self._windows[window] = (index, counts, before)
            count = counts.get(key, 0) + amount
            if amount:
                counts[key] = count
                counts.move_to_end(key)  # the first key is the one counted longest ago
                if len(counts) > self._max_keys:
                    counts.popitem(last=False)
            return before.get(key, 0), count

    def ping(self) -> None:
        """See Counter: process memory is always there."""


class RedisCounter:
    """Counts in Redis, shared by every process that uses the same URL."""

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def add(self, key: str, window: int, now: float, amount: int) -> tuple[int, int]:
        """See Counter."""
        index = int(now // window)
        slot = f"signup-pipeline:rate:{key}:{window}:{index}"
        previous = f"signup-pipeline:rate:{key}:{window}:{index - 1}"
        if not amount:
            before, count = self._redis.mget(previous, slot)
            return int(before or 0), int(count or 0)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(slot, amount)
        pipe.expire(slot, 2 * window + 1)  # read as the window before, for one more window
        pipe.get(previous)
        count, _, before = pipe.execute()
        return int(before or 0), int(count)

    def ping(self) -> None:
        """See Counter."""
        self._redis.ping()


class LimitsUnavailable(Exception):
    """The shared counts cannot be reached: limited actions must be refused (503), not
    let through uncounted."""


def _retry_after(window: int, into: float, before: int, count: int, room: int) -> int:
    """Seconds until the sliding count falls to `room`, if nothing more is counted: the
    window before's share falls by before/window a second until the window ends; after
    that only this window's count is left, and it fades the same way."""
    if count <= room and before:
        wait = (before * (1 - into / window) + count - room) * window / before
    elif count > room:
        wait = (window - into) + window * (1 - room / count)
    else:
        wait = 1.0
    return max(1, math.ceil(wait))


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
    """Checks named limits for keys over a sliding window: the count of the current
    fixed window plus the window before's, weighted by how much of it the sliding window
    still covers (the approximation Cloudflare and Redis's own docs describe; exact when
    attempts are spread evenly, and it never lets the 2x burst through that two fixed
    windows allow around their boundary).

    Processes that share a counter must share `secret` too (a random one otherwise).
    When the counter cannot be reached every call raises LimitsUnavailable."""

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
        if that makes it one too many in the sliding window."""
        return self._count(name, key, 1)

    def blocked(self, name: str, key: str) -> Refusal | None:
        """A Refusal if one more attempt of kind `name` for `key` would be one too many;
        counts nothing."""
        return self._count(name, key, 0)

    def record(self, name: str, key: str) -> None:
        """Count an attempt (e.g. a failed login) without checking it."""
        self._count(name, key, 1)

    def excess(self, name: str, key: str) -> float:
        """How far over its limit `key` is, in limits: 0 within it, 1.0 at twice it."""
        limit = self._limits.get(name)
        if limit is None:
            return 0.0
        level = self._level(name, key, limit, 0)[0]
        return max(0.0, (level - limit.attempts) / limit.attempts)

    def ping(self) -> None:
        """LimitsUnavailable unless the counter answers."""
        try:
            self._counter.ping()
        except Exception as exc:
            raise LimitsUnavailable(str(exc)) from exc

    def _count(self, name: str, key: str, amount: int) -> Refusal | None:
        limit = self._limits.get(name)
        if limit is None:
            return None
        level, into, before, count = self._level(name, key, limit, amount)
        room = limit.attempts - 1  # the level at which one more attempt still fits
        if level - amount <= room:
            return None
        return Refusal(name, _retry_after(limit.window, into, before, count, room))

    def _level(
        self, name: str, key: str, limit: Limit, amount: int
    ) -> tuple[float, float, int, int]:
        """The sliding count, how far into its window now is, and the two windows' counts."""
        now = self._clock()
        digest = self._digest(name, key)  # outside the try: a bad key is a bug, not an outage
        try:
            before, count = self._counter.add(digest, limit.window, now, amount)
        except Exception as exc:
            if now - self._warned_at > 60:  # one line a minute, not one per request
                self._warned_at = now
                log.error("rate-limit store unavailable, refusing limited requests: %s", exc)
            raise LimitsUnavailable(str(exc)) from exc
        into = now % limit.window
        return before * (1 - into / limit.window) + count, into, before, count

    def _digest(self, name: str, key: str) -> str:
        return hmac.new(self._secret, f"{name}\0{key}".encode(), hashlib.sha256).hexdigest()[:32]


# Defaults: generous to people, costly to scripts. Signups per email also bound how fast
# the 409 `email_taken` answer can be used to test whether an address has an account.
# Failed logins are counted per (email, address), which refuses only that address for
# that email, and per email, which slows every login for the email down (login_delay)
# and refuses nobody: a per-email refusal would let anyone lock its owner out.
DEFAULT_LIMITS = {
    "signup-per-address": "20/60",
    "signup-per-email": "5/3600",
    "login-per-address": "30/60",
    "login-failures-per-email-and-address": "10/900",
    "login-failures-per-email": "10/900",
}
LIMIT_VARIABLES = RATE_LIMIT_VARIABLES  # kind -> AUTH_RATE_LIMIT_<KIND>

# Past its failure limit, an email's logins wait BASE, doubling with each further limit's
# worth of failures, up to MAX seconds.
LOGIN_DELAY_BASE = 0.25
LOGIN_DELAY_MAX = 2.0


def login_delay(excess: float) -> float:
    """Seconds a login waits before its password is checked, given how far (in limits,
    see RateLimiter.excess) its email's failures are over their limit."""
    if excess <= 0:
        return 0.0
    return min(LOGIN_DELAY_MAX, LOGIN_DELAY_BASE * 2 ** min(excess, 16))


def rate_limiter(
    settings: RateLimitSettings, secret: bytes, *, workers: int = 1
) -> RateLimiter | None:
    """The auth API's limits: AUTH_RATE_LIMITS=off disables them; AUTH_RATE_LIMIT_<KIND>
    (ATTEMPTS/SECONDS) overrides one; AUTH_RATE_LIMIT_REDIS_URL shares them, between
    processes that pass the same `secret` (see key_secret): required, because a
    per-process secret would split a shared count without a word. Without Redis the
    counts live in one process's memory, which `workers` (the gunicorn workers that will
    serve) above 1 would split: refused, as a ConfigError."""
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
    if not url:
        if workers > 1:
            raise ConfigError(
                f"rate limits are on and {workers} API workers would each count alone "
                f"({workers}x every limit): set AUTH_RATE_LIMIT_REDIS_URL to share the "
                "counts, or run one worker (--workers 1, WEB_CONCURRENCY=1)"
            )
        return RateLimiter(limits, MemoryCounter(), secret=secret)
    try:
        counter = RedisCounter(url)
    except ValueError as exc:
        raise ConfigError(f"AUTH_RATE_LIMIT_REDIS_URL is not a Redis URL: {exc}") from None
    return RateLimiter(limits, counter, secret=secret)
