"""Consuming a topic: decode, apply in one transaction with the inbox row, commit the
offset only afterwards, retry what may succeed later, dead-letter what never will.

Commit order (the guarantee): DB commit of the effects and the inbox row, then the Kafka
offset. A crash between the two redelivers records whose inbox rows already exist, so
they change nothing. Nothing is acknowledged that was not applied or dead-lettered.

Two parts, one contract between them:

- `EventProcessor.apply(batch, attempt_of) -> BatchReport` decides what becomes of each
  record: it decodes, applies the batch in one transaction (or record by record when the
  batch fails for a reason of its own), dead-letters what can never apply, and reports
  per partition how far it got (`commit_to`) and where the partition must start again
  (`retry_at`). It never raises for a record, and knows nothing of time or of Kafka's
  consumer.
- `ConsumerLoop` polls, counts the tries of each (partition, offset) for `attempt_of`,
  commits `commit_to` after `apply` returned (so after the DB commit), seeks back to
  `retry_at` and pauses the partition for a backoff read from its injected clock,
  resumes only partitions still assigned, and reports stuck partitions and lag.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    """Raised by `EventProcessor.process` (one record, no loop): the record may succeed
    later; try it again after `delay` seconds."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


class Outcome(enum.Enum):
    """What became of one record."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class PartitionProgress:
    """How far `EventProcessor.apply` got in one partition of a batch.

    `commit_to`: the offset to commit (every record before it was applied or
    dead-lettered), or None when not even the first record was. `retry_at`: the first
    record that was neither, from which the partition must be read again after a
    backoff, or None when the whole partition is done; `reason` says why. When both are
    set they are equal: nothing after a record that must come again is acknowledged.
    """

    commit_to: int | None
    retry_at: int | None = None
    reason: str = ""


@dataclass
class BatchReport:
    """What `EventProcessor.apply` did with a batch: the outcome of every record that was
    committed or dead-lettered (for the counters), and each partition's progress."""

    outcomes: list[Outcome] = field(default_factory=list)
    partitions: dict[TopicPartition, PartitionProgress] = field(default_factory=dict)


AttemptOf = Callable[[TopicPartition, int], int]
"""The try (1 for the first) that this is of the record at (partition, offset)."""


def first_attempt(partition: TopicPartition, offset: int) -> int:
    """`AttemptOf` for a caller that does not count tries: every record's first."""
    return 1


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


