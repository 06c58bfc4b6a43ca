"""The HTTP port of a worker process, which has no web framework of its own:
`/health/live` (the process answers), `/health/ready` (database and broker reachable,
consumer joined to its group, no partition stuck, its outbox relay not stalled) and
`/metrics` (Prometheus)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kafka import ConsumerRebalanceListener

from shared.messaging.kafka import broker_reachable
from shared.storage.db import Database, check_connection
from shared.telemetry.metrics import exposition

log = logging.getLogger(__name__)

# A poll waits at most 0.5 s and a batch takes well under a second: a loop that has not
# polled for this long is busy with something it should not be.
SLOW_POLL_SECONDS = 30.0
# The consumer's max_poll_interval_ms: past it the group has evicted this member.
HUNG_AFTER_SECONDS = 300.0


class ConsumerState(ConsumerRebalanceListener):  # type: ignore[misc]
    """Set by the consumer's rebalance listener; read by the readiness probe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.joined = threading.Event()
        self.assigned: list[Any] = []
        self.stuck: list[str] = []
        self.polled_at: float | None = None
        # Since when the consumer has been outside its group: from the start until its
        # first assignment, and from each revocation (a rebalance begins) until the next.
        self.outside_since: float | None = clock()

    def report_stuck(self, partitions: list[str]) -> None:
        """ConsumerLoop hook, after every poll: partitions whose record has been failing
        for too long (and, by being called, that the loop is still turning)."""
        self.polled_at = time.monotonic()
        if partitions and partitions != self.stuck:
            log.error("not ready: %s failing for too long (still retrying)", partitions)
        self.stuck = partitions

    def seconds_since_poll(self) -> float | None:
        """How long the consume loop has not polled (None before its first poll)."""
        return None if self.polled_at is None else self._clock() - self.polled_at

    def seconds_outside_group(self) -> float | None:
        """How long the consumer has been joining or rebalancing (None while it is in its
        group, with its assignment)."""
        since = self.outside_since
        return None if since is None else self._clock() - since

    def on_partitions_assigned(self, assigned: Any) -> None:
        """kafka-python ConsumerRebalanceListener hook: the join (or rebalance) completed."""
        self.assigned = sorted(assigned)
        self.outside_since = None
        self.joined.set()
        log.info("assigned partitions %s", [f"{tp.topic}[{tp.partition}]" for tp in self.assigned])

    def on_partitions_revoked(self, revoked: Any) -> None:
        """kafka-python ConsumerRebalanceListener hook, as a rebalance begins; offsets are
        committed per batch."""
        self.assigned = []
        if self.outside_since is None:
            self.outside_since = self._clock()


class _QuietServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose failed connections (a client that went away mid-request)
    are one log line through the process's formatter, not a raw traceback on stderr."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        log.debug(
            "health port: connection from %s failed: %s: %s",
            client_address[0] if client_address else "?",
            type(error).__name__,
            error,
        )


class HealthServer:
    """A small HTTP server on its own thread answering the two health routes."""

    def __init__(
        self,
        database: Database,
        state: ConsumerState,
        host: str,
        port: int,
        *,
        bootstrap_servers: list[str] | None = None,
        collectors: tuple[Any, ...] = (),
        relay: Any = None,
        join_timeout: float = 120.0,
    ) -> None:
        self._database = database
        self._join_timeout = join_timeout
        # An OutboxRelay (anything with `stalled()`), set now or once it exists.
        self.relay = relay
        self._state = state
        self._bootstrap_servers = bootstrap_servers
        self._collectors = collectors
        self._server = _QuietServer((host, port), self._handler_class())
        self.port = self._server.server_address[1]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    status, (payload, content_type) = 200, exposition(*health._collectors)
                else:
                    status, body = health.answer(self.path)
                    payload, content_type = json.dumps(body).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body for `path`."""
        idle = self._state.seconds_since_poll()
        if path == "/health/live":
            # A loop stuck this long has been evicted from its group (max.poll.interval):
            # only a restart brings it back.
            if idle is not None and idle > HUNG_AFTER_SECONDS:
                return 503, {
                    "error": "unavailable",
                    "message": f"The consume loop has not polled for {idle:.0f} s.",
                }
            # A group join that never completes while the broker answers is the group's
            # state, not the broker's (seen on the bundled broker during a rolling deploy):
            # a new process with a new member id is the way out. With the broker down a
            # restart would not help, so the process stays live and waits.
            outside = self._state.seconds_outside_group()
            if (
                outside is not None
                and outside > self._join_timeout
                and (not self._bootstrap_servers or broker_reachable(self._bootstrap_servers))
            ):
                return 503, {
                    "error": "unavailable",
                    "message": f"The consumer has been outside its group for {outside:.0f} s "
                    "with the broker reachable.",
                }
            return 200, {"status": "ok"}
        if path != "/health/ready":
            return 404, {"error": "not_found", "message": f"No route {path}."}
        outside = self._state.seconds_outside_group()
        if outside is not None:
            return 503, {
                "error": "unavailable",
                "message": "The consumer has not joined its group"
                + (" (rebalancing" if self._state.joined.is_set() else " (joining")
                + f" for {outside:.0f} s).",
            }
        if idle is None or idle > SLOW_POLL_SECONDS:
            return 503, {
                "error": "unavailable",
                "message": "The consume loop has not polled recently"
                + (f" ({idle:.0f} s)." if idle is not None else "."),
            }
        if self._state.stuck:
            return 503, {
                "error": "unavailable",
                "message": f"Partitions {self._state.stuck} have been failing for too long.",
            }
        stall = self.relay.stalled() if self.relay is not None else None
        if stall is not None:
            return 503, {"error": "unavailable", "message": str(stall)}
        try:
            check_connection(self._database.engine)
        except Exception:
            return 503, {"error": "unavailable", "message": "The database is unreachable."}
        if self._bootstrap_servers and not broker_reachable(self._bootstrap_servers):
            return 503, {"error": "unavailable", "message": "The broker is unreachable."}
        return 200, {"status": "ok"}

    def start(self) -> HealthServer:
        """Serve on a daemon thread."""
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
