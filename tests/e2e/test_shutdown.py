"""SIGTERM is a clean stop, even with the broker gone: exit 0, quickly, nothing left."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools.http_client import request
from devtools.stack import Stack
from tests.brokers import broker_choice, start_test_broker
from tests.unit.pipeline_harness import signup_body

pytestmark = pytest.mark.e2e


def test_sigterm_with_the_broker_down_exits_zero_within_ten_seconds(tmp_path: Path) -> None:
    choice = broker_choice()
    if not choice.can_stop:
        pytest.skip(f"stops its broker, so it needs one of its own, not {choice.label}")
    broker = start_test_broker(choice, tmp_path)
    stack = Stack(tmp_path, bootstrap_servers=broker.bootstrap_servers)
    try:
        stack.start()
        for _ in range(3):
            assert request("POST", f"{stack.url('auth')}/auth/signup", signup_body())[0] == 201
        broker.stop()
        accepted = [
            request("POST", f"{stack.url('auth')}/auth/signup", signup_body(role="PARTNER"))[0]
            for _ in range(3)
        ]

        started = time.monotonic()
        for process in stack.processes.values():
            process.terminate()
        codes = {name: process.wait(15) for name, process in stack.processes.items()}
        took = time.monotonic() - started
    finally:
        stack.stop()
        broker.stop()

    assert accepted == [201, 201, 201]  # the outbox takes signups while the broker is away
    assert codes == dict.fromkeys(stack.processes, 0)
    assert took < 10, took
