"""Applying a consumer group's records: route each by its topic to that topic's decoder
and handler (a worker may read several topics in one group), apply a batch in one
transaction with the inbox rows, retry what may succeed later, dead-letter what never
will, and report per partition what may be committed. Once a transaction committed, each
applied event gets a flow line saying what its handler did (shared.telemetry.logs).

The guarantee lives here: the effects of an event and its inbox row are committed in
one transaction, so a redelivered event finds its row and changes nothing, and two
workers racing on one event collide on the inbox key. The consumer loop
(shared/messaging/consumer.py) commits offsets only up to what this reports as applied
or dead-lettered, after the DB commit.

`EventProcessor.apply(batch, attempt_of) -> BatchReport` decides what becomes of each
record: it decodes, applies the batch in one transaction (or record by record when the
batch fails for a reason of its own), dead-letters what can never apply, and reports per
partition how far it got (`commit_to`) and where the partition must start again
(`retry_at`). It never raises for a record, and knows nothing of time or of Kafka's
consumer.

A batch may hold records of several of the worker's topics; they go in one transaction.
The inbox is keyed by (consumer group, event id), which holds across topics: event ids
are UUIDs, and a record without one is known by its position, which names its topic.
Everything said about a record (its dead-letter topic, metrics, spans, log and flow
lines) names the record's own topic.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kafka.structs import TopicPartition
from marshmallow import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.messaging import failpoints
from shared.messaging.deadletters import dead_letter_headers, error_line
from shared.messaging.failpoints import failpoint
from shared.messaging.inbox import InboxRecord, claim_events
from shared.messaging.kafka import Message, Producer
from shared.messaging.pipeline import Topic
from shared.storage.db import Database, UnitOfWork
from shared.telemetry.logs import FLOW_LOGGER, flow_level, log_context
from shared.telemetry.metrics import metrics
from shared.telemetry.tracecontext import SpanKind, record_spans, span, trace_id_of

log = logging.getLogger(__name__)
flow_log = logging.getLogger(FLOW_LOGGER)


class PermanentError(Exception):
    """This record can never be applied, however often it is retried."""


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
    """What `EventProcessor.apply` did with a batch: per topic, the outcome of every
    record that was committed or dead-lettered (for the counters), and each partition's
    progress."""

    by_topic: dict[str, list[Outcome]] = field(default_factory=dict)
    partitions: dict[TopicPartition, PartitionProgress] = field(default_factory=dict)

    @property
    def outcomes(self) -> list[Outcome]:
        """Every topic's outcomes (in order within a topic)."""
        return [outcome for outcomes in self.by_topic.values() for outcome in outcomes]

    def add(self, topic: str, outcome: Outcome) -> None:
        """Count what became of a record of `topic`."""
        self.by_topic.setdefault(topic, []).append(outcome)


AttemptOf = Callable[[TopicPartition, int], int]
"""The try (1 for the first) that this is of the record at (partition, offset)."""


def first_attempt(partition: TopicPartition, offset: int) -> int:
    """`AttemptOf` for a caller that does not count tries: every record's first."""
    return 1


@dataclass(frozen=True)
class EventContext:
    """Metadata of the event being handled, from its CloudEvents headers."""

    event_id: str
    message: Message

    @property
    def traceparent(self) -> str | None:
        return self.message.header("traceparent")


E = TypeVar("E")


class Summary:
    """What a handler did with one event, in a few words for the worker's flow line
    (`USER profile created (3 styles)`): a template and its arguments, formatted only if
    the line is logged. Never personal data (a nickname is): ids, roles, counts."""

    __slots__ = ("args", "template")

    def __init__(self, template: str, *args: object) -> None:
        self.template = template
        self.args = args

    def __str__(self) -> str:
        return self.template % self.args if self.args else self.template


Handler = Callable[[E, UnitOfWork], Summary | None]
"""What a service does with one event of its topic, inside the consumer's transaction;
it may say what it did (a Summary), which the worker logs once the transaction committed."""

BatchHandler = Callable[[Sequence[Any], UnitOfWork], Sequence[Summary | None]]
"""What a service does with all the new events of a transaction that are routed to it
(in the order they were polled, each partition's in offset order), at once: where one
statement for many events pays, as folding a poll's activity into one counter update per
partner. It answers one Summary (or None) per event, in the order given. Every route
naming the same batch handler shares the one call."""


