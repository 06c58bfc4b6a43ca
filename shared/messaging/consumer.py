"""Consuming a topic: decode, apply in one transaction with the inbox row, commit the
offset only afterwards, retry what may succeed later, dead-letter what never will.

Commit order (the guarantee): DB commit of the effects and the inbox row, then the Kafka
offset. A crash between the two redelivers records whose inbox rows already exist, so
they change nothing. Nothing is acknowledged that was not applied or dead-lettered.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from marshmallow import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.messaging.deadletters import dead_letter_headers, error_line
from shared.messaging.failpoints import failpoint
from shared.messaging.inbox import InboxRecord, claim_events
from shared.messaging.kafka import Message, Producer, message_from_record
from shared.messaging.pipeline import Topic
from shared.storage.db import Database, UnitOfWork
from shared.telemetry.logs import log_context
from shared.telemetry.metrics import metrics
from shared.telemetry.tracecontext import SpanKind, span, trace_id_of

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """This record can never be applied, however often it is retried."""


class RetryLater(Exception):
    """The record may succeed later; seek back and try again after `delay` seconds."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


class Outcome(enum.Enum):
    """What became of one record."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class EventContext:
    """Metadata of the event being handled, from its CloudEvents headers."""

    event_id: str
    traceparent: str | None
    message: Message


E = TypeVar("E")

Handler = Callable[[E, UnitOfWork], None]
"""What a service does with one event of its topic, inside the consumer's transaction."""


def is_transient(exc: BaseException) -> bool:
    """Failures of the database rather than of the record: lost connections, deadlocks,
    serialization failures, pool exhaustion, a read-only standby after failover, a missing
    table or privilege during an operator's slip. They are retried for as long as they
    last; dead-lettering good events because the database is unwell would lose them.
    Only integrity and data errors say something about the record itself."""
    if isinstance(exc, IntegrityError | DataError):
        return False
    return isinstance(exc, DBAPIError | PoolTimeoutError)


