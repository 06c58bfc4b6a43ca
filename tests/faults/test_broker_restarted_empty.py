"""The bundled broker killed and started again empty, as an operator would do it (SIGKILL,
a new broker on the same address, the topics created again a little later): every signup
accepted before, during and after reaches the member and batch services within 30 s of
the topics' return, with no service restarted.

This runs on Tansu whatever TEST_KAFKA says, because that is where the fault was seen (its
idempotent producers kept a producer id the new broker did not know, forever); the same
fault on a three-node Apache Kafka cluster rebuilt from nothing is in
test_kafka_cluster_faults.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.broker import LocalBroker, free_port
from devtools.stack import Stack
from shared.config import SERVICES
from shared.messaging.kafka import create_topics, pipeline_topics
from tests.faults.harness import Registry, dead_letters, inbox_counts, wait_reconciled

pytestmark = pytest.mark.faults


class RestartableTansu:
    """A Tansu broker on one fixed port that can be killed and started again, empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.starts = 0
        self.broker = self._start()

    def _start(self) -> LocalBroker:
        self.starts += 1
        return LocalBroker(self.port, log_path=self.workdir / f"tansu-{self.starts}.log").start()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: it dies with its memory-only state."""
        process = self.broker._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        self.broker.stop()  # closes its log

    def start_empty(self) -> None:
        self.broker = self._start()

    def stop(self) -> None:
        self.broker.stop()


@pytest.fixture(scope="module")
def rebuilt(
    tmp_path_factory: pytest.TempPathFactory, postgres: Any
) -> Iterator[tuple[Stack, RestartableTansu, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("restarted-empty")
    urls = {s: postgres.create_database(f"sp_empty_{s}") for s in SERVICES}
    broker = RestartableTansu(workdir)
    stack = Stack(workdir, database_urls=urls, bootstrap_servers=broker.bootstrap_servers)
    try:
        stack.start()
    except Exception:
        broker.stop()
        raise
    yield stack, broker, urls
    stack.stop()
    broker.stop()


def test_every_signup_arrives_after_the_broker_restarted_empty_without_any_restart(
    rebuilt: tuple[Stack, RestartableTansu, dict[str, str]],
) -> None:
    stack, broker, urls = rebuilt
    registry = Registry()
    pids = {name: process.pid for name, process in stack.processes.items()}

    registry.burst(stack, 12)  # before
    first = wait_reconciled(stack, registry, urls, timeout=60)
    assert first.problems == [], first.line()

    broker.kill()
    registry.burst(stack, 12)  # during: no broker at all
    broker.start_empty()
    registry.burst(stack, 6)  # the broker is back, but without the pipeline's topics
    time.sleep(4)  # the operator takes a moment
    create_topics([broker.bootstrap_servers], pipeline_topics())
    returned = time.monotonic()
    registry.burst(stack, 12)  # after

    result = wait_reconciled(stack, registry, urls, timeout=30)
    took = time.monotonic() - returned
    print(f"\n[broker restarted empty] {result.line()} drained {took:.1f} s after the topics")
    assert result.problems == [], result.line()
    assert result.unpublished == 0
    assert took < 45  # 30 s to arrive, and the consumer groups' catch-up check after it
    # Applied exactly once each: one inbox row per event.
    assert inbox_counts(urls) == {
        "profile-insert": result.accepted,
        "partner-created": result.partners_expected,
    }
    for topic in ("profile-insert", "partner-created"):
        assert dead_letters(stack, topic) == []
    # No service was restarted to get there.
    assert {name: process.pid for name, process in stack.processes.items()} == pids
    assert all(process.running() for process in stack.processes.values())
