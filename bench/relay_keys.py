"""What per-key order costs the outbox relay: `rows` committed profile-insert rows in a
PostgreSQL auth outbox, drained by 1 and by N relays (each in a process of its own, as
each API worker runs one), on a fresh bundled broker, or the Kafka in
KAFKA_BOOTSTRAP_SERVERS. Rows per second from the moment every relay is connected to the
last row marked published.

    python -m bench.relay_keys [--rows 20000] [--relays 1 3] [--events-per-key 1]
                               [--postgres-url URL] [--output FILE]

`--events-per-key 5` stages each key's events back to back (rows / 5 keys), the worst
case for per-key order: a relay pass takes one row per key. Measuring the relay without
per-key order means running this same module against a tree whose
shared/messaging/outbox.py lacks it (e.g. the commit before it); it prints which one it
measured (`per_key_order`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from auth_service.models import Base as AuthBase
from auth_service.models import OutboxEvent as AuthOutbox
from bench.stages import profile_insert_payload
from devtools.broker import LocalBroker
from devtools.postgres import LOCAL_POSTGRES_URL, PostgresServer
from shared.config import tool_settings
from shared.messaging.kafka import make_producer
from shared.messaging.outbox import OutboxRelay, add_event
from shared.messaging.pipeline import PROFILE_INSERT
from shared.storage.db import Database
from shared.storage.migrations import upgrade


def per_key_order() -> bool:
    """Whether the relay measured here keeps per-key order (its query has the claim)."""
    return "earlier.id < model.id" in inspect.getsource(OutboxRelay.publish_pending)


def stage(database: Database, rows: int, events_per_key: int) -> None:
    """`rows` committed rows, a key's `events_per_key` events next to each other in id
    order, in transactions of 5,000."""
    for start in range(0, rows, 5000):
        with database.unit_of_work() as uow:
            for n in range(start, min(rows, start + 5000)):
                payload = profile_insert_payload(n)
                payload["uuid"] = str(uuid.UUID(int=n // events_per_key + 1))  # the key
                add_event(
                    uow,
                    AuthOutbox,
                    PROFILE_INSERT,
                    PROFILE_INSERT.load(payload),
                    key=payload["uuid"],
                    source="auth-service",
                    traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
                )
            uow.commit()


def unpublished(database: Database) -> int:
    with database.sessions() as session:
        query = select(func.count()).where(AuthOutbox.published_at.is_(None))
        return int(session.scalar(query) or 0)


def relay_process(url: str, servers: list[str], ready: Any, go: Any, results: Any) -> None:
    """One relay: connect, say so, wait for `go`, drain until no row is left unpublished
    (a pass can find nothing while the last rows are another relay's), report."""
    database = Database.from_url(url, AuthBase.metadata)
    producer = make_producer(servers)
    producer.partitions_for(PROFILE_INSERT.name)  # connected, with the topic's metadata
    relay = OutboxRelay(database, AuthOutbox, lambda: producer)
    ready.put(os.getpid())
    go.wait()
    sent = passes = empty = 0
    while True:
        count = relay.publish_pending()
        passes += 1
        sent += count
        if not count:
            empty += 1
            if not unpublished(database):
                break
            time.sleep(0.002)
    results.put({"sent": sent, "passes": passes, "empty_passes": empty, "at": time.time()})
    relay.stop()
    database.engine.dispose()


def drain(url: str, servers: list[str], relays: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    processes = [
        context.Process(target=relay_process, args=(url, servers, ready, go, results))
        for _ in range(relays)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=60)
    started = time.time()
    go.set()
    reports = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(30)
    seconds = max(report["at"] for report in reports) - started
    sent = sum(report["sent"] for report in reports)
    return {
        "relays": relays,
        "rows": sent,
        "seconds": round(seconds, 2),
        "per_second": round(sent / seconds, 1),
        "sent_by_each": [report["sent"] for report in reports],
        "passes_by_each": [report["passes"] for report in reports],
        "empty_passes_by_each": [report["empty_passes"] for report in reports],
    }


@contextmanager
def broker(workdir: Path) -> Iterator[list[str]]:
    external = tool_settings().bootstrap_servers
    if external:
        yield list(external)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    with LocalBroker(log_path=workdir / "broker.log") as local:
        yield [local.bootstrap_servers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_keys", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--relays", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--events-per-key", type=int, default=1)
    parser.add_argument(
        "--postgres-url", default=tool_settings().bench_postgres_url or LOCAL_POSTGRES_URL
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    postgres = PostgresServer(args.postgres_url)
    figures: dict[str, Any] = {
        "per_key_order": per_key_order(),
        "rows": args.rows,
        "events_per_key": args.events_per_key,
        "runs": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="bench-relay-keys-") as workdir:
            for relays in args.relays:
                # A fresh broker and database per run: neither carries the last one's rows.
                with broker(Path(workdir) / f"{relays}") as servers:
                    url = postgres.create_database("sp_bench_relay_keys")
                    upgrade("auth", url)
                    database = Database.from_url(url, AuthBase.metadata)
                    stage(database, args.rows, args.events_per_key)
                    database.engine.dispose()
                    run = drain(url, servers, relays)
                    figures["runs"].append(run)
                    print(
                        f"per-key order {'on ' if figures['per_key_order'] else 'off'}, "
                        f"{args.events_per_key} event(s) per key, {relays} relay(s): "
                        f"{run['rows']} rows in {run['seconds']} s, {run['per_second']:.0f}/s "
                        f"(sent by each {run['sent_by_each']}, "
                        f"passes {run['passes_by_each']})",
                        flush=True,
                    )
    finally:
        postgres.drop_all()
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
