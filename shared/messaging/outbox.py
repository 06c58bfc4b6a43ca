"""The transactional outbox: an event is a row written in the same transaction as the
state it describes, and a relay later copies committed rows to Kafka.

Guarantees:
- An event exists if and only if its transaction committed: no event for a rolled-back
  signup, no committed signup without its event.
- A row is marked published only after the broker acknowledged it (acks=all, idempotent
  producer). A crash between the acknowledgement and the mark re-sends the row with the
  same `ce_id`; consumers drop the copy in their inbox. Delivery is at-least-once.
- Per key, rows go out in id order, with any number of relays: a row is sent only when
  no earlier row with its key is unpublished (held by another relay, waiting, or failed),
  so a key has at most one row in flight and a later row is sent only after the earlier
  one was acknowledged and marked. A copy re-sent after a crash may follow a later
  row of its key; it carries the earlier `ce_id`, which the inbox drops.
- On PostgreSQL, several relays share one table: each claims rows with
  `FOR UPDATE SKIP LOCKED` and holds the lock until the rows are marked, so no two relays
  send the same row. SQLite has no row locks; there a second relay may re-send a row,
  which the inbox absorbs.
- The relay outlives anything the broker does. A producer in a state it cannot leave (a
  fatal error, a producer id the broker no longer knows after it restarted empty, sends
  neither acknowledged nor failed within `recreate_after`, or sends failing for longer
  than `recreate_after`) is closed and made again, with
  backoff. A failure episode logs one line when it starts and one when it ends, never a
  line per row per pass; a relay with rows waiting and nothing published for longer
  than `stall_after` says so through `stalled()`, which the readiness probes answer 503 on.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from kafka.errors import (
    IllegalStateError,
    InvalidProducerEpochError,
    InvalidProducerIdMappingError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    ProducerFencedError,
    UnknownProducerIdError,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection, String, Text, exists, func, select, update
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from shared.messaging.failpoints import failpoint
from shared.messaging.kafka import Headers, KafkaError, Producer
from shared.messaging.pipeline import E, Topic
from shared.storage.db import BigIntegerPK, Database, UnitOfWork, UTCDateTime, utcnow
from shared.telemetry.logs import log_context
from shared.telemetry.metrics import metrics
from shared.telemetry.tracecontext import trace_id_of

log = logging.getLogger(__name__)


class OutboxRecord:
    """Columns of a service's `outbox` table; mix into the service's declarative base."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    topic: Mapped[str] = mapped_column(String(249))
    key: Mapped[str] = mapped_column(String(255), index=True)
    payload: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(64))
    traceparent: Mapped[str | None] = mapped_column(String(55))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)


def cloudevent_headers(row: Any) -> Headers:
    """CloudEvents 1.0 Kafka binding, binary mode: metadata in headers, data in the value.
    `row` is an outbox row: a mapped object or a plain result row with its columns."""
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", row.event_id.encode()),
        ("ce_source", row.source.encode()),
        ("ce_type", row.topic.encode()),
        ("ce_time", rfc3339(row.created_at).encode()),
        ("content-type", b"application/json"),
    ]
    if row.traceparent:
        headers.append(("traceparent", row.traceparent.encode()))
    return headers


def rfc3339(moment: dt.datetime) -> str:
    """`2026-11-21T22:15:03.123456Z`."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def encode_event(payload: Mapping[str, Any]) -> str:
    """The event value: compact UTF-8 JSON, exactly the contract's fields."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def add_event(
    uow: UnitOfWork,
    model: type[OutboxRecord],
    topic: Topic[E],
    event: E,
    *,
    key: str,
    source: str,
    traceparent: str | None = None,
) -> str:
    """Stage `event` for `topic` in the caller's transaction; it is sent once that
    transaction commits. Returns its `ce_id`."""
    event_id = str(uuid.uuid4())
    uow.insert(
        model,
        {
            "event_id": event_id,
            "topic": topic.name,
            "key": key,
            "payload": encode_event(topic.dump(event)),
            "source": source,
            "traceparent": traceparent,
            "created_at": utcnow(),
            "published_at": None,
        },
    )
    return event_id


def unpublished_by_topic(
    connection: Connection, model: type[OutboxRecord]
) -> dict[str, tuple[int, dt.datetime | None]]:
    """Per topic, how many rows of `model` wait to be published and when the oldest was
    written (UTC): the outbox backlog, as the metrics and `signup-pipeline status` show it."""
    query = (
        select(model.topic, func.count(), func.min(model.created_at))
        .where(model.published_at.is_(None))
        .group_by(model.topic)
    )
    rows: dict[str, tuple[int, dt.datetime | None]] = {}
    for topic, count, oldest in connection.execute(query):
        if oldest is not None and oldest.tzinfo is None:  # SQLite through plain Core
            oldest = oldest.replace(tzinfo=dt.UTC)
        rows[topic] = (int(count), oldest)
    return rows