def is_transient(exc: BaseException) -> bool:
    """Failures of the database rather than of the record: lost connections, deadlocks,
    serialization failures, pool exhaustion, a read-only standby after failover, a missing
    table or privilege during an operator's slip. They are retried for as long as they
    last; dead-lettering good events because the database is unwell would lose them.
    Only integrity and data errors say something about the record itself."""
    if isinstance(exc, IntegrityError | DataError):
        return False
    return isinstance(exc, DBAPIError | PoolTimeoutError)


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


@dataclass(frozen=True)
class Route(Generic[E]):
    """One topic a worker reads, and where its events go: `handler`, one event at a time,
    or `batch`, every new event of the transaction routed to that batch handler at once."""

    topic: Topic[E]
    handler: Handler[E] | None = None
    batch: BatchHandler | None = None

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.batch is None):
            raise ValueError(f"route {self.topic.name}: give a handler or a batch handler")


def consumer_group_of(routes: Sequence[Route[Any]]) -> str:
    """The one consumer group that reads every topic of `routes`; ValueError unless there
    is at least one route, no topic twice, and every topic names the same group."""
    if not routes:
        raise ValueError("a worker reads at least one topic")
    names = [route.topic.name for route in routes]
    if len(set(names)) != len(names):
        raise ValueError(f"a topic is routed twice: {names}")
    groups = {route.topic.consumer_group for route in routes}
    if len(groups) != 1:
        raise ValueError(f"topics {names} are read by different groups {sorted(groups)}")
    return routes[0].topic.consumer_group


