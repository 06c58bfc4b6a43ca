"""In-process fakes for fast unit tests: a broker that keeps records in lists."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaTimeoutError

from shared.messaging.kafka import Headers, Message


@dataclass
class Acknowledged:
    """A send the fake broker accepted."""

    message: Message

    def get(self, timeout: float | None = None) -> Message:
        return self.message


@dataclass
class Refused:
    """A send the fake broker refused (as a real one does when it is down)."""

    def get(self, timeout: float | None = None) -> Any:
        raise KafkaTimeoutError("fake broker is down")


class FakeBroker:
    """Topics as lists of records, with offsets; `down` makes every send fail."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Message]] = defaultdict(list)
        self.down = False

    def append(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Message:
        log = self.topics[topic]
        message = Message(topic, key, value, list(headers), partition=0, offset=len(log))
        log.append(message)
        return message

    def producer(self) -> FakeProducer:
        return FakeProducer(self)


class FakeProducer:
    """Implements shared.messaging.kafka.Producer on a FakeBroker."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.closed = False

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> Acknowledged | Refused:
        if self.broker.down:
            return Refused()
        return Acknowledged(self.broker.append(topic, value, key, headers or []))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class FakeConsumer:
    """A one-partition consumer on a FakeBroker topic, with the calls ConsumerLoop makes."""

    def __init__(
        self, broker: FakeBroker, topic: str, committed: int = 0, max_records: int = 500
    ) -> None:
        from kafka.structs import TopicPartition

        self.broker = broker
        self.partition = TopicPartition(topic, 0)
        self.next_offset = committed
        self.committed: int | None = committed or None
        self.commits: list[int] = []
        self.closed = False
        self.paused = False
        self.max_records = max_records

    def assignment(self) -> set[Any]:
        return {self.partition}

    def position(self, partition: Any, timeout_ms: int | None = None) -> int:
        assert partition == self.partition
        return self.next_offset

    def highwater(self, partition: Any) -> int:
        assert partition == self.partition
        return len(self.broker.topics[self.partition.topic])

    def pause(self, *partitions: Any) -> None:
        assert partitions == (self.partition,)
        self.paused = True

    def resume(self, *partitions: Any) -> None:
        assert partitions == (self.partition,)
        self.paused = False

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Message]]:
        max_records = max_records or self.max_records
        if self.paused:
            return {}
        records = self.broker.topics[self.partition.topic][
            self.next_offset : self.next_offset + max_records
        ]
        self.next_offset += len(records)
        return {self.partition: records} if records else {}

    def seek(self, partition: Any, offset: int) -> None:
        assert partition == self.partition
        self.next_offset = offset

    def commit(self, offsets: dict[Any, Any]) -> None:
        self.committed = offsets[self.partition].offset
        self.commits.append(self.committed)

    def close(self, autocommit: bool = True) -> None:
        self.closed = True
