"""Where the pipeline's consumers stand on the broker, read from outside their groups.

Looking must not disturb what is looked at: nothing here joins a consumer group (a
JoinGroup would make the services' workers rebalance). Committed offsets come from an
OffsetFetch sent by a client that carries the group id but never subscribes; it sends
no JoinGroup, no heartbeat and no LeaveGroup.

End offsets are the high watermark of a fetch, not ListOffsets
(`KafkaConsumer.end_offsets`): the bundled Tansu broker answers ListOffsets with the
base offset + 1 of a partition's last record batch, so a partition whose last batch held
ten records looks nine short (measured: 20 records in two batches, reported end 11).
The high watermark in a fetch response is right on Tansu and on Apache Kafka. The fetch
starts one before the reported end (on Tansu the first record of the last batch, on
Kafka the last record), so it reads at most one batch per partition.

Other Tansu limits met on the way: `KafkaAdminClient.list_topics()` and
`describe_topics()` fail, so partitions come from the consumer's metadata; and with
`fetch_max_wait_ms=0` kafka-python received no fetch response from it in two seconds
(measured), so the wait is small but not zero.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from shared.messaging.kafka import Message, message_from_record, process_client_security

# Tansu holds a fetch for its whole max wait even at the end of the log (see
# shared.messaging.kafka.CONSUMER_DEFAULTS), and did not answer fetches that may not wait at all.
_FETCH_WAIT_MS = 10


@dataclass(frozen=True)
class LogRange:
    """The offsets one partition holds: from `beginning` up to, not including, `end`."""

    partition: int
    beginning: int
    end: int

    @property
    def records(self) -> int:
        """How many records the partition holds (fewer on a compacted topic)."""
        return max(self.end - self.beginning, 0)


@dataclass(frozen=True)
class PartitionLag:
    """How far one consumer group is behind on one partition."""

    partition: int
    beginning: int
    end: int
    committed: int | None  # None: the group never committed an offset here

    @property
    def lag(self) -> int:
        """Records not yet consumed: a group that never committed starts at the beginning
        (the services consume with auto_offset_reset=earliest)."""
        start = self.committed if self.committed is not None else self.beginning
        return max(self.end - start, 0)


def partition_lags(
    ranges: Sequence[LogRange], committed: Mapping[int, int | None]
) -> list[PartitionLag]:
    """Each partition's lag, from its log range and the group's committed offset."""
    return [
        PartitionLag(r.partition, r.beginning, r.end, committed.get(r.partition))
        for r in sorted(ranges, key=lambda r: r.partition)
    ]


class BrokerUnreachable(KafkaConnectionError):  # type: ignore[misc]
    """No bootstrap server accepted a connection; `reasons`: each server's, one line."""

    def __init__(self, reasons: str) -> None:
        super().__init__(f"no broker accepts connections ({reasons})")
        self.reasons = reasons


def _check_reachable(servers: Sequence[str], timeout: float) -> None:
    """Fail at once, with the socket's reason, when no server accepts a connection:
    kafka-python would retry until its bootstrap timeout and then only say it could not."""
    reasons = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout):
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"{server}: {exc.strerror if isinstance(exc, OSError) else exc}")
    raise BrokerUnreachable("; ".join(reasons))


