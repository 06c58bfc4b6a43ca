"""One stack for the fault suite: real processes, a private broker, real PostgreSQL with
the member and batch databases behind cuttable TCP proxies. Every test leaves it healthy
and ends with a reconciliation of everything the module accepted so far."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from devtools.broker import LocalBroker
from devtools.stack import Stack
from shared.config import SERVICES
from tests.faults.harness import Registry, TcpProxy

pytestmark = pytest.mark.faults


@dataclass
class FaultStack:
    stack: Stack
    broker: LocalBroker
    registry: Registry
    proxies: dict[str, TcpProxy]
    real_urls: dict[str, str]
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
    broker = LocalBroker(log_path=workdir / "broker.log").start()
    stack = Stack(workdir, database_urls=urls, bootstrap_servers=broker.bootstrap_servers)
    try:
        stack.start()
    except Exception:
        broker.stop()
        raise
    yield FaultStack(stack, broker, Registry(), proxies, real)
    stack.stop()
    broker.stop()
    for proxy in proxies.values():
        proxy.close()
