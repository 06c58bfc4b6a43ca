"""The raw limits of this machine, against which the pipeline's own figures are compared.

Each function drives one resource (the broker, PostgreSQL, the CPU under argon2) as fast
as a plain client can, with the pipeline's own settings where it has any, and returns a
plain dict of numbers. None of them reads or changes global state.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import time
import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import psycopg2
import psycopg2.extras
from sqlalchemy import create_engine, make_url, text

from auth_service.handlers import password_hasher
from shared.messaging.kafka import make_consumer, make_producer

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def kafka_produce(
    bootstrap_servers: list[str], topic: str, messages: list[Record]
) -> dict[str, Any]:
    """Records per second one producer gets acknowledged, with the pipeline's settings.

    The producer is `shared.messaging.kafka.make_producer` (acks=all, idempotent, linger 2 ms), so
    the figure is what the outbox relay could reach with nothing else to do. The clock
    runs from the first send to the end of `flush()`, i.e. until the broker acknowledged
    everything; every delivery is then checked, and any failure raises.
    """
    producer = make_producer(bootstrap_servers)
    try:
        start = time.perf_counter()
        futures = [
            producer.send(topic, value, key=key, headers=hdrs) for key, value, hdrs in messages
        ]
        producer.flush()
        seconds = time.perf_counter() - start
        for future in futures:
            future.get(timeout=0)
    finally:
        producer.close()
    n = len(messages)
    return {
        "messages": n,
        "seconds": seconds,
        "per_second": n / seconds,
        "mean_value_bytes": sum(len(value) for _, value, _ in messages) / n,
        "mean_headers_bytes": sum(
            len(name.encode()) + len(data) for _, _, hdrs in messages for name, data in hdrs
        )
        / n,
    }


def kafka_consume(
    bootstrap_servers: list[str], topic: str, expected: int, group: str
) -> dict[str, Any]:
    """Records per second one consumer receives, with the pipeline's settings.

    The consumer is `shared.messaging.kafka.make_consumer` (max 500 records a poll, 100 ms fetch
    wait) in a new group `group`, reading `topic` from the start; it only counts records.
    The group join and first fetch are excluded: the clock starts when the first
    non-empty poll returns, so `messages` counts only the records after that poll
    (`first_poll` holds how many it returned) and ends at the `expected`-th record. Raises
    TimeoutError when `expected` records have not arrived within 120 s.
    """
    consumer = make_consumer(bootstrap_servers, group, [topic])
    try:
        deadline = time.monotonic() + 120.0
        seen = first_poll = 0
        start = 0.0
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{seen} of {expected} records from {topic} in 120 s")
            count = sum(len(records) for records in consumer.poll(timeout_ms=100).values())
            if count and not seen:
                start, first_poll = time.perf_counter(), count
            seen += count
        seconds = time.perf_counter() - start
    finally:
        consumer.close(autocommit=False)
    timed = seen - first_poll
    if timed == 0:
        raise ValueError(f"all {seen} records came in the first poll; nothing was timed")
    return {
        "messages": timed,
        "first_poll": first_poll,
        "seconds": seconds,
        "per_second": timed / seconds,
    }


def postgres_rows(admin_url: str, rows: int, batch: int = 1000) -> dict[str, Any]:
    """Rows per second PostgreSQL commits through raw psycopg2, in a throwaway database.

    The table has the shape of the pipeline's rows (uuid text, bigint, timestamptz, one
    secondary index). `per_commit` is one INSERT and one COMMIT per row (at most 3000):
    the bound for a consumer that commits every record, dominated by the WAL flush of each
    commit. `batched` is `execute_values` in pages of `batch` rows, one COMMIT a page: the
    bound when commits are amortised. Server settings are left alone; the result records
    `synchronous_commit` and `fsync`, which decide what a commit costs. Rows are built
    before the clock starts.
    """
    url = make_url(admin_url)
    name = f"sp_bench_ceiling_{uuid.uuid4().hex}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    now = dt.datetime.now(dt.UTC)
    data = [(str(uuid.uuid4()), i % 50, now) for i in range(rows)]
    single = data[: min(rows, 3000)]
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            synchronous_commit = str(conn.execute(text("SHOW synchronous_commit")).scalar_one())
            fsync = str(conn.execute(text("SHOW fsync")).scalar_one())
        connection = psycopg2.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, dbname=name
        )
        try:
            with connection.cursor() as cur:
                cur.execute(
                    "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, member_uuid VARCHAR(36) NOT NULL,"
                    " style_id BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL)"
                )
                cur.execute("CREATE INDEX t_member_uuid ON t (member_uuid)")
                connection.commit()
                insert = "INSERT INTO t (member_uuid, style_id, created_at) VALUES (%s, %s, %s)"
                start = time.perf_counter()
                for row in single:
                    cur.execute(insert, row)
                    connection.commit()
                per_commit = time.perf_counter() - start
                insert = "INSERT INTO t (member_uuid, style_id, created_at) VALUES %s"
                start = time.perf_counter()
                for first in range(0, rows, batch):
                    psycopg2.extras.execute_values(
                        cur, insert, data[first : first + batch], page_size=batch
                    )
                    connection.commit()
                batched = time.perf_counter() - start
        finally:
            connection.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return {
        "per_commit": {
            "rows": len(single),
            "seconds": per_commit,
            "per_second": len(single) / per_commit,
        },
        "batched": {"rows": rows, "batch": batch, "seconds": batched, "per_second": rows / batched},
        "synchronous_commit": synchronous_commit,
        "fsync": fsync,
    }


def _hash_in_loop(seconds: float, barrier: Barrier, results: Queue[tuple[int, float]]) -> None:
    """One worker: warm up with one hash, wait for the others, hash for `seconds`."""
    hasher = password_hasher()
    hasher.hash("correct horse battery staple")
    barrier.wait()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        hasher.hash("correct horse battery staple")
        count += 1
    results.put((count, time.perf_counter() - start))


def argon2_hashes(processes: int, seconds: float = 3.0) -> dict[str, Any]:
    """Password hashes per second with the signup's own parameters, in `processes` at once.

    Each OS process (spawned, so none inherits this one's state) builds
    `auth_service.handlers.password_hasher()`, hashes once to warm up, waits at a barrier
    so all hash over the same window, then hashes for `seconds`. `per_second` is the sum
    of each process's count over its own elapsed time (the last hash overruns the window);
    it bounds how many signups a second the auth service's CPUs can accept.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: Queue[tuple[int, float]] = context.Queue()
    workers = [
        context.Process(target=_hash_in_loop, args=(seconds, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    per_second = sum(count / elapsed for count, elapsed in counts)
    hasher = password_hasher()
    return {
        "processes": processes,
        "seconds": seconds,
        "hashes": sum(count for count, _ in counts),
        "per_second": per_second,
        "per_second_per_process": per_second / processes,
        "parameters": {
            "time_cost": hasher.time_cost,
            "memory_cost_kib": hasher.memory_cost,
            "parallelism": hasher.parallelism,
        },
    }