class OffsetReader:
    """Reads log ranges and committed offsets within one time budget; closes every
    client it opened when closed (use it as a context manager).

    Raises kafka.errors.KafkaError (a KafkaTimeoutError when the budget runs out), from
    the constructor already when no broker answers.
    """

    def __init__(self, bootstrap_servers: Sequence[str], timeout: float = 3.0) -> None:
        self._servers = list(bootstrap_servers)
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._groups: dict[str, KafkaConsumer] = {}
        _check_reachable(self._servers, timeout)
        self._reader = self._client(None)

    check_reachable = staticmethod(_check_reachable)

    def _remaining_ms(self) -> int:
        left = int((self._deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise KafkaTimeoutError(f"no answer from the broker within {self._timeout:g} s")
        return left

    def _client(self, group_id: str | None) -> KafkaConsumer:
        budget = max(self._remaining_ms(), _FETCH_WAIT_MS + 1)
        return KafkaConsumer(
            bootstrap_servers=self._servers,
            group_id=group_id,
            enable_auto_commit=False,
            bootstrap_timeout_ms=budget,
            request_timeout_ms=budget,
            fetch_max_wait_ms=_FETCH_WAIT_MS,
            **process_client_security(),
        )

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; empty when the broker has no such topic."""
        # From the metadata the client loaded at bootstrap (all topics); only an unknown
        # topic costs a refresh, to be sure it is really missing.
        return sorted(self._reader.partitions_for_topic(topic) or ())

    def log_ranges(self, topics: Iterable[str]) -> dict[str, list[LogRange]]:
        """Each topic's partitions and the offsets they hold, in one round of fetches;
        a topic the broker does not have is left out."""
        wanted = [TopicPartition(t, p) for t in dict.fromkeys(topics) for p in self.partitions(t)]
        if not wanted:
            return {}
        beginnings: dict[TopicPartition, int] = self._reader.beginning_offsets(
            wanted, timeout_ms=self._remaining_ms()
        )
        # A lower bound on Tansu (see the module docstring): only a place to fetch from.
        reported: dict[TopicPartition, int] = self._reader.end_offsets(
            wanted, timeout_ms=self._remaining_ms()
        )
        self._reader.assign(wanted)
        for tp in wanted:
            self._reader.seek(tp, max(reported[tp] - 1, beginnings[tp]))
        ends = self._high_watermarks(wanted)
        ranges: dict[str, list[LogRange]] = {}
        for tp in wanted:
            ranges.setdefault(tp.topic, []).append(LogRange(tp.partition, beginnings[tp], ends[tp]))
        return ranges

    def _high_watermarks(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        known: dict[TopicPartition, int] = {}
        while True:
            for tp in partitions:
                if tp not in known and (mark := self._reader.highwater(tp)) is not None:
                    known[tp] = mark
            if len(known) == len(partitions):
                return known
            # The records are not needed, only the fetch responses that carry them.
            self._reader.poll(timeout_ms=min(self._remaining_ms(), 100))

    def read(self, topic: str, ranges: Sequence[LogRange]) -> list[Message]:
        """Every record of `topic` within its `ranges` (read by `log_ranges`), in the
        order fetched; stops at each partition's end, not at a quiet poll."""
        held = {TopicPartition(topic, r.partition): r for r in ranges if r.records}
        if not held:
            return []
        ends = {tp: r.end for tp, r in held.items()}
        self._reader.assign(list(held))
        for tp, r in held.items():
            self._reader.seek(tp, r.beginning)
        records: list[Message] = []
        while any(
            self._reader.position(tp, timeout_ms=self._remaining_ms()) < end
            for tp, end in ends.items()
        ):
            batch = self._reader.poll(timeout_ms=min(self._remaining_ms(), 200))
            records.extend(
                message_from_record(r)
                for tp, rs in batch.items()
                for r in rs
                if r.offset < ends[tp]
            )
        return records

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """The group's committed offset on each partition (None where it never committed)."""
        client = self._groups.get(group)
        if client is None:
            client = self._groups[group] = self._client(group)
        return {
            p: client.committed(TopicPartition(topic, p), timeout_ms=self._remaining_ms())
            for p in partitions
        }

    def lag(self, group: str, ranges: Sequence[LogRange], topic: str) -> list[PartitionLag]:
        """How far `group` is behind on each partition of `topic` (whose `ranges` were read)."""
        return partition_lags(ranges, self.committed(group, topic, [r.partition for r in ranges]))

    def close(self) -> None:
        """Close every client; nothing to commit, no group to leave."""
        for client in [self._reader, *self._groups.values()]:
            client.close(autocommit=False, timeout_ms=1000)
        self._groups.clear()

    def __enter__(self) -> OffsetReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["BrokerUnreachable", "LogRange", "OffsetReader", "PartitionLag", "partition_lags"]