def backoff_delay(
    attempt: int,
    base: float = 0.1,
    cap: float = 5.0,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Exponential backoff with full jitter; capped far below max_poll_interval_ms.
    `uniform` draws the jitter (a test passes a deterministic one)."""
    return uniform(base, min(cap, base * 2 ** max(attempt - 1, 0)))


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


@dataclass(frozen=True)
class _Rejected:
    """A record that did not decode, and why."""

    reason: str


@dataclass(frozen=True)
class _Again:
    """A record to be read again later, and why."""

    reason: str


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

    def apply(
        self,
        batch: Mapping[TopicPartition, Sequence[Message]],
        attempt_of: AttemptOf = first_attempt,
    ) -> BatchReport:
        """Apply a poll's records (each partition's in offset order) or dead-letter those
        that never will apply; report per partition what to commit and where to retry.

        The whole batch goes in one transaction: one commit and one multi-row INSERT per
        table, which is what lets a worker drain a backlog fast. If the database is
        unwell, nothing is applied and every partition is to be retried from its first
        record. If the batch fails for any other reason (a record conflicting with stored
        state, a handler bug), its records are applied one by one, so that only the bad
        record is retried or dead-lettered. Records that do not decode never reach a
        transaction; they are dead-lettered once the batch is committed.
        """
        decoded = {
            partition: [(message, self._decode(message)) for message in messages]
            for partition, messages in batch.items()
            if messages
        }
        together = [
            (message, event)
            for pairs in decoded.values()
            for message, event in pairs
            if not isinstance(event, _Rejected)
        ]
        report = BatchReport()
        applied = False  # every record that decoded is committed
        if len(together) > 1:
            try:
                report.outcomes = self._transaction(together)
            except Exception as exc:
                messages = [message for pairs in decoded.values() for message, _ in pairs]
                if is_transient(exc):
                    log.warning(
                        "transient failure on a batch of %d (%s), will retry: %s",
                        len(messages),
                        _span_of(messages),
                        exc,
                    )
                    for partition, pairs in decoded.items():
                        first = pairs[0][0].offset
                        report.partitions[partition] = PartitionProgress(None, first, str(exc))
                    return report
                log.warning(
                    "a batch of %d (%s) failed (%s); applying it record by record",
                    len(messages),
                    _span_of(messages),
                    exc,
                )
            else:
                applied = True
        # The batch's outcomes count whatever happens below to the records around them.
        for partition, pairs in decoded.items():
            report.partitions[partition] = self._finish(
                partition, pairs, applied, attempt_of, report.outcomes
            )
        return report

    def _finish(
        self,
        partition: TopicPartition,
        pairs: list[tuple[Message, E | _Rejected]],
        applied: bool,
        attempt_of: AttemptOf,
        outcomes: list[Outcome],
    ) -> PartitionProgress:
        """Walk one partition in offset order: dead-letter what did not decode, apply
        alone what the batch transaction did not (`applied`: it committed every record
        that decoded); stop at the first record that must come again (the records after
        it come again too, and are duplicates then if they were committed)."""
        for message, event in pairs:
            if applied and not isinstance(event, _Rejected):
                continue
            attempt = attempt_of(partition, message.offset)
            with message_log_context(message):
                if isinstance(event, _Rejected):
                    result = self._dead_letter(message, event.reason, attempt)
                else:
                    result = self._apply_alone(message, event, attempt)
            if isinstance(result, _Again):
                first = pairs[0][0].offset
                commit_to = message.offset if message.offset > first else None
                return PartitionProgress(commit_to, message.offset, result.reason)
            outcomes.append(result)
        return PartitionProgress(pairs[-1][0].offset + 1)

    def process(self, message: Message, attempt: int = 1) -> Outcome:
        """One record outside a consumer loop (tools, tests): `apply` on a batch of one,
        with a record that must come again raised as RetryLater."""
        partition = TopicPartition(message.topic, message.partition)
        report = self.apply({partition: [message]}, lambda _partition, _offset: attempt)
        progress = report.partitions[partition]
        if progress.retry_at is not None:
            raise RetryLater(progress.reason, backoff_delay(attempt))
        [outcome] = report.outcomes
        return outcome

    def _decode(self, message: Message) -> E | _Rejected:
        try:
            return decode(self.topic, message)
        except PermanentError as exc:
            return _Rejected(str(exc))

    def _apply_alone(self, message: Message, event: E, attempt: int) -> Outcome | _Again:
        """`message` in its own transaction; a failure classified: retried while it may
        still succeed, dead-lettered once it never will."""
        try:
            return self._transaction([(message, event)])[0]
        except Exception as exc:
            if is_transient(exc):
                log.warning("transient failure on %s, will retry: %s", _where(message), exc)
                return _Again(str(exc))
            if isinstance(exc, IntegrityError):
                # The inbox row went in, so this is no redelivery: the event contradicts
                # what is stored (another event already created this member).
                error = f"conflicts with stored state: {exc.orig}"
                return self._dead_letter(message, error, attempt)
            if attempt >= self._max_unexpected_attempts:
                log.exception("giving up on %s after %d attempts", _where(message), attempt)
                return self._dead_letter(message, f"{type(exc).__name__}: {exc}", attempt)
            log.exception("unexpected failure on %s (attempt %d)", _where(message), attempt)
            return _Again(str(exc))

    def _transaction(self, decoded: list[tuple[Message, E]]) -> list[Outcome]:
        """Claim the events in the inbox and apply the new ones, all in one transaction."""
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

    def _dead_letter(self, message: Message, error: str, attempts: int) -> Outcome | _Again:
        """Copy `message` to the topic's DLT with why and where, and wait for the broker's
        ack; a send that fails means the record must come again (a record that cannot
        even be parked must not stop the loop, nor be acknowledged)."""
        headers = dead_letter_headers(message, error, attempts)
        try:
            self._dead_letters.send(
                self.topic.dead_letter, value=message.value, key=message.key, headers=headers
            ).get(timeout=30)
        except Exception as exc:
            log.warning("dead-letter send for %s failed, will retry: %s", _where(message), exc)
            return _Again(f"dead-letter send failed: {exc}")
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
        processor: EventProcessor[Any],
        stop: threading.Event | None = None,
        *,
        stuck_after: float = 30.0,
        on_stuck: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[int], float] = backoff_delay,
    ) -> None:
        self._consumer = consumer
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
        now = self._clock()
        self._resume_due(now)
        if self._resume_at:
            wake = min(self._resume_at.values())
            timeout_ms = max(0, min(timeout_ms, int((wake - now) * 1000) + 1))
        records = self._consumer.poll(timeout_ms=timeout_ms)
        batch = {
            partition: [message_from_record(record) for record in polled]
            for partition, polled in records.items()
            if polled
        }
        received = sum(len(messages) for messages in batch.values())
        if received:
            self._consumed.inc(received)
            self._settle(batch, self._processor.apply(batch, self.attempt_of))
        self._report_stuck()
        self._report_lag()

    def attempt_of(self, partition: TopicPartition, offset: int) -> int:
        """Which try this is of the record at (partition, offset): 1 + its failed ones."""
        return self._attempts.get((partition, offset), 0) + 1

    def _settle(self, batch: dict[TopicPartition, list[Message]], report: BatchReport) -> None:
        """Count the outcomes, send back and pause what must come again, and commit
        what the processor applied or dead-lettered (its DB commit is behind it)."""
        for outcome in report.outcomes:
            self.counts[outcome] += 1
            self._outcome_counters[outcome].inc()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        now = self._clock()
        for partition, messages in batch.items():
            progress = report.partitions[partition]
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
        self._retried.inc(records)
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