def backoff_delay(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter; capped far below max_poll_interval_ms."""
    return random.uniform(base, min(cap, base * 2 ** max(attempt - 1, 0)))


def decode(topic: Topic[E], message: Message) -> E:
    """The event in `message`, validated and built by its topic's schema."""
    try:
        document = json.loads(message.value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise PermanentError(f"value is not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PermanentError("value is not a JSON object")
    try:
        return topic.load(document)
    except ValidationError as exc:
        raise PermanentError(f"value fails the {topic.name} schema: {exc.messages}") from None


def event_id_of(message: Message) -> str:
    """`ce_id`, or for producers that send none, the record's position (stable on redelivery)."""
    return message.header("ce_id") or f"{message.topic}:{message.partition}:{message.offset}"


class EventProcessor(Generic[E]):
    """Applies one topic's records with one handler, exactly once per event id."""

    def __init__(
        self,
        topic: Topic[E],
        handler: Handler[E],
        database: Database,
        inbox: type[InboxRecord],
        dead_letters: Producer,
        *,
        after_commit: Callable[[], None] | None = None,
        max_unexpected_attempts: int = 5,
    ) -> None:
        self.topic = topic
        self._handler = handler
        self._database = database
        self._inbox = inbox
        self._dead_letters = dead_letters
        self._after_commit = after_commit
        self._max_unexpected_attempts = max_unexpected_attempts

    def process(self, message: Message, attempt: int = 1) -> Outcome:
        """Apply `message` or dead-letter it; raise RetryLater if it may succeed later."""
        with message_log_context(message):
            return self._process(message, attempt)

    def _process(self, message: Message, attempt: int) -> Outcome:
        try:
            return self._apply([(message, decode(self.topic, message))])[0]
        except PermanentError as exc:
            return self.dead_letter(message, str(exc), attempt)
        except IntegrityError as exc:
            # The inbox row went in, so this is no redelivery: the event contradicts
            # what is stored (another event already created this member).
            return self.dead_letter(message, f"conflicts with stored state: {exc.orig}", attempt)
        except Exception as exc:
            if is_transient(exc):
                log.warning("transient failure on %s, will retry: %s", _where(message), exc)
                raise RetryLater(str(exc), backoff_delay(attempt)) from exc
            if attempt >= self._max_unexpected_attempts:
                log.exception("giving up on %s after %d attempts", _where(message), attempt)
                return self.dead_letter(message, f"{type(exc).__name__}: {exc}", attempt)
            log.exception("unexpected failure on %s (attempt %d)", _where(message), attempt)
            raise RetryLater(str(exc), backoff_delay(attempt)) from exc

    def process_batch(
        self, messages: Sequence[Message], attempt: int = 1
    ) -> tuple[list[Outcome], list[tuple[Message, str]]]:
        """Apply `messages` in one transaction: one commit and one multi-row INSERT per
        table for the whole batch, which is what lets a worker drain a backlog fast.

        Returns the outcomes of the records that decoded (committed), and the records
        that did not with why, for the caller to dead-letter (`dead_letter`).
        Raises RetryLater when the database is unwell (nothing was applied); raises any
        other failure (a record conflicting with stored state, a handler bug) unchanged,
        for the caller to apply the records one by one with `process`, so that only the
        bad record is retried or dead-lettered.
        """
        decoded: list[tuple[Message, E]] = []
        rejected: list[tuple[Message, str]] = []
        for message in messages:
            try:
                decoded.append((message, decode(self.topic, message)))
            except PermanentError as exc:
                rejected.append((message, str(exc)))
        try:
            outcomes = self._apply(decoded)
        except Exception as exc:
            if is_transient(exc):
                log.warning(
                    "transient failure on a batch of %d (%s), will retry: %s",
                    len(messages),
                    _span_of(messages),
                    exc,
                )
                raise RetryLater(str(exc), backoff_delay(attempt)) from exc
            raise
        return outcomes, rejected

    def _apply(self, decoded: list[tuple[Message, E]]) -> list[Outcome]:
        """Claim the events in the inbox and apply the new ones, all in one transaction."""
        if not decoded:
            return []
        contexts = [
            EventContext(event_id_of(message), message.header("traceparent"), message)
            for message, _ in decoded
        ]
        group = self.topic.consumer_group
        durations = []
        with self._database.unit_of_work(self._after_commit) as uow:
            # dict.fromkeys: the same event twice in one batch is claimed once.
            wanted = dict.fromkeys((c.event_id, c.message.topic) for c in contexts)
            unclaimed = claim_events(uow.session, self._inbox, group, list(wanted))
            outcomes = []
            for (message, event), context in zip(decoded, contexts, strict=True):
                if context.event_id not in unclaimed:
                    outcomes.append(Outcome.DUPLICATE)
                    continue
                unclaimed.discard(context.event_id)
                failpoint("handle", message.value.decode("utf-8", errors="replace"))
                with self._event_scope(message, context):
                    started = time.perf_counter()
                    self._handler(event, uow)
                    durations.append(time.perf_counter() - started)
                    log.debug("handled %s", _where(message))
                outcomes.append(Outcome.APPLIED)
            uow.commit()
        failpoint("after-db-commit")
        # Only once committed: a batch rolled back and applied again record by record
        # must not count its handlers twice.
        handler_duration = metrics().handler_duration.labels(self.topic.name)
        for duration in durations:
            handler_duration.observe(duration)
        return outcomes

    @contextlib.contextmanager
    def _event_scope(self, message: Message, context: EventContext) -> Iterator[None]:
        """The event's span (child of the producer's traceparent) and its ids on every
        log line."""
        key = message.key.decode("utf-8", errors="replace") if message.key else None
        with (
            log_context(ce_id=context.event_id, member_uuid=key),
            span(  # adds the trace id
                f"{message.topic} process",
                SpanKind.CONSUMER,
                parent=context.traceparent,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": message.topic,
                    "messaging.consumer.group.name": self.topic.consumer_group,
                    "messaging.message.id": context.event_id,
                    "messaging.destination.partition.id": str(message.partition),
                    "messaging.kafka.offset": message.offset,
                },
            ),
        ):
            yield

    def dead_letter(self, message: Message, error: str, attempts: int) -> Outcome:
        """Copy `message` to the topic's DLT with why and where; wait for the broker's ack."""
        headers = dead_letter_headers(message, error, attempts)
        try:
            self._dead_letters.send(
                self.topic.dead_letter, value=message.value, key=message.key, headers=headers
            ).get(timeout=30)
        except Exception as exc:  # a record that cannot even be parked must not stop the loop
            with message_log_context(message):
                log.warning("dead-letter send for %s failed, will retry: %s", _where(message), exc)
            raise RetryLater(f"dead-letter send failed: {exc}", backoff_delay(attempts)) from exc
        with message_log_context(message):
            log.error("dead-lettered %s: %s", _where(message), error_line(error))
        return Outcome.DEAD_LETTERED


def message_log_context(message: Message) -> contextlib.AbstractContextManager[None]:
    """Tag log lines with the record's `ce_id`, key (the member uuid) and trace id."""
    return log_context(
        ce_id=event_id_of(message),
        member_uuid=message.key.decode("utf-8", errors="replace") if message.key else None,
        trace_id=trace_id_of(message.header("traceparent")),
    )


def _span_of(messages: Sequence[Message]) -> str:
    """`profile-insert[0]@5-9 [3]@2` : which records a batch held, for a log line."""
    ranges: dict[int, list[int]] = {}
    for message in messages:
        ranges.setdefault(message.partition, []).append(message.offset)
    parts = [
        f"[{p}]@{min(o)}" + (f"-{max(o)}" if len(o) > 1 else "") for p, o in sorted(ranges.items())
    ]
    return f"{messages[0].topic}{' '.join(parts)}" if messages else "nothing"


def _where(message: Message) -> str:
    return f"{message.topic}[{message.partition}]@{message.offset}"


class ConsumerLoop:
    """Polls, applies each poll's records in one transaction, commits offsets after the DB.

    A batch that fails because the database is unwell sends its partitions back to the
    batch's first records (seek) and pauses them for the backoff delay, while `poll()`
    keeps the consumer in its group (so max_poll_interval_ms is never at risk). A batch
    that fails for any other reason is applied record by record: a record that may
    succeed later holds back only its own partition. A partition failing for longer than
    `stuck_after` seconds is reported through `on_stuck`, which the health check turns
    into "not ready"; it is still retried.
    """

    def __init__(
        self,
        consumer: Any,
        processor: EventProcessor[Any],
        stop: threading.Event | None = None,
        *,
        stuck_after: float = 30.0,
        on_stuck: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._processor = processor
        self.stop = stop or threading.Event()
        self._stuck_after = stuck_after
        self._on_stuck = on_stuck
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        self._resume_at: dict[TopicPartition, float] = {}
        self._failing_since: dict[TopicPartition, float] = {}
        self.counts = dict.fromkeys(Outcome, 0)
        topic = processor.topic.name
        measured = metrics()
        self._consumed = measured.events_consumed.labels(topic)
        self._retried = measured.events_retried.labels(topic)
        self._outcome_counters = {
            Outcome.APPLIED: measured.events_applied.labels(topic),
            Outcome.DUPLICATE: measured.events_duplicate.labels(topic),
            Outcome.DEAD_LETTERED: measured.events_dead_lettered.labels(topic),
        }
        self._lag_reported: set[TopicPartition] = set()
        self._lag_due = 0.0

    def run(self) -> None:
        """Consume until `stop` is set, then commit what was applied and leave the group."""
        try:
            while not self.stop.is_set():
                self.poll_once()
        finally:
            self._consumer.close(autocommit=False)

    def poll_once(self, timeout_ms: int = 500) -> None:
        """One poll: apply the whole batch in hand (also when asked to stop), then commit
        the offsets after it."""
        now = time.monotonic()
        self._resume_due(now)
        if self._resume_at:
            wake = min(self._resume_at.values())
            timeout_ms = max(0, min(timeout_ms, int((wake - now) * 1000) + 1))
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        received = sum(len(records) for records in batch.values())
        if received:
            self._consumed.inc(received)
        if received > 1:
            self._apply_batch(batch)
        elif batch:
            self._apply_one_by_one(batch)
        self._report_stuck()
        self._report_lag()

    def _report_lag(self, every: float = 1.0) -> None:
        """Consumer lag per assigned partition, from the high watermark of the last
        fetch (no extra request to the broker); at most once per `every` seconds."""
        now = time.monotonic()
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

    def _apply_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """The whole poll in one transaction; on a failure that is not the database's,
        record by record instead."""
        firsts = {partition: records[0].offset for partition, records in batch.items()}
        attempt = 1 + max(self._attempts.get(position, 0) for position in firsts.items())
        messages = [message_from_record(r) for records in batch.values() for r in records]
        try:
            outcomes, rejected = self._processor.process_batch(messages, attempt)
        except RetryLater as retry:
            for partition, offset in firsts.items():
                self._retry_later(partition, offset, attempt, retry.delay, len(batch[partition]))
            return
        except Exception as exc:
            log.warning(
                "a batch of %d (%s) failed (%s); applying it record by record",
                len(messages),
                _span_of(messages),
                exc,
            )
            self._apply_one_by_one(batch)
            return
        for outcome in outcomes:  # committed, whatever happens to the rejected records
            self._record(outcome)
        # Committed up to here, per partition; a record that could not even be
        # dead-lettered holds back its partition from itself on (the records after it
        # come again and are duplicates then).
        upto = {partition: records[-1].offset + 1 for partition, records in batch.items()}
        for message, error in rejected:
            partition = TopicPartition(message.topic, message.partition)
            if upto[partition] <= message.offset:
                continue  # this partition is already held back at an earlier record
            try:
                self._record(self._processor.dead_letter(message, error, attempt))
            except RetryLater as retry:
                upto[partition] = message.offset
                behind = sum(1 for r in batch[partition] if r.offset >= message.offset)
                self._retry_later(partition, message.offset, attempt, retry.delay, behind)
        for position in firsts.items():
            if upto[position[0]] > batch[position[0]][-1].offset:
                self._attempts.pop(position, None)
                self._failing_since.pop(position[0], None)
        self._commit(
            {
                partition: OffsetAndMetadata(offset, "", -1)
                for partition, offset in upto.items()
                if offset > firsts[partition]
            }
        )

    def _apply_one_by_one(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Each record in its own transaction: a failing record holds back only its own
        partition."""
        done: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, records in batch.items():
            for record in records:
                position = (partition, record.offset)
                attempt = self._attempts.get(position, 0) + 1
                try:
                    outcome = self._processor.process(message_from_record(record), attempt)
                except RetryLater as retry:
                    behind = sum(1 for r in records if r.offset >= record.offset)
                    self._retry_later(partition, record.offset, attempt, retry.delay, behind)
                    break
                self._attempts.pop(position, None)
                self._failing_since.pop(partition, None)
                self._record(outcome)
                done[partition] = OffsetAndMetadata(record.offset + 1, "", -1)
        if done:
            self._commit(done)

    def _record(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1
        self._outcome_counters[outcome].inc()

    def _retry_later(
        self,
        partition: TopicPartition,
        offset: int,
        attempt: int,
        delay: float,
        records: int = 1,
    ) -> None:
        self._retried.inc(records)
        self._attempts[(partition, offset)] = attempt
        self._failing_since.setdefault(partition, time.monotonic())
        self._consumer.seek(partition, offset)
        self._consumer.pause(partition)
        self._resume_at[partition] = time.monotonic() + delay

    def _resume_due(self, now: float) -> None:
        due = [tp for tp, at in self._resume_at.items() if at <= now]
        if not due:
            return
        for partition in due:
            del self._resume_at[partition]
        # A partition taken away by a rebalance meanwhile is no longer ours to resume
        # (its new owner starts unpaused, from the committed offset).
        assigned = self._consumer.assignment()
        self._failing_since = {tp: t for tp, t in self._failing_since.items() if tp in assigned}
        ours = [tp for tp in due if tp in assigned]
        if ours:
            self._consumer.resume(*ours)

    def _report_stuck(self) -> None:
        if self._on_stuck is None:
            return
        limit = time.monotonic() - self._stuck_after
        self._on_stuck(
            [
                f"{tp.topic}[{tp.partition}]"
                for tp, since in self._failing_since.items()
                if since < limit
            ]
        )

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner redelivers these records and
            # the inbox turns them into no-ops.
            log.warning("offset commit failed, records will be redelivered: %s", exc)
