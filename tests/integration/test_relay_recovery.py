"""The outbox relay outlives a broker that restarts empty (issue: a SIGKILLed broker
replaced by a fresh one left every relay failing with InitProducerIdResponse
UnknownError, one warning per row per pass, until the process was restarted)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

import pytest
from kafka.errors import TopicAlreadyExistsError
from sqlalchemy import MetaData

from auth_service.models import Base, OutboxEvent
from devtools.broker import LocalBroker, free_port
from shared.messaging.kafka import make_producer
from shared.messaging.outbox import OutboxRelay
from shared.storage.db import Database
from tests.integration.test_outbox_relay import stage, unpublished
from tests.kafka_tools import create_topic, read_topic, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
def database(make_database: Callable[[MetaData], Database]) -> Database:
    return make_database(Base.metadata)


def kill(broker: LocalBroker) -> None:
    """SIGKILL: the broker dies with its (memory-only) state, as in the issue."""
    process = broker._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    broker.stop()  # closes its log


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.parametrize("topics_late", [0.0, 4.0], ids=["topics-at-once", "topics-4s-late"])
def test_relay_recovers_when_the_broker_restarts_empty(
    database: Database, caplog: pytest.LogCaptureFixture, topics_late: float
) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = unique_name("restart")
    broker = LocalBroker(port).start()
    relay = OutboxRelay(
        database, OutboxEvent, lambda: make_producer([bootstrap]), poll_interval=0.2
    )
    try:
        create_topic(bootstrap, topic)
        relay.start()
        stage(database, topic, 5)
        relay.wake()
        assert wait_until(lambda: unpublished(database) == 0, 20), "first rows never published"

        kill(broker)
        broker = LocalBroker(port).start()
        if not topics_late:
            create_topic(bootstrap, topic)

        with caplog.at_level(logging.INFO, logger="shared.messaging.outbox"):
            caplog.clear()
            stage(database, topic, 50)
            relay.wake()
            if topics_late:  # the operator recreates them a little later
                time.sleep(topics_late)
                with contextlib.suppress(TopicAlreadyExistsError):  # Tansu made it on send
                    create_topic(bootstrap, topic)
            recovered = wait_until(lambda: unpublished(database) == 0, 30)
            lines = [r for r in caplog.records if r.name == "shared.messaging.outbox"]
        records = read_topic(bootstrap, topic, expect=50, timeout=10) if recovered else []
    finally:
        relay.stop()
        broker.stop()
    warnings = [r for r in lines if r.levelno >= logging.WARNING]
    assert recovered, (
        f"{unpublished(database)} rows still unpublished 30 s after the broker restarted; "
        f"{len(warnings)} warning lines, first: {warnings[0].getMessage() if warnings else None}"
    )
    assert len(records) == 50
    # One line when the episode starts, one when it ends: not one per row per pass.
    assert len(warnings) < 10, [r.getMessage() for r in warnings[:20]]
    messages = [r.getMessage() for r in lines]
    assert any("cannot publish" in m for m in messages), messages
    assert any("publishing again" in m for m in messages), messages
    assert len(lines) <= 4, messages
    assert relay.recreations >= 1
