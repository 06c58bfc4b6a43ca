"""`signup-pipeline reconcile batch`: recompute every partner's counters from the events
still in the topics and compare them with the batch service's stored summaries.

The recomputation is independent of the batch service's code: it reads the contract's
topics (shared.messaging.pipeline) from the beginning with a client of no group (no
rebalance of the service's workers), up to the end offsets taken when it starts, and
applies the contract's rules itself:

- an event is known by its `ce_id`, or its position (topic:partition:offset) when it has
  none, and counted once (the inbox's rule); a record that fails its topic's schema is
  not counted (the worker dead-letters it);
- a partner has a summary iff a `partner-created` and no `partner-deleted` were read for
  it, whatever their order;
- a thing counts iff its creations minus its deletions >= 1: a post by its postId, a
  follower by the follower's uuid, a closed request by its requestId, a review by its
  reviewId with the star of its first `review-created`; so a deletion before its
  creation (an orphan) subtracts nothing, and a member may follow again.

What it cannot prove: events beyond the topics' retention (deleted by the broker) cannot
be recomputed, so on a pipeline older than its retention a partner whose early events
are gone shows a difference that is none; and while events keep arriving the summaries
move under it (the report says how many arrived meanwhile, and how many the batch
service had not consumed yet when the summaries were read).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError
from marshmallow import ValidationError
from sqlalchemy import Connection, text

from operations.formatting import plural
from operations.offsets import LogRange, OffsetReader
from operations.sources import read_database
from shared.messaging.kafka import Message, message_from_record, process_client_security
from shared.messaging.pipeline import (
    ACTIVITY_TOPICS,
    PARTNER_CREATED,
    PARTNER_DELETED,
    CoordinateClosed,
    FollowCreated,
    FollowDeleted,
    PartnerCreated,
    PartnerDeleted,
    PostCreated,
    PostDeleted,
    ReviewCreated,
    Topic,
)

FIELDS = ("post_count", "follower_count", "coordinate_count", "review_count", "star_sum")
SUMMARY = "summary"  # a Difference's field when a summary is there and should not be, or not
BATCH_GROUP = PARTNER_CREATED.consumer_group
TOPICS: tuple[Topic[Any], ...] = (PARTNER_CREATED, PARTNER_DELETED, *ACTIVITY_TOPICS)

_COUNTER_OF_KIND = {
    "post": "post_count",
    "follow": "follower_count",
    "coordinate": "coordinate_count",
    "review": "review_count",
}


@dataclass
class Counters:
    """A partner's counters, as partner_summaries holds them."""

    post_count: int = 0
    follower_count: int = 0
    coordinate_count: int = 0
    review_count: int = 0
    star_sum: int = 0


@dataclass
class Recomputed:
    """What the events say: each live partner's counters, and what was seen on the way."""

    counters: dict[str, Counters]  # partners created and not deleted
    deleted: set[str]
    events_read: int = 0
    duplicates: int = 0
    undecodable: int = 0
    orphan_deletions: int = 0  # things of live partners deleted more often than created
    waiting: set[str] = field(default_factory=set)  # activity, no partner-created (yet)
    # Each thing of a partner not deleted: its creations minus its deletions, which the
    # batch service keeps too (partner_activity.net). Counters forgive a creation applied
    # twice (a thing counts once); a net does not, so comparing nets shows an event
    # applied twice, or not at all, even where no counter moved.
    nets: dict[tuple[str, str, str], int] = field(default_factory=dict)


def _event_id(message: Message) -> str:
    """The inbox's identity of an event (written again here, not imported: see the
    module's text)."""
    return message.header("ce_id") or f"{message.topic}:{message.partition}:{message.offset}"


