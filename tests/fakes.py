"""In-process fakes for fast unit tests: a broker that keeps records in lists."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka.errors import CommitFailedError, IllegalStateError, KafkaTimeoutError
from kafka.structs import TopicPartition

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
    """A one-partition consumer on a FakeBroker topic, with the calls ConsumerLoop makes.

    Strict where kafka-python is: pausing, resuming, seeking or asking the position of a
    partition not assigned raises IllegalStateError, and committing one fails as a
    commit after a rebalance does (CommitFailedError). `revoke()` and `assign()` stand
    in for a rebalance; a partition assigned again starts unpaused, from the committed
    offset, as it does for a new owner. `on_commit` sees every commit before it lands.
    """

    def __init__(
        self, broker: FakeBroker, topic: str, committed: int = 0, max_records: int = 500
    ) -> None:
        self.broker = broker
        self.partition = TopicPartition(topic, 0)
        self.assigned = {self.partition}
        self.next_offset = committed
        self.committed: int | None = committed or None
        self.commits: list[int] = []
        self.closed = False
        self.paused = False
        self.max_records = max_records
        self.on_commit: Callable[[int], None] | None = None

    def _check_assigned(self, *partitions: Any) -> None:
        for partition in partitions:
            if partition not in self.assigned:
                raise IllegalStateError(f"No current assignment for partition {partition}")

    def revoke(self) -> None:
        """A rebalance took the partition away (its state goes with it)."""
        self.assigned = set()
        self.paused = False

    def assign(self) -> None:
        """A rebalance gave the partition (back): unpaused, from the committed offset."""
        self.assigned = {self.partition}
        self.paused = False
        self.next_offset = self.committed or 0

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def position(self, partition: Any, timeout_ms: int | None = None) -> int:
        self._check_assigned(partition)
        return self.next_offset

    def highwater(self, partition: Any) -> int:
        assert partition == self.partition
        return len(self.broker.topics[self.partition.topic])

    def pause(self, *partitions: Any) -> None:
        self._check_assigned(*partitions)
        self.paused = True

    def resume(self, *partitions: Any) -> None:
        self._check_assigned(*partitions)
        self.paused = False

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Message]]:
        max_records = max_records or self.max_records
        if self.paused or self.partition not in self.assigned:
            return {}
        records = self.broker.topics[self.partition.topic][
            self.next_offset : self.next_offset + max_records
        ]
        self.next_offset += len(records)
        return {self.partition: records} if records else {}

    def seek(self, partition: Any, offset: int) -> None:
        self._check_assigned(partition)
        self.next_offset = offset

    def seek_to_beginning(self, *partitions: Any) -> None:
        self._check_assigned(*partitions)
        self.next_offset = 0

    def commit(self, offsets: dict[Any, Any]) -> None:
        if set(offsets) - self.assigned:
            raise CommitFailedError("the group rebalanced: partition no longer assigned")
        offset = offsets[self.partition].offset
        if self.on_commit is not None:
            self.on_commit(offset)
        self.committed = offset
        self.commits.append(offset)

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


class FakeClock:
    """A monotonic clock that moves only when told to: `advance(seconds)`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
