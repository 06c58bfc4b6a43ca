"""Reading and writing topics directly, for tests that check what is really on the broker."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from shared.kafka import Message, message_from_record


def unique_name(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def read_topic(bootstrap: str, topic: str, expect: int = 0, timeout: float = 20.0) -> list[Message]:
    """Every record of `topic`, in (partition, offset) order: polls until at least `expect`
    records arrived and a further poll brings nothing new.

    Not by end offsets: the bundled Tansu broker reports the end offset of a multi-record
    batch as its base offset + 1.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            consumer.topics()  # refreshes the metadata, so a new topic's partitions show
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[Message] = []
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            fetched = [message_from_record(r) for rs in batch.values() for r in rs]
            records.extend(fetched)
            if not fetched and len(records) >= expect:
                break
        return sorted(records, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset for each partition of `topic`."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        return {p: consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        consumer.close()
