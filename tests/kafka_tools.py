"""Reading and writing topics directly, for tests that check what is really on the broker."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from shared.messaging.kafka import Message, create_topics
from shared.messaging.kafka import read_topic as kafka_read_topic
from shared.messaging.pipeline import Topic


def unique_name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def topics_of_own(bootstrap: str, topics: Sequence[Topic[Any]]) -> dict[str, str]:
    """Each of `topics`, with its partitions, and its one-partition DLT, created under a
    name of this test's own; each contract name with its name here."""
    suffix = uuid.uuid4().hex[:8]
    names = {topic.name: f"{topic.name}-{suffix}" for topic in topics}
    partitions = {names[t.name]: t.partitions for t in topics} | {
        f"{names[t.name]}.DLT": 1 for t in topics
    }
    create_topics(bootstrap.split(","), list(partitions), partitions=partitions)
    return names


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, -1)])  # the broker's replication
    finally:
        admin.close()


def read_topic(bootstrap: str, topic: str, expect: int = 0, timeout: float = 20.0) -> list[Message]:
    """Every record of `topic` (see shared.messaging.kafka.read_topic)."""
    return kafka_read_topic(bootstrap.split(","), topic, expect, timeout)


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset for each partition of `topic`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        return {p: consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        consumer.close()
