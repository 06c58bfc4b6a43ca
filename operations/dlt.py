"""Dead letters as an operator's tool: list what a consumer gave up on, and replay it.

A replayed record goes back to its original topic with its original key, value and
headers (the `dlt-*` ones removed). It keeps its `ce_id`, or gets the one the consumer
derived from its original position when the producer sent none, so the inbox applies it
at most once however often it is replayed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from operations.formatting import format_duration
from operations.offsets import OffsetReader
from shared.messaging import deadletters
from shared.messaging.deadletters import original_of
from shared.messaging.kafka import Message, make_producer
from shared.messaging.pipeline import TOPICS
from shared.messaging.processor import event_id_of

# How long reading a dead-letter topic may take in all (a DLT is small; the broker's
# reachability is checked first, within a few seconds, by OffsetReader).
READ_TIMEOUT = 20.0
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class DeadLetter:
    """One record in a `.DLT` topic, with why and where it failed."""

    message: Message

    def _header(self, name: str) -> str:
        return self.message.header(name) or ""

    @property
    def original(self) -> Message:
        """The record as it stood in its original topic."""
        return original_of(self.message)

    @property
    def event_id(self) -> str:
        """The id the consumer deduplicates the original by."""
        return event_id_of(self.original)

    @property
    def error(self) -> str:
        """Why the consumer gave up (one line)."""
        return self._header(deadletters.ERROR)

    @property
    def attempts(self) -> str:
        """How many times it was tried."""
        return self._header(deadletters.ATTEMPTS)

    def age(self, now: dt.datetime | None = None) -> dt.timedelta:
        """How long ago it was dead-lettered."""
        now = now or dt.datetime.now(dt.UTC)
        return now - dt.datetime.fromtimestamp(self.message.timestamp_ms / 1000, dt.UTC)


def dead_letter_topic(topic: str) -> str:
    """`profile-insert` and `profile-insert.DLT` both name `profile-insert.DLT`."""
    return topic if topic.endswith(".DLT") else f"{topic}.DLT"


class UnknownTopic(ValueError):
    """Not a topic of the pipeline nor its dead-letter topic; says which ones are."""


def known_topics() -> list[str]:
    """The names `dlt` takes: each pipeline topic and its `.DLT`."""
    return [name for topic in TOPICS for name in (topic.name, topic.dead_letter)]


def check_topic(topic: str) -> str:
    """The dead-letter topic `topic` names; UnknownTopic (before any connection) when it
    names none of the pipeline's."""
    if topic not in known_topics():
        valid = ", ".join(t.name for t in TOPICS)
        raise UnknownTopic(f"unknown topic {topic!r}: use one of {valid} (or its .DLT)")
    return dead_letter_topic(topic)


def list_dead_letters(
    bootstrap_servers: Sequence[str],
    topic: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    timeout: float = READ_TIMEOUT,
) -> list[DeadLetter]:
    """Every record of the topic's DLT, oldest first; none when the broker has no such
    topic yet (nothing was ever dead-lettered). Raises UnknownTopic before connecting,
    kafka.errors.KafkaConnectionError within `connect_timeout` when no broker accepts a
    connection, KafkaTimeoutError when the reading takes longer than `timeout`."""
    name = check_topic(topic)
    OffsetReader.check_reachable(bootstrap_servers, connect_timeout)
    with OffsetReader(bootstrap_servers, timeout) as reader:
        ranges = reader.log_ranges([name]).get(name, [])
        records = reader.read(name, ranges)
    return [DeadLetter(m) for m in sorted(records, key=lambda m: (m.partition, m.offset))]


def replay(bootstrap_servers: Sequence[str], letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """Republish `letters` to their original topics; return those sent (acknowledged)."""
    producer = make_producer(bootstrap_servers)
    sent = []
    try:
        for letter in letters:
            original = letter.original
            headers = [(k, v) for k, v in original.headers if k != "ce_id"]
            headers.insert(0, ("ce_id", letter.event_id.encode()))
            producer.send(
                original.topic, value=original.value, key=original.key, headers=headers
            ).get(timeout=30)
            sent.append(letter)
    finally:
        producer.close(timeout=10)
    return sent


def format_age(age: dt.timedelta) -> str:
    """`3d 4h`, `12m 5s`: short and readable."""
    return format_duration(age.total_seconds())
