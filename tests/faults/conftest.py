"""One stack for the fault suite: real processes, a private broker (the one TEST_KAFKA
chooses: see tests/brokers.py), real PostgreSQL with the member and batch databases behind
cuttable TCP proxies, and partners' activity flowing all along. Every test leaves it
healthy and ends with a reconciliation of everything the module accepted so far."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from devtools.stack import Stack
from shared.config import SERVICES
from tests.brokers import TestBroker, broker_choice, start_test_broker
from tests.faults.harness import ActivityFeed, Registry, TcpProxy

pytestmark = pytest.mark.faults


@dataclass
class FaultStack:
    stack: Stack
    broker: TestBroker
    registry: Registry
    proxies: dict[str, TcpProxy]
    real_urls: dict[str, str]
    activity: ActivityFeed
    # Records the tests meant to dead-letter, by topic: any other in a DLT is a failure.
    dead_lettered: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, postgres) -> Iterator[FaultStack]:  # type: ignore[no-untyped-def]
    workdir: Path = tmp_path_factory.mktemp("faults")
    real = {s: postgres.create_database(f"sp_fault_{s}") for s in SERVICES}
    proxies = {}
    urls = dict(real)
    for service in ("member", "batch"):
        parsed = make_url(real[service])
        proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
        proxies[service] = proxy
        urls[service] = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    choice = broker_choice()
    if not choice.can_stop:
        pytest.fail(
            f"the fault suite pauses and stops its broker, so it starts its own: unset "
            f"KAFKA_BOOTSTRAP_SERVERS and choose one with TEST_KAFKA (not {choice.label})",
            pytrace=False,
        )
    broker = start_test_broker(choice, workdir)
    stack = Stack(workdir, database_urls=urls, bootstrap_servers=broker.bootstrap_servers)
    try:
        stack.start()
    except Exception:
        broker.stop()
        raise
    # One signup in ten is deleted right after it was accepted, so every fault also
    # meets deletions racing their own signup; partners' activity flows all along.
    registry = Registry(delete_every=10)
    activity = ActivityFeed(stack, registry).start()
    yield FaultStack(stack, broker, registry, proxies, real, activity)
    activity.stop()
    print(f"activity feed: {activity.sent} events sent, {activity.failed_rounds} rounds failed")
    stack.stop()
    broker.stop()
    for proxy in proxies.values():
        proxy.close()