def _decode(topic: Topic[Any], message: Message) -> Any | None:
    try:
        document = json.loads(message.value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    try:
        return topic.load(document)
    except ValidationError:
        return None


def _item(event: Any) -> tuple[str, str, int, int | None]:
    """(kind, item id, +1 or -1, star) of an activity event."""
    if isinstance(event, PostCreated):
        return "post", event.post_id, 1, None
    if isinstance(event, PostDeleted):
        return "post", event.post_id, -1, None
    if isinstance(event, FollowCreated):
        return "follow", event.follower_id, 1, None
    if isinstance(event, FollowDeleted):
        return "follow", event.follower_id, -1, None
    if isinstance(event, CoordinateClosed):
        return "coordinate", event.request_id, 1, None
    if isinstance(event, ReviewCreated):
        return "review", event.review_id, 1, event.star
    raise TypeError(f"not an activity event: {type(event).__name__}")


def recompute(
    messages: Iterable[Message], topic_names: Mapping[str, str] | None = None
) -> Recomputed:
    """The counters `messages` lead to (see the module's text). Each partition's records
    must come in offset order (a review's first star is its first in that order);
    `topic_names` maps a contract topic's name to the name it has on this broker."""
    names = dict(topic_names or {})
    by_name = {names.get(topic.name, topic.name): topic for topic in TOPICS}
    seen: set[str] = set()
    created: set[str] = set()
    deleted: set[str] = set()
    nets: dict[tuple[str, str, str], int] = {}
    stars: dict[tuple[str, str, str], int] = {}
    result = Recomputed(counters={}, deleted=deleted)
    for message in messages:
        result.events_read += 1
        topic = by_name.get(message.topic)
        if topic is None:
            raise ValueError(f"not a topic of the batch service: {message.topic}")
        event = _decode(topic, message)
        if event is None:
            result.undecodable += 1  # dead-lettered, its ce_id not taken (as the worker)
            continue
        event_id = _event_id(message)
        if event_id in seen:
            result.duplicates += 1
            continue
        seen.add(event_id)
        if isinstance(event, PartnerCreated):
            created.add(event.partner_id)
        elif isinstance(event, PartnerDeleted):
            deleted.add(event.partner_id)
        else:
            kind, item_id, sign, star = _item(event)
            key = (event.partner_id, kind, item_id)
            nets[key] = nets.get(key, 0) + sign
            if star is not None:
                stars.setdefault(key, star)
    live = created - deleted
    result.counters = {partner: Counters() for partner in live}
    result.nets = {key: net for key, net in nets.items() if key[0] not in deleted}
    for (partner, kind, _), net in nets.items():
        if partner not in live:
            if partner not in deleted:
                result.waiting.add(partner)
            continue
        if net < 0:
            result.orphan_deletions += 1
        if net >= 1:
            counters = result.counters[partner]
            name = _COUNTER_OF_KIND[kind]
            setattr(counters, name, getattr(counters, name) + 1)
    for (partner, _, _), star in stars.items():
        if partner in live:
            result.counters[partner].star_sum += star
    return result


@dataclass(frozen=True)
class Difference:
    """Where a stored summary and the events disagree: a counter (`field` one of FIELDS),
    or the summary itself (`field` "summary", values "present" / "absent")."""

    partner_id: str
    field: str
    expected: int | str
    stored: int | str
    why: str = ""


def compare(recomputed: Recomputed, stored: Mapping[str, Counters]) -> list[Difference]:
    """Every difference, by partner id then field."""
    differences = []
    for partner in sorted(set(recomputed.counters) | set(stored)):
        want, have = recomputed.counters.get(partner), stored.get(partner)
        if want is None:
            why = (
                "partner deleted"
                if partner in recomputed.deleted
                else "no partner-created for it in the topics"
            )
            differences.append(Difference(partner, SUMMARY, "absent", "present", why))
        elif have is None:
            why = "partner-created read, no partner-deleted"
            differences.append(Difference(partner, SUMMARY, "present", "absent", why))
        else:
            for name in FIELDS:
                if getattr(want, name) != getattr(have, name):
                    differences.append(
                        Difference(partner, name, getattr(want, name), getattr(have, name))
                    )
    return differences


def compare_nets(
    expected: Mapping[tuple[str, str, str], int], stored: Mapping[tuple[str, str, str], int]
) -> list[Difference]:
    """Every thing whose stored net differs from the events' (a missing row is 0: a
    thing created and deleted in one batch leaves none), by partner id, kind and id."""
    differences = []
    for key in sorted(set(expected) | set(stored)):
        want, have = expected.get(key, 0), stored.get(key, 0)
        if want != have:
            partner, kind, item_id = key
            why = "creations minus deletions of this thing"
            differences.append(Difference(partner, f"{kind} {item_id} net", want, have, why))
    return differences


@dataclass
class Report:
    """What `reconcile_batch` found."""

    partners_checked: int
    events_read: int
    duplicates: int
    undecodable: int
    orphan_deletions: int
    deleted_partners: int
    waiting_partners: int
    lag: int  # records the batch service had not consumed when the summaries were read
    arrived: int  # records that arrived in the topics while the check ran
    dead_letters: int  # records in the topics' .DLT (not applied, unless replayed since)
    missing_topics: list[str]
    differences: list[Difference]
    expected: dict[str, Counters] = field(repr=False, default_factory=dict)
    stored: dict[str, Counters] = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        del document["expected"], document["stored"]
        document["ok"] = self.ok
        return document


def _read_records(
    servers: Sequence[str], ranges: Mapping[str, Sequence[LogRange]], deadline: float
) -> Iterator[Message]:
    """Every record within `ranges`, each partition in offset order, streamed."""
    ends = {
        TopicPartition(topic, r.partition): r
        for topic, partitions in ranges.items()
        for r in partitions
        if r.records
    }
    if not ends:
        return
    budget = max(int((deadline - time.monotonic()) * 1000), 1000)
    consumer = KafkaConsumer(
        bootstrap_servers=list(servers),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        bootstrap_timeout_ms=budget,
        request_timeout_ms=min(budget, 30_000),
        fetch_max_wait_ms=10,  # see operations.offsets: Tansu holds a fetch its whole wait
        **process_client_security(),
    )
    try:
        consumer.assign(list(ends))
        for tp, r in ends.items():
            consumer.seek(tp, r.beginning)
        left = set(ends)
        while left:
            if time.monotonic() > deadline:
                raise KafkaTimeoutError("reading the topics took longer than the timeout")
            for tp, records in consumer.poll(timeout_ms=200).items():
                end = ends[tp].end
                for record in records:
                    if record.offset < end:
                        yield message_from_record(record)
            for tp in list(left):
                if consumer.position(tp) >= ends[tp].end:
                    left.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close(autocommit=False, timeout_ms=1000)


def read_summaries(database_url: str, timeout: float = 10.0) -> dict[str, Counters]:
    """Every stored summary's counters, read only."""

    def read(connection: Connection) -> dict[str, Counters]:
        rows = connection.execute(
            text(f"SELECT partner_id, {', '.join(FIELDS)} FROM partner_summaries")
        )
        return {row[0]: Counters(*(int(v or 0) for v in row[1:])) for row in rows}

    return read_database(database_url, timeout, read)


def read_nets(database_url: str, timeout: float = 10.0) -> dict[tuple[str, str, str], int]:
    """Every stored thing's net (partner_activity), read only."""

    def read(connection: Connection) -> dict[tuple[str, str, str], int]:
        rows = connection.execute(
            text("SELECT partner_id, kind, item_id, net FROM partner_activity")
        )
        return {(row[0], row[1], row[2]): int(row[3]) for row in rows}

    return read_database(database_url, timeout, read)


def _lag(reader: OffsetReader, group: str, ranges: Mapping[str, Sequence[LogRange]]) -> int:
    lag = 0
    for topic, partitions in ranges.items():
        for partition in reader.lag(group, partitions, topic):
            lag += partition.lag
    return lag


def reconcile_batch(
    servers: Sequence[str],
    database_url: str,
    *,
    topic_names: Mapping[str, str] | None = None,
    group: str = BATCH_GROUP,
    wait: float = 0.0,
    timeout: float = 300.0,
) -> Report:
    """Recompute every partner's counters from the batch service's topics (`topic_names`
    maps a contract topic to its name on this broker, for tests) and compare them with
    the summaries in `database_url`. `wait`: up to that many seconds for `group` to have
    consumed every record read before the summaries are read. Raises KafkaError when the
    broker cannot be read (within `timeout` in all), and SQLAlchemy's errors (or
    FileNotFoundError for a missing SQLite file) when the database cannot."""
    names = dict(topic_names or {})
    actual = [names.get(topic.name, topic.name) for topic in TOPICS]
    deadline = time.monotonic() + timeout
    with OffsetReader(servers, timeout + wait) as reader:
        ranges = reader.log_ranges(actual)
        missing = [name for name in actual if name not in ranges]
        recomputed = recompute(_read_records(servers, ranges, deadline), names)
        waited_until = time.monotonic() + wait
        lag = _lag(reader, group, ranges)
        while lag and time.monotonic() < waited_until:
            time.sleep(0.1)
            lag = _lag(reader, group, ranges)
        stored = read_summaries(database_url)
        stored_nets = read_nets(database_url)
    # A new reader: one that fetched already answers its last fetch's high watermarks.
    with OffsetReader(servers, 30.0) as reader:
        after = reader.log_ranges(actual)
        dead = reader.log_ranges(f"{name}.DLT" for name in actual)
    before_ends = {(t, r.partition): r.end for t, rs in ranges.items() for r in rs}
    arrived = sum(
        max(r.end - before_ends.get((t, r.partition), r.beginning), 0)
        for t, rs in after.items()
        for r in rs
    )
    return Report(
        partners_checked=len(set(recomputed.counters) | set(stored)),
        events_read=recomputed.events_read,
        duplicates=recomputed.duplicates,
        undecodable=recomputed.undecodable,
        orphan_deletions=recomputed.orphan_deletions,
        deleted_partners=len(recomputed.deleted),
        waiting_partners=len(recomputed.waiting),
        lag=lag,
        arrived=arrived,
        dead_letters=sum(r.records for rs in dead.values() for r in rs),
        missing_topics=missing,
        differences=compare(recomputed, stored) + compare_nets(recomputed.nets, stored_nets),
        expected=recomputed.counters,
        stored=stored,
    )


def print_report(report: Report, out: TextIO = sys.stdout, limit: int = 20) -> None:
    """The report as text: what was read, then each difference (at most `limit`)."""
    write = out.write
    write(
        f"{plural(report.partners_checked, 'partner')} checked against "
        f"{plural(report.events_read, 'event')} read from the topics "
        f"({plural(report.duplicates, 'duplicate')} counted once, "
        f"{report.undecodable:,} not decodable and not counted)\n"
    )
    notes = []
    if report.deleted_partners:
        notes.append(f"{report.deleted_partners:,} deleted partners (no summary expected)")
    if report.waiting_partners:
        notes.append(
            f"{report.waiting_partners:,} partners with activity and no partner-created "
            "(waiting; no summary expected)"
        )
    if report.orphan_deletions:
        notes.append(f"{report.orphan_deletions:,} deletions of something never created")
    if report.dead_letters:
        notes.append(
            f"{report.dead_letters:,} records in the topics' dead-letter topics (not applied "
            "unless replayed: `signup-pipeline dlt list <topic>`)"
        )
    if report.missing_topics:
        notes.append(f"topics missing on the broker: {', '.join(report.missing_topics)}")
    if report.lag:
        notes.append(
            f"the batch service had not yet consumed {report.lag:,} of these events when "
            "the summaries were read: differences may be in flight (--wait SECONDS)"
        )
    if report.arrived:
        notes.append(
            f"{report.arrived:,} events arrived while checking: summaries may count them "
            "already (run again on a quiet pipeline)"
        )
    for note in notes:
        write(f"  note: {note}\n")
    if report.ok:
        write("no difference: every summary matches what the events in the topics say\n")
        return
    partners = len({d.partner_id for d in report.differences})
    write(
        f"{plural(len(report.differences), 'difference')} in {plural(partners, 'partner')}"
        + (" (events arrived meanwhile: see the notes)" if report.arrived else "")
        + ":\n"
    )
    for difference in report.differences[:limit]:
        why = f" ({difference.why})" if difference.why else ""
        write(
            f"  {difference.partner_id}  {difference.field:<16} events say "
            f"{difference.expected}, stored {difference.stored}{why}\n"
        )
    if len(report.differences) > limit:
        write(f"  ... and {len(report.differences) - limit:,} more (--limit N, or --json)\n")


__all__ = [
    "BATCH_GROUP",
    "FIELDS",
    "Counters",
    "Difference",
    "Recomputed",
    "Report",
    "compare",
    "print_report",
    "read_summaries",
    "recompute",
    "reconcile_batch",
]