class OutboxBacklogCollector:
    """Collector: unpublished outbox rows and the age of the oldest, read at scrape time."""

    def __init__(self, database: Database, model: Any, topics: Iterable[str]) -> None:
        self._database = database
        self._model = model
        self._topics = list(topics)

    def collect(self) -> Iterator[Metric]:
        backlog = GaugeMetricFamily(
            "signup_outbox_backlog", "Outbox rows not yet published, by topic.", labels=["topic"]
        )
        age = GaugeMetricFamily(
            "signup_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none), by topic.",
            labels=["topic"],
        )
        try:
            with self._database.engine.connect() as connection:
                rows = unpublished_by_topic(connection, self._model)
        except Exception as exc:  # a scrape must answer even with the database away
            log.warning("outbox backlog unreadable: %s", exc)
            return
        now = utcnow()
        for topic in sorted(set(self._topics) | set(rows)):
            count, oldest = rows.get(topic, (0, None))
            backlog.add_metric([topic], count)
            age.add_metric([topic], (now - oldest).total_seconds() if oldest else 0.0)
        yield backlog
        yield age


# Errors after which an idempotent producer never sends again: it keeps a producer id
# and epoch the broker rejects (or has forgotten, when the broker restarted empty).
FATAL_PRODUCER_ERRORS: tuple[type[Exception], ...] = (
    UnknownProducerIdError,
    OutOfOrderSequenceNumberError,
    InvalidProducerEpochError,
    InvalidProducerIdMappingError,
    ProducerFencedError,
    IllegalStateError,
)


def is_fatal_producer_error(exc: BaseException) -> bool:
    """Whether `exc` leaves the producer that raised it unable to send again."""
    if isinstance(exc, FATAL_PRODUCER_ERRORS):
        return True
    # kafka-python reports a failed InitProducerId as a bare KafkaError, and then fails
    # every send with it for the producer's lifetime.
    return isinstance(exc, KafkaError) and "ProducerId" in str(exc)


# Between passes while a failure episode lasts (doubling from 0.1 s).
MAX_RETRY_DELAY = 2.0


class RelayStall:
    """Why a relay is not keeping up: rows wait and nothing was published for `seconds`."""

    def __init__(self, seconds: float, failed_sends: int, last_error: str | None) -> None:
        self.seconds = seconds
        self.failed_sends = failed_sends
        self.last_error = last_error

    def __str__(self) -> str:
        reason = f": {self.last_error}" if self.last_error else ""
        return (
            f"The outbox relay has published nothing for {self.seconds:.0f} s while rows "
            f"wait ({self.failed_sends} failed sends{reason})."
        )


