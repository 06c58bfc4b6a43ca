"""Signup response → member profile and → partner summary, over real processes.

    python -m bench.propagation [--count 20] [--postgres]

Starts the whole stack (local broker; SQLite, or fresh PostgreSQL databases with
--postgres), signs up `count` partners one at a time, and polls the member and batch
APIs every 2 ms from the moment each signup answered. Prints milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from shared.cli import example_signup
from shared.devstack import SERVICES, Stack
from shared.http_client import request


def poll_until_found(url: str, timeout: float = 10.0) -> float:
    """Seconds until GET `url` answers 200."""
    start = time.perf_counter()
    while request("GET", url)[0] != 200:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(url)
        time.sleep(0.002)
    return time.perf_counter() - start


def postgres_urls() -> dict[str, str]:
    """Three fresh databases on the local PostgreSQL."""
    from tests.conftest import POSTGRES_ADMIN_URL, PostgresServer

    server = PostgresServer(POSTGRES_ADMIN_URL)
    return {service: server.create_database(f"sp_bench_{service}") for service in SERVICES}


def main() -> None:
    """Run and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    urls = postgres_urls() if args.postgres else {}
    stack = Stack(Path(tempfile.mkdtemp(prefix="bench-")), database_urls=urls).start()
    try:
        request("POST", f"{stack.url('auth')}/auth/signup", example_signup())  # warm-up
        time.sleep(1)
        to_member, to_summary = [], []
        for _ in range(args.count):
            body = dict(example_signup(), email=f"b-{uuid.uuid4().hex[:8]}@example.com")
            status, answer = request("POST", f"{stack.url('auth')}/auth/signup", body)
            assert status == 201, answer
            answered = time.perf_counter()
            member_id = answer["uuid"]
            poll_until_found(f"{stack.url('member')}/members/{member_id}")
            to_member.append(time.perf_counter() - answered)
            poll_until_found(f"{stack.url('batch')}/partners/{member_id}/summary")
            to_summary.append(time.perf_counter() - answered)
            time.sleep(0.1)
    finally:
        stack.stop()
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{args.count} PARTNER signups, one at a time, {database}, local Tansu broker")
    for label, values in (("-> member profile", to_member), ("-> partner summary", to_summary)):
        ms = sorted(v * 1000 for v in values)
        print(
            f"signup response {label:<20} median {statistics.median(ms):7.1f} ms"
            f"   p90 {ms[int(len(ms) * 0.9) - 1]:7.1f} ms   max {ms[-1]:7.1f} ms"
        )


if __name__ == "__main__":
    main()
