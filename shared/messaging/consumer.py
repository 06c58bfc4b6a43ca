"""Consuming a worker's topics (one or several, in one group): poll, hand each poll to
the event processor, commit the offsets only after it, send back and pause what must
come again.

Commit order (the guarantee): DB commit of the effects and the inbox row (in
`EventProcessor.apply`, shared/messaging/processor.py), then the Kafka offset. A crash
between the two redelivers records whose inbox rows already exist, so they change
nothing. Nothing is acknowledged that was not applied or dead-lettered.

`ConsumerLoop` polls, counts the tries of each (partition, offset) for `attempt_of`,
commits `commit_to` after `apply` returned (so after the DB commit), seeks back to
`retry_at` and pauses the partition for a backoff read from its injected clock, resumes
only partitions still assigned, and reports stuck partitions and lag. Partitions of
different topics are independent here as they are in Kafka; every counter is labelled
with the record's own topic.

Pipelined (`pipelined=True`, the batch worker's choice): while one poll's records are
applied on a thread of their own, the loop polls and decodes the next; it waits for the
first's report and settles it (offsets committed, partitions sent back) before it hands
the second over, dropping from it any partition the first sent back. Transactions stay
one after the other, in each partition's order; only the broker's round trips and the
decoding overlap the database's work.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from shared.messaging.kafka import (
    Message,
    message_from_record,
    request_rejoin,
    topic_identities,
)
from shared.messaging.processor import BatchReport, EventProcessor, Outcome
from shared.telemetry.metrics import metrics

log = logging.getLogger(__name__)

# The longest pause between polls that raised (the broker or the group coordinator gone).
MAX_POLL_RETRY_DELAY = 2.0


def backoff_delay(
    attempt: int,
    base: float = 0.1,
    cap: float = 5.0,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Exponential backoff with full jitter; capped far below max_poll_interval_ms.
    `uniform` draws the jitter (a test passes a deterministic one)."""
    return uniform(base, min(cap, base * 2 ** max(attempt - 1, 0)))


@dataclass(frozen=True)
class _TopicCounters:
    """The counters of one topic (label values resolved once)."""

    consumed: Any
    retried: Any
    outcomes: dict[Outcome, Any]