class OutboxRelay:
    """Copies committed outbox rows to Kafka, in id order, and marks them published.

    Per key the order holds across relays: a pass takes only the oldest unpublished row
    of each key (see `publish_pending`), and after a pass that sent rows the relay looks
    again at once, so a key's next row follows without waiting for `poll_interval`.

    `wake()` after a commit sends at once; without it the relay still looks every
    `poll_interval` seconds, which is how rows left behind by a crash get sent.

    The producer is made again (the old one closed without waiting) after a fatal
    producer error, or when a row's sends have kept failing for `recreate_after` seconds
    on the same producer; successive recreations in one episode wait 0, 1, 2, 4 ... 30 s.
    While failing, a pass is retried on its own short backoff, not on every `wake()`.
    `stalled()` tells the readiness probes when rows have waited with nothing published
    for `stall_after` seconds.
    """

    def __init__(
        self,
        database: Database,
        model: type[OutboxRecord],
        connect: Callable[[], Producer],
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        send_timeout: float = 35.0,
        stall_after: float = 30.0,
        recreate_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._model = model
        # Connecting happens on the relay's own thread and is retried there, so a process
        # starts, and its outbox keeps filling, while the broker is away.
        self._connect = connect
        self._producer: Producer | None = None
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._send_timeout = send_timeout
        self._stall_after = stall_after
        self._recreate_after = recreate_after
        self._clock = clock
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._row_locks = database.engine.dialect.name == "postgresql"
        # Progress, for recovery and readiness: when the relay last published a row or
        # found nothing to publish; since when a pass has been sending; the episode of
        # failures under way (since when, how many failed sends, the last error).
        self._progress_at = clock()
        self._busy_since: float | None = None
        self._failing_since: float | None = None
        self._failed_sends = 0
        self._last_error: str | None = None
        self._recreations = 0
        self._episode_recreations = 0
        self._reconnect_at = 0.0
        self._producer_made_at = 0.0
        self._retry_delay = 0.0

    def wake(self) -> None:
        """Ask the relay to look for new rows now."""
        self._wakeup.set()

    def stalled(self) -> RelayStall | None:
        """Rows wait and nothing was published for longer than `stall_after`: why; else
        None. Read by the readiness probes from other threads."""
        if self._failing_since is None and self._busy_since is None:
            return None
        seconds = self._clock() - self._progress_at
        if seconds <= self._stall_after:
            return None
        return RelayStall(seconds, self._failed_sends, self._last_error)

    def stalled_for(self) -> float | None:
        """Seconds without a publish while rows wait, once past `stall_after`; else None."""
        stall = self.stalled()
        return None if stall is None else stall.seconds

    @property
    def recreations(self) -> int:
        """How many times the producer was made again after failures."""
        return self._recreations

    def publish_pending(self) -> int:
        """Send one batch of unpublished rows; return how many were acknowledged.

        A batch holds, for each key, only its oldest unpublished row: a row whose key
        has an earlier unpublished row waits, whether that row is locked by another
        relay's pass (which may still be sending it), failed in an earlier pass, or was
        not read yet. So one key never has two rows in flight: the producer cannot
        acknowledge a key's second row while its first failed (two batches of one
        partition can fail and succeed independently, e.g. a batch the broker refuses
        as too large), and the second becomes eligible only once the first's mark is
        committed, which follows its acknowledgement. Carrying a key's later rows in
        the same batch would need them sent one after another anyway, for the reason
        above, so it would save only a query per row of a key; a key seldom has
        several rows waiting (a signup writes one event).
        """
        model = self._model
        earlier = aliased(model, name="earlier")
        # Plain rows, not mapped objects: the relay only reads them, and building
        # objects for a batch costs more than sending it.
        query = (
            select(
                model.id,
                model.event_id,
                model.topic,
                model.key,
                model.payload,
                model.source,
                model.traceparent,
                model.created_at,
            )
            .where(model.published_at.is_(None))
            .where(
                ~exists().where(
                    earlier.key == model.key,
                    earlier.id < model.id,
                    earlier.published_at.is_(None),
                )
            )
            .order_by(model.id)
            .limit(self._batch_size)
        )
        with self._database.sessions() as session:
            if self._row_locks:
                with session.begin():
                    rows = session.execute(query.with_for_update(skip_locked=True)).all()
                    acked = self._send(rows)
                    self._mark_published(session, acked)
            else:
                with session.begin():
                    rows = session.execute(query).all()
                acked = self._send(rows)
                with session.begin():
                    self._mark_published(session, acked)
        published = metrics().events_published
        for topic, count in collections.Counter(row.topic for row in acked).items():
            published.labels(topic).inc(count)
        if acked or not rows:
            self._progress_at = self._clock()
        if rows and len(acked) == len(rows):
            self._recovered()
        elif not rows and self._failing_since is not None:
            self._recovered()  # what failed was sent by another relay, or cleaned up
        return len(acked)

    def _connected_producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._connect()
            self._producer_made_at = self._clock()
        return self._producer

    def _send(self, rows: Any) -> list[Any]:
        if not rows:
            return []
        self._busy_since = self._clock()
        try:
            return self._send_rows(rows)
        finally:
            self._busy_since = None

    def _send_rows(self, rows: Any) -> list[Any]:
        if self._producer is None and self._clock() < self._reconnect_at:
            return []  # backing off before making the producer again; the rows wait
        try:
            producer = self._connected_producer()
        except Exception as exc:
            self._failed(len(rows), exc, fatal=False)
            return []
        failpoint("relay-before-send")
        pending: list[tuple[Any, Any]] = []
        failures: list[tuple[Any, BaseException]] = []
        for index, row in enumerate(rows):
            try:
                delivery = producer.send(
                    row.topic,
                    value=row.payload.encode("utf-8"),
                    key=row.key.encode("utf-8"),
                    headers=cloudevent_headers(row),
                )
            except Exception as exc:  # no metadata in max_block_ms, a producer in error
                failures.extend((later, exc) for later in rows[index:])
                break
            pending.append((row, delivery))
        # Waited for at most `recreate_after`: a producer that has neither delivered nor
        # failed a send by then is in a state it does not report (kafka-python takes a
        # producer id a rebuilt broker no longer knows for a retention gap and retries
        # on its own until delivery_timeout_ms), so it is made again at once below.
        waited = min(self._send_timeout, self._recreate_after)
        try:
            producer.flush(timeout=waited)
        except Exception as exc:  # what was not acknowledged fails below
            log.debug("relay producer flush failed: %s", exc)
        acked = []
        unanswered = False
        for row, delivery in pending:
            if not getattr(delivery, "is_done", True):
                unanswered = True
                failures.append((row, KafkaTimeoutError(f"not acknowledged within {waited:.0f} s")))
                continue
            try:
                delivery.get(timeout=0)
            except Exception as exc:
                failures.append((row, exc))
                continue
            acked.append(row)
        if failures:
            row, first = failures[0]
            with log_context(
                ce_id=row.event_id, member_uuid=row.key, trace_id=trace_id_of(row.traceparent)
            ):
                self._failed(
                    len(failures),
                    first,
                    fatal=unanswered or any(is_fatal_producer_error(e) for _, e in failures),
                )
        return acked

    def _failed(self, count: int, exc: BaseException, *, fatal: bool) -> None:
        """`count` sends failed with (first) `exc`: one line when an episode starts, and
        the producer made again when it cannot recover on its own."""
        now = self._clock()
        self._failed_sends += count
        metrics().outbox_send_failures.inc(count)
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._failing_since is None:
            # The episode began when the pass that failed began sending.
            self._failing_since = self._busy_since if self._busy_since is not None else now
            log.warning(
                "outbox relay cannot publish (%s); retrying quietly until it can",
                self._last_error,
            )
        # Judged from the later of the episode's start and the current producer's birth:
        # a new producer gets the whole bound before it is made again.
        failing_for = now - max(self._failing_since, self._producer_made_at)
        if fatal or failing_for > self._recreate_after:
            self._recreate(self._last_error)

    def _recreate(self, reason: str) -> None:
        """Close the producer without waiting; the next pass makes a new one, after a
        backoff that grows with each recreation in this episode (0, 1, 2, 4 ... 30 s)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:
                log.debug("old relay producer did not close cleanly: %s", exc)
        attempt = self._episode_recreations
        delay = 0.0 if attempt == 0 else min(2.0 ** (attempt - 1), 30.0)
        self._reconnect_at = self._clock() + delay
        self._recreations += 1
        metrics().outbox_producer_recreations.inc()
        self._episode_recreations += 1
        log.debug("relay producer recreated (%s); next connect in %.1f s", reason, delay)

    def _recovered(self) -> None:
        """Everything the last pass read went out: end the failure episode, if any."""
        if self._failing_since is not None:
            log.info(
                "outbox relay publishing again after %.1f s and %d failed sends "
                "(producer made again %d times; last error: %s)",
                self._clock() - self._failing_since,
                self._failed_sends,
                self._episode_recreations,
                self._last_error,
            )
        self._failing_since = None
        self._failed_sends = 0
        self._last_error = None
        self._episode_recreations = 0
        self._reconnect_at = 0.0
        self._retry_delay = 0.0

    def _mark_published(self, session: Session, rows: list[Any]) -> None:
        if rows:
            table = self._model.__table__  # type: ignore[attr-defined]
            session.execute(
                update(table)
                .where(table.c.id.in_([row.id for row in rows]))
                .values(published_at=utcnow())
            )

    def run(self) -> None:
        """Relay until `stop()`; errors are logged once per episode and retried with backoff."""
        while not self._stopping.is_set():
            try:
                sent = self.publish_pending()
            except Exception as exc:  # the relay must outlive any one failure
                if self._failing_since is None:
                    log.exception("outbox relay failed; retrying quietly until it can")
                    self._failing_since = self._clock()
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._stopping.wait(self._next_retry_delay())
                continue
            if self._failing_since is not None:
                # Failing: retry on a growing delay, not on every wake(), so a burst of
                # commits cannot turn a dead broker into a busy loop.
                self._stopping.wait(self._next_retry_delay())
                continue
            self._retry_delay = 0.0
            if sent:
                # More may wait: a full batch left rows, and each row sent may have
                # made its key's next row eligible (one row per key per pass).
                continue
            self._wakeup.wait(self._poll_interval)
            # Cleared before the next pass reads, so a wake() during that pass is kept.
            self._wakeup.clear()
        self._drain()

    def _next_retry_delay(self) -> float:
        self._retry_delay = min(max(self._retry_delay * 2, 0.1), MAX_RETRY_DELAY)
        if self._producer is None and self._reconnect_at:
            return max(min(self._reconnect_at - self._clock(), 30.0), self._retry_delay)
        return self._retry_delay

    def _drain(self) -> None:
        if self._producer is None:
            return  # never connected: nothing in flight, and no time to wait for a broker
        try:
            self.publish_pending()
        except Exception:
            log.exception("outbox relay could not flush on stop; rows stay for the next start")

    def start(self) -> OutboxRelay:
        """Run the relay on a background thread."""
        self._thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after a last pass over pending rows, within about `timeout` seconds.

        With the broker away a pass could wait for the delivery timeout; past the budget
        the producer is closed without waiting, which fails the sends in flight, so their
        rows stay unpublished and go out on the next start."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        producer = self._producer
        if producer is not None:
            alive = self._thread is not None and self._thread.is_alive()
            try:
                producer.close(timeout=0 if alive else timeout)
            except Exception as exc:
                log.warning("relay producer did not close cleanly: %s", exc)
        if self._thread is not None:
            self._thread.join(2)
