"""Where the pipeline keeps its state, and reading it as a bystander: read-only, with
timeouts, each source on its own thread, a failure shown as the reason instead of a
traceback."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from shared.config import SERVICES, Settings, operator_broker
from shared.storage.db import failure_reason, redact_url

T = TypeVar("T")

WINDOW = dt.timedelta(seconds=60)
DEFAULT_TIMEOUT = 3.0


# --- where things are, and what could not be read ----------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where the pipeline keeps its state: each service's database and the broker."""

    database_urls: Mapping[str, str]
    bootstrap_servers: Sequence[str]
    outbox_retention: dt.timedelta = dt.timedelta(hours=24)
    kafka_origin: str = ""  # where the broker's address came from (shared.config.OperatorBroker)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Endpoints:
        """The databases as the services read them; the broker as the operator commands
        find it (KAFKA_BOOTSTRAP_SERVERS, else the address `signup-pipeline dev` left in
        ./var/dev-broker). Raises ConfigError for a malformed setting."""
        settings = {service: Settings.from_env(service, env) for service in SERVICES}
        broker = operator_broker(env)
        return cls(
            database_urls={service: s.database_url for service, s in settings.items()},
            bootstrap_servers=broker.servers,
            outbox_retention=settings["auth"].outbox_retention,
            kafka_origin=broker.origin,
        )

    def sources(self) -> dict[str, str]:
        """What was read, for the reader of a report (no passwords)."""
        shown = {service: redact_url(url) for service, url in self.database_urls.items()}
        shown["kafka"] = ",".join(self.bootstrap_servers)
        return shown


@dataclass(frozen=True)
class Unavailable:
    """A part that could not be read: which source failed, and why (one line)."""

    source: str
    reason: str


def attempt_read(source: str, read: Callable[[], T]) -> T | Unavailable:
    try:
        return read()
    # Whatever goes wrong is shown as this part's reason, beside the parts that worked:
    # an operator's screen must not turn into a traceback when it is needed most.
    except Exception as exc:
        return Unavailable(source, failure_reason(exc))


def in_parallel(reads: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Each read on its own thread: a database that hangs until its timeout does not
    hold up the others."""
    with ThreadPoolExecutor(max_workers=len(reads), thread_name_prefix="read") as pool:
        futures = {name: pool.submit(read) for name, read in reads.items()}
        return {name: future.result() for name, future in futures.items()}


def reading_engine(url: str, timeout: float = DEFAULT_TIMEOUT) -> Engine:
    """An engine for looking only, that gives up within about `timeout` seconds.

    Not shared.storage.db.make_engine: that one takes SQLite's write lock at every BEGIN (right
    for the services, wrong for a bystander) and creates a missing SQLite file (a status
    run from the wrong directory would leave empty databases behind)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            raise FileNotFoundError(f"no database file at {path or '(none)'}")
        return create_engine(
            url, poolclass=NullPool, hide_parameters=True, connect_args={"timeout": timeout}
        )
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {"connect_timeout": max(2, math.ceil(timeout))}  # libpq's minimum
    return create_engine(url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)


def read_database(url: str, timeout: float, read: Callable[[Connection], T]) -> T:
    engine = reading_engine(url, timeout)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # For this transaction only, not the session: behind a pooler such as
                # PgBouncer a session setting would outlive us on someone else's query.
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
                connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
            return read(connection)
    finally:
        engine.dispose()
