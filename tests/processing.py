"""One record through an EventProcessor, outside a consumer loop: `apply` on a batch of
one, for tests that look at a single record's fate."""

from __future__ import annotations

from kafka.structs import TopicPartition

from shared.messaging.kafka import Message
from shared.messaging.processor import EventProcessor, Outcome


class MustComeAgain(Exception):
    """The processor reported the record as to be read again (`retry_at`), and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def process_one(processor: EventProcessor, message: Message, attempt: int = 1) -> Outcome:
    """What became of `message` at its `attempt`-th try; MustComeAgain if nothing yet."""
    partition = TopicPartition(message.topic, message.partition)
    report = processor.apply({partition: [message]}, lambda _partition, _offset: attempt)
    progress = report.partitions[partition]
    if progress.retry_at is not None:
        assert progress.commit_to is None, "a lone record to come again commits nothing"
        raise MustComeAgain(progress.reason)
    [outcome] = report.outcomes
    return outcome