class ConsumerLoop:
    """Polls, hands each poll to `EventProcessor.apply`, commits offsets after it.

    A partition the processor reports as to be retried is sent back to that record (seek)
    and paused for the backoff delay, while `poll()` keeps the consumer in its group (so
    max_poll_interval_ms is never at risk); the other partitions keep flowing. A
    partition failing for longer than `stuck_after` seconds is reported through
    `on_stuck`, which the health check turns into "not ready"; it is still retried.
    Time is read from `clock` and delays drawn from `backoff` (tests inject both).
    """

    def __init__(
        self,
        consumer: Any,
        processor: EventProcessor,
        stop: threading.Event | None = None,
        *,
        stuck_after: float = 30.0,
        on_stuck: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[int], float] = backoff_delay,
        pipelined: bool = False,
    ) -> None:
        self._consumer = consumer
        self._applier = ThreadPoolExecutor(1, thread_name_prefix="apply") if pipelined else None
        # The poll being applied on the applier's thread, not settled yet.
        self._in_flight: tuple[dict[TopicPartition, list[Message]], Future[BatchReport]] | None = (
            None
        )
        self._processor = processor
        self.stop = stop or threading.Event()
        self._stuck_after = stuck_after
        self._on_stuck = on_stuck
        self._clock = clock
        self._backoff = backoff
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        self._resume_at: dict[TopicPartition, float] = {}
        self._failing_since: dict[TopicPartition, float] = {}
        self.counts = dict.fromkeys(Outcome, 0)
        self.topic_counts: dict[str, dict[Outcome, int]] = {}
        self._topics = [topic.name for topic in processor.topics]
        self._counters: dict[str, _TopicCounters] = {}
        for topic in self._topics:  # each topic's series exist (at 0) from the start
            self._counters_of(topic)
        self._lag_reported: set[TopicPartition] = set()
        self._lag_due = 0.0
        self._topic_ids: dict[str, Any] = {}
        self._poll_failing_since: float | None = None
        self._poll_failures = 0

    def _counters_of(self, topic: str) -> _TopicCounters:
        counters = self._counters.get(topic)
        if counters is None:
            measured = metrics()
            counters = self._counters[topic] = _TopicCounters(
                consumed=measured.events_consumed.labels(topic),
                retried=measured.events_retried.labels(topic),
                outcomes={
                    Outcome.APPLIED: measured.events_applied.labels(topic),
                    Outcome.DUPLICATE: measured.events_duplicate.labels(topic),
                    Outcome.DEAD_LETTERED: measured.events_dead_lettered.labels(topic),
                },
            )
        return counters

    def run(self) -> None:
        """Consume until `stop` is set, then commit what was applied and leave the group."""
        try:
            while not self.stop.is_set():
                self.poll_once()
            self.settle_in_flight()
        finally:
            if self._applier is not None:
                self._applier.shutdown(wait=True)
            self._consumer.close(autocommit=False)

    def poll_once(self, timeout_ms: int = 500) -> None:
        """One poll: apply the whole batch in hand (also when asked to stop), then commit
        the offsets after it."""
        now = self._clock()
        self._resume_due(now)
        if self._resume_at:
            wake = min(self._resume_at.values())
            timeout_ms = max(0, min(timeout_ms, int((wake - now) * 1000) + 1))
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            # kafka-python lets a lost coordinator or broker escape poll() (seen when every
            # node of a cluster went away): the consumer stays usable, so wait and poll
            # again; the broker's return is the consumer's business, not a restart's.
            self.settle_in_flight()
            self._poll_failed(exc)
            return
        if self._poll_failing_since is not None:
            log.info(
                "polling %s again after %.1f s of failures",
                ", ".join(self._topics),
                self._clock() - self._poll_failing_since,
            )
            self._poll_failing_since = None
        recreated = self._recreated_topics()
        sent_back: set[TopicPartition] = set()
        if recreated:
            sent_back = self.settle_in_flight()
            self._read_again_from_the_start(recreated)
        batch = {
            partition: [message_from_record(record) for record in polled]
            for partition, polled in records.items()
            if polled and partition.topic not in recreated
        }
        if self._applier is None:
            if batch:
                self._count_consumed(batch)
                self._settle(batch, self._processor.apply(batch, self.attempt_of))
        else:
            self._hand_over(batch, sent_back)
        self._report_stuck()
        self._report_lag()

    def _count_consumed(self, batch: dict[TopicPartition, list[Message]]) -> None:
        for partition, messages in batch.items():
            self._counters_of(partition.topic).consumed.inc(len(messages))

    def _hand_over(
        self, batch: dict[TopicPartition, list[Message]], sent_back: set[TopicPartition]
    ) -> None:
        """Pipelined: decode this poll while the previous one is applied, settle that one,
        then hand this one to the applier, without the partitions it sent back (they are
        read again from their record to retry, after their pause); `sent_back`: those of
        a settling earlier in this poll."""
        decoded = self._processor.decode(batch) if batch else {}
        sent_back = sent_back | self.settle_in_flight()
        if sent_back:
            batch = {p: m for p, m in batch.items() if p not in sent_back}
            decoded = {p: d for p, d in decoded.items() if p not in sent_back}
        if not batch:
            return
        assert self._applier is not None
        self._count_consumed(batch)
        future = self._applier.submit(self._processor.apply, batch, self.attempt_of, decoded)
        self._in_flight = (batch, future)

    def settle_in_flight(self) -> set[TopicPartition]:
        """Wait for the poll being applied (pipelined), and settle it; the partitions it
        sent back to retry. Nothing to do when none is."""
        if self._in_flight is None:
            return set()
        batch, future = self._in_flight
        self._in_flight = None
        report = future.result()  # an unexpected error of apply is raised here, as unpipelined
        self._settle(batch, report)
        return {p for p, progress in report.partitions.items() if progress.retry_at is not None}

    def _poll_failed(self, exc: KafkaError) -> None:
        """One line when polls start failing; then a growing pause between tries (at most
        `MAX_POLL_RETRY_DELAY`), cut short by `stop`."""
        if self._poll_failing_since is None:
            self._poll_failing_since = self._clock()
            self._poll_failures = 0
            log.warning("polling %s failed (%s); retrying", ", ".join(self._topics), exc)
        self._poll_failures += 1
        self.stop.wait(min(0.1 * 2 ** (self._poll_failures - 1), MAX_POLL_RETRY_DELAY))

    def _recreated_topics(self) -> set[str]:
        """Topics whose id changed since the last poll: created again, or the broker
        rebuilt empty. The positions the consumer holds point into a log that is gone;
        kept, they would skip the new log's first records (or, past its end, wait)."""
        seen = topic_identities(self._consumer, self._topics)
        recreated = {
            topic
            for topic, identity in seen.items()
            if identity is not None and self._topic_ids.get(topic) not in (None, identity)
        }
        self._topic_ids.update({t: i for t, i in seen.items() if i is not None})
        return recreated

    def _read_again_from_the_start(self, topics: set[str]) -> None:
        """Drop this poll's records of `topics` (fetched at positions from the old log),
        read their assigned partitions again from the beginning (the inbox skips whatever
        was applied already), and join the group again: while the topic was missing the
        group may have been assigned none of it, and kafka-python re-assigns only when a
        partition count changes (seen on a cluster rebuilt empty: the member worker kept
        an empty assignment for minutes)."""
        partitions = [tp for tp in self._consumer.assignment() if tp.topic in topics]
        log.warning(
            "topic %s was created again (its id changed): reading partitions %s from the "
            "beginning; the inbox skips what was applied before",
            ", ".join(sorted(topics)),
            sorted(tp.partition for tp in partitions),
        )
        for partition in partitions:
            self._resume_at.pop(partition, None)
            self._failing_since.pop(partition, None)
            self._forget(partition, before=2**63)
        if partitions:
            self._consumer.resume(*partitions)
            self._consumer.seek_to_beginning(*partitions)
        request_rejoin(self._consumer)

    def attempt_of(self, partition: TopicPartition, offset: int) -> int:
        """Which try this is of the record at (partition, offset): 1 + its failed ones."""
        return self._attempts.get((partition, offset), 0) + 1

    def _settle(self, batch: dict[TopicPartition, list[Message]], report: BatchReport) -> None:
        """Count the outcomes, send back and pause what must come again, and commit
        what the processor applied or dead-lettered (its DB commit is behind it)."""
        for topic, outcomes in report.by_topic.items():
            counters = self._counters_of(topic).outcomes
            counts = self.topic_counts.setdefault(topic, dict.fromkeys(Outcome, 0))
            for outcome in outcomes:
                self.counts[outcome] += 1
                counts[outcome] += 1
                counters[outcome].inc()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        now = self._clock()
        # Pipelined, a poll ran between this batch's apply and now: a rebalance in it may
        # have taken partitions away. Their new owner starts from the committed offset;
        # there is nothing here to commit or send back (seek, pause) for them.
        assigned = self._consumer.assignment() if self._applier is not None else None
        for partition, messages in batch.items():
            progress = report.partitions[partition]
            if assigned is not None and partition not in assigned:
                # (Its offsets neither: a commit naming a partition of another member
                # fails whole, and the new owner's inbox skips what was applied.)
                self._forget(partition, before=2**63)
                continue
            if progress.commit_to is not None:
                offsets[partition] = OffsetAndMetadata(progress.commit_to, "", -1)
                self._forget(partition, before=progress.commit_to)
            if progress.retry_at is not None:
                again = sum(1 for m in messages if m.offset >= progress.retry_at)
                self._retry_later(partition, progress.retry_at, again, now)
        if offsets:
            self._commit(offsets)

    def _forget(self, partition: TopicPartition, before: int) -> None:
        """The partition moved on: its tries of earlier records, and its failing streak."""
        for position in [p for p in self._attempts if p[0] == partition and p[1] < before]:
            del self._attempts[position]
        self._failing_since.pop(partition, None)

    def _retry_later(
        self, partition: TopicPartition, offset: int, records: int, now: float
    ) -> None:
        attempt = self.attempt_of(partition, offset)
        self._attempts[(partition, offset)] = attempt
        self._counters_of(partition.topic).retried.inc(records)
        self._failing_since.setdefault(partition, now)
        self._consumer.seek(partition, offset)
        self._consumer.pause(partition)
        self._resume_at[partition] = now + self._backoff(attempt)

    def _resume_due(self, now: float) -> None:
        due = [tp for tp, at in self._resume_at.items() if at <= now]
        if not due:
            return
        for partition in due:
            del self._resume_at[partition]
        # A partition taken away by a rebalance meanwhile is no longer ours to resume
        # (its new owner starts unpaused, from the committed offset), nor to count.
        assigned = self._consumer.assignment()
        self._failing_since = {tp: t for tp, t in self._failing_since.items() if tp in assigned}
        self._attempts = {p: n for p, n in self._attempts.items() if p[0] in assigned}
        ours = [tp for tp in due if tp in assigned]
        if ours:
            self._consumer.resume(*ours)

    def _report_stuck(self) -> None:
        if self._on_stuck is None:
            return
        limit = self._clock() - self._stuck_after
        self._on_stuck(
            [
                f"{tp.topic}[{tp.partition}]"
                for tp, since in self._failing_since.items()
                if since < limit
            ]
        )

    def _report_lag(self, every: float = 1.0) -> None:
        """Consumer lag per assigned partition, from the high watermark of the last
        fetch (no extra request to the broker); at most once per `every` seconds."""
        now = self._clock()
        if now < self._lag_due:
            return
        self._lag_due = now + every
        gauge = metrics().consumer_lag
        assigned = set(self._consumer.assignment())
        for gone in self._lag_reported - assigned:
            gauge.remove(gone.topic, str(gone.partition))
        self._lag_reported &= assigned
        for partition in assigned:
            try:
                highwater = self._consumer.highwater(partition)
                position = self._consumer.position(partition, timeout_ms=0)
            except KafkaError:
                continue  # revoked meanwhile, or no position yet
            if highwater is None or position is None:
                continue  # nothing fetched from it yet
            lag = max(highwater - position, 0)
            gauge.labels(partition.topic, str(partition.partition)).set(lag)
            self._lag_reported.add(partition)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner redelivers these records and
            # the inbox turns them into no-ops.
            log.warning("offset commit failed, records will be redelivered: %s", exc)