class EventProcessor:
    """Applies the records of one consumer group's topics, each with its topic's handler,
    exactly once per event id."""

    def __init__(
        self,
        routes: Sequence[Route[Any]],
        database: Database,
        inbox: type[InboxRecord],
        dead_letters: Producer,
        *,
        after_commit: Callable[[], None] | None = None,
        max_unexpected_attempts: int = 5,
        one_event_per_transaction: bool = False,
    ) -> None:
        self.group = consumer_group_of(routes)
        self._routes: dict[str, Route[Any]] = {route.topic.name: route for route in routes}
        self.topics: tuple[Topic[Any], ...] = tuple(route.topic for route in routes)
        self._database = database
        self._inbox = inbox
        self._dead_letters = dead_letters
        self._after_commit = after_commit
        self._max_unexpected_attempts = max_unexpected_attempts
        # WORKER_TRANSACTION=event: every record in its own transaction, the way a worker
        # without batching works (the benchmark's baseline), never the default.
        self._one_event_per_transaction = one_event_per_transaction

    def decode(
        self, batch: Mapping[TopicPartition, Sequence[Message]]
    ) -> dict[TopicPartition, list[tuple[Message, Any]]]:
        """Each record of `batch` with its event, or why it does not decode; what `apply`
        does first, which a pipelined consumer does while the previous batch is applied."""
        return {
            partition: [(message, self._decode(message)) for message in messages]
            for partition, messages in batch.items()
            if messages
        }

    def apply(
        self,
        batch: Mapping[TopicPartition, Sequence[Message]],
        attempt_of: AttemptOf = first_attempt,
        decoded: Mapping[TopicPartition, list[tuple[Message, Any]]] | None = None,
    ) -> BatchReport:
        """Apply a poll's records (each partition's in offset order) or dead-letter those
        that never will apply; report per partition what to commit and where to retry.

        The whole batch goes in one transaction: one commit and one multi-row INSERT per
        table, which is what lets a worker drain a backlog fast. If the database is
        unwell, nothing is applied and every partition is to be retried from its first
        record. If the batch fails for any other reason (a record conflicting with stored
        state, a handler bug), its records are applied one by one, so that only the bad
        record is retried or dead-lettered. Records that do not decode never reach a
        transaction; they are dead-lettered once the batch is committed. `decoded`: what
        `decode(batch)` answered, when the caller decoded the batch already.
        """
        if decoded is None:
            decoded = self.decode(batch)
        together = [
            (message, event)
            for pairs in decoded.values()
            for message, event in pairs
            if not isinstance(event, _Rejected)
        ]
        report = BatchReport()
        applied = False  # every record that decoded is committed
        if len(together) > 1 and not self._one_event_per_transaction:
            try:
                outcomes = self._transaction(together)
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
                for (message, _), outcome in zip(together, outcomes, strict=True):
                    report.add(message.topic, outcome)
        # The batch's outcomes count whatever happens below to the records around them.
        for partition, pairs in decoded.items():
            report.partitions[partition] = self._finish(
                partition, pairs, applied, attempt_of, report
            )
        return report

    def _finish(
        self,
        partition: TopicPartition,
        pairs: list[tuple[Message, Any]],
        applied: bool,
        attempt_of: AttemptOf,
        report: BatchReport,
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
            report.add(message.topic, result)
        return PartitionProgress(pairs[-1][0].offset + 1)

    def _decode(self, message: Message) -> Any:
        """The event of `message` decoded by its topic's schema, or `_Rejected`."""
        route = self._routes.get(message.topic)
        if route is None:  # not subscribed by this worker: a bug, kept for a look
            return _Rejected(f"no handler for topic {message.topic}")
        try:
            return decode(route.topic, message)
        except PermanentError as exc:
            return _Rejected(str(exc))

    def _apply_alone(self, message: Message, event: Any, attempt: int) -> Outcome | _Again:
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

    def _transaction(self, decoded: list[tuple[Message, Any]]) -> list[Outcome]:
        """Claim the events in the inbox and apply the new ones, all in one transaction."""
        contexts = [EventContext(event_id_of(message), message) for message, _ in decoded]
        group = self.group
        durations: list[tuple[str, float]] = []
        done: list[tuple[Message, Summary | None]] = []
        folded: list[tuple[Message, Summary | None]] = []  # applied by batch handlers
        spans: list[tuple[list[Message], int, int]] = []  # of batch handlers' events
        started_at = time.perf_counter()
        with self._database.unit_of_work(self._after_commit) as uow:
            # dict.fromkeys: the same event twice in one batch is claimed once.
            wanted = dict.fromkeys((c.event_id, c.message.topic) for c in contexts)
            unclaimed = claim_events(uow.session, self._inbox, group, list(wanted))
            outcomes = []
            batched: dict[BatchHandler, list[tuple[Message, Any]]] = {}
            for (message, event), context in zip(decoded, contexts, strict=True):
                if context.event_id not in unclaimed:
                    outcomes.append(Outcome.DUPLICATE)
                    continue
                unclaimed.discard(context.event_id)
                if failpoints.armed():
                    failpoint("handle", message.value.decode("utf-8", errors="replace"))
                outcomes.append(Outcome.APPLIED)
                route = self._routes[message.topic]
                if route.batch is not None:
                    batched.setdefault(route.batch, []).append((message, event))
                    continue
                assert route.handler is not None  # a route has one or the other
                with self._event_scope(message, context):
                    started = time.perf_counter()
                    done.append((message, route.handler(event, uow)))
                    durations.append((message.topic, time.perf_counter() - started))
                    log.debug("handled %s", _where(message))
            for batch_handler, pairs in batched.items():
                messages = [message for message, _ in pairs]
                with message_log_context(messages[0]):
                    start_ns, started = time.time_ns(), time.perf_counter()
                    summaries = batch_handler([event for _, event in pairs], uow)
                    # A batch's time is shared among its events in the histogram.
                    each = (time.perf_counter() - started) / len(pairs)
                if len(summaries) != len(pairs):
                    raise RuntimeError(
                        f"a batch handler answered {len(summaries)} summaries "
                        f"for {len(pairs)} events"
                    )
                spans.append((messages, start_ns, time.time_ns()))
                folded.extend(zip(messages, summaries, strict=True))
                durations.extend((message.topic, each) for message in messages)
            uow.commit()
        # Committed (a rolled-back batch raised above and says nothing here).
        self._log_flow(done, folded, time.perf_counter() - started_at)
        for messages, start_ns, end_ns in spans:
            record_spans(
                (
                    (
                        f"{message.topic} process",
                        message.header("traceparent"),
                        self._span_attributes(message, event_id_of(message))
                        | {"messaging.batch.message_count": len(messages)},
                    )
                    for message in messages
                ),
                SpanKind.CONSUMER,
                start_ns,
                end_ns,
            )
        failpoint("after-db-commit")
        # Only once committed: a batch rolled back and applied again record by record
        # must not count its handlers twice.
        handler_duration = metrics().handler_duration
        by_topic: dict[str, list[float]] = {}
        for topic, duration in durations:
            by_topic.setdefault(topic, []).append(duration)
        for topic, seconds in by_topic.items():
            histogram = handler_duration.labels(topic)
            for duration in seconds:
                histogram.observe(duration)
        return outcomes

    def _log_flow(
        self,
        done: list[tuple[Message, Summary | None]],
        folded: list[tuple[Message, Summary | None]],
        took: float,
    ) -> None:
        """One line per applied event: `profile-insert <key> → <summary> in 4.1 ms` (the
        transaction's time, claim to commit; shared by the events of a batch, which the
        line then says). Events a batch handler applied at once are told together, one
        line per topic and outcome (`post-created ×212 → counted in 14.2 ms (batch of
        500)`), or as above when alone in theirs: thousands of lines a second would tell
        an operator less. One level check per batch; lines are formatted only if shown."""
        level = flow_level()
        if not (done or folded) or not flow_log.isEnabledFor(level):
            return
        ms = took * 1000
        total = len(done) + len(folded)
        shared = f" (batch of {total})" if total > 1 else ""
        groups: dict[tuple[str, str], list[Message]] = {}
        for message, summary in folded:
            groups.setdefault((message.topic, str(summary or "applied")), []).append(message)
        lines: list[tuple[Message, object]] = [*done]
        lines += [(batch[0], said) for (_, said), batch in groups.items() if len(batch) == 1]
        for message, told in lines:
            key = message.key.decode("utf-8", errors="replace") if message.key else "-"
            flow_log.log(
                level,
                "%s %s → %s in %.1f ms%s",
                message.topic,
                key,
                told or "applied",
                ms,
                shared,
            )
        for (topic, said), messages in groups.items():
            if len(messages) > 1:
                flow_log.log(
                    level, "%s ×%d → %s in %.1f ms%s", topic, len(messages), said, ms, shared
                )

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
                attributes=self._span_attributes(message, context.event_id),
            ),
        ):
            yield

    def _span_attributes(self, message: Message, event_id: str) -> dict[str, Any]:
        """What a span of the processing of `message` says (OTel messaging conventions)."""
        return {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
            "messaging.consumer.group.name": self.group,
            "messaging.message.id": event_id,
            "messaging.destination.partition.id": str(message.partition),
            "messaging.kafka.offset": message.offset,
        }

    def _dead_letter(self, message: Message, error: str, attempts: int) -> Outcome | _Again:
        """Copy `message` to its own topic's DLT with why and where, and wait for the broker's
        ack; a send that fails means the record must come again (a record that cannot
        even be parked must not stop the loop, nor be acknowledged)."""
        headers = dead_letter_headers(message, error, attempts)
        try:
            self._dead_letters.send(
                self._dead_letter_topic(message),
                value=message.value,
                key=message.key,
                headers=headers,
            ).get(timeout=30)
        except Exception as exc:
            log.warning("dead-letter send for %s failed, will retry: %s", _where(message), exc)
            return _Again(f"dead-letter send failed: {exc}")
        log.error("dead-lettered %s: %s", _where(message), error_line(error))
        return Outcome.DEAD_LETTERED

    def _dead_letter_topic(self, message: Message) -> str:
        """`<topic>.DLT` of the record's own topic."""
        route = self._routes.get(message.topic)
        return route.topic.dead_letter if route is not None else f"{message.topic}.DLT"


def message_log_context(message: Message) -> contextlib.AbstractContextManager[None]:
    """Tag log lines with the record's `ce_id`, key (the member uuid) and trace id."""
    return log_context(
        ce_id=event_id_of(message),
        member_uuid=message.key.decode("utf-8", errors="replace") if message.key else None,
        trace_id=trace_id_of(message.header("traceparent")),
    )


def _span_of(messages: Sequence[Message]) -> str:
    """`profile-insert[0]@5-9 [3]@2 profile-delete[1]@4` : which records a batch held,
    per topic (in order of first appearance), for a log line."""
    ranges: dict[str, dict[int, list[int]]] = {}
    for message in messages:
        ranges.setdefault(message.topic, {}).setdefault(message.partition, []).append(
            message.offset
        )
    return (
        " ".join(
            topic
            + " ".join(
                f"[{p}]@{min(o)}" + (f"-{max(o)}" if len(o) > 1 else "")
                for p, o in sorted(partitions.items())
            )
            for topic, partitions in ranges.items()
        )
        or "nothing"
    )


def _where(message: Message) -> str:
    return f"{message.topic}[{message.partition}]@{message.offset}"
