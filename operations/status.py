"""`signup-pipeline status`: the whole pipeline now, per stage: outbox backlog, consumer
lag, dead letters and last-minute throughput.

The services each read only their own database; this reads all three, and the broker,
found the way the services find them (the same variables and defaults, through
`Settings.from_env`). It only looks: plain SELECTs (read-only transactions on
PostgreSQL, no write lock on SQLite), no consumer group joined (see operations/offsets.py).
A part that cannot be read is reported unavailable, with the reason, and the rest is
still shown.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import Connection, func, select

from auth_service.models import Member
from auth_service.models import OutboxEvent as AuthOutbox
from batch_service.models import DeletedPartner, PartnerActivity, PartnerSummary, WaitingActivity
from member_service.models import OutboxEvent as MemberOutbox
from member_service.models import Partner, User
from operations.formatting import (
    format_duration,
    moment_text,
    partition_lag_text,
    plural,
    why_unavailable,
)
from operations.offsets import OffsetReader, PartitionLag
from operations.sources import (
    DEFAULT_TIMEOUT,
    WINDOW,
    Endpoints,
    T,
    Unavailable,
    attempt_read,
    in_parallel,
    read_database,
)
from shared.messaging.outbox import OutboxRecord, rfc3339, unpublished_by_topic
from shared.messaging.pipeline import TOPICS, PartnerCreated, ProfileInsert, Topic
from shared.storage.db import failure_reason, utcnow

# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One service's part of the flow, as its database shows it."""

    service: str
    created: tuple[Any, ...]  # tables whose new rows are this stage's throughput
    step: str  # what one such row means, for the screen
    verb: str
    outbox: type[OutboxRecord] | None
    created_by: type[Any] | None = None  # the event whose applying creates those rows
    counts_activity: bool = False  # the batch service: partners' activity not counted

    @property
    def producer(self) -> str:
        """The `producer` of the topics its outbox publishes to."""
        return f"{self.service}-service"


STAGES = (
    Stage("auth", (Member,), "signup accepted", "accepted", AuthOutbox),
    Stage("member", (User, Partner), "profile created", "created", MemberOutbox, ProfileInsert),
    Stage(
        "batch",
        (PartnerSummary,),
        "summary created",
        "created",
        None,
        PartnerCreated,
        counts_activity=True,
    ),
)


@dataclass(frozen=True)
class TopicBacklog:
    """One topic's rows in an outbox: how many wait, since when, and how many were
    published lately."""

    unpublished: int
    oldest_unpublished_at: dt.datetime | None
    published_recently: int


@dataclass(frozen=True)
class OutboxBacklog:
    """A service's outbox, per topic it publishes to."""

    topics: dict[str, TopicBacklog]

    @property
    def unpublished(self) -> int:
        """Rows waiting to be published, over every topic."""
        return sum(t.unpublished for t in self.topics.values())

    @property
    def oldest_unpublished_at(self) -> dt.datetime | None:
        """When the oldest waiting row, of any topic, was written."""
        oldest = [t.oldest_unpublished_at for t in self.topics.values()]
        return min((at for at in oldest if at is not None), default=None)

    @property
    def published_recently(self) -> int:
        """Rows published within the window, over every topic."""
        return sum(t.published_recently for t in self.topics.values())


@dataclass(frozen=True)
class ActivityCounts:
    """The partners' activity the batch service holds but does not count (yet, or ever):
    events waiting for their partner's `partner-created` (and for how many partners),
    orphan deletions (a deletion of something never counted: partner_activity rows with
    net < 0; its creation, when it comes, cancels it) and events dropped because their
    partner was deleted."""

    waiting_events: int
    waiting_partners: int
    orphan_deletions: int
    dropped_events: int


@dataclass(frozen=True)
class StageCounts:
    """What one service's database says: rows created lately, its outbox, and for the
    batch service the activity it does not count."""

    created_recently: int
    outbox: OutboxBacklog | None
    activity: ActivityCounts | None = None


@dataclass(frozen=True)
class GroupLag:
    """How far a consumer group is behind on one of the topics it reads."""

    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        """The sum over partitions of end offset minus committed offset."""
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class PipelineStatus:
    """One reading of the whole pipeline. `topics`: the pipeline's (tests pass private
    copies), each published by the outbox of the stage whose service is its producer."""

    at: dt.datetime
    window: dt.timedelta
    topics: tuple[Topic[Any], ...]
    sources: dict[str, str]
    stages: dict[str, StageCounts | Unavailable]
    lag: dict[str, GroupLag | Unavailable]  # by topic
    dead_letters: dict[str, int | Unavailable]  # by dead-letter topic
    took: float = 0.0  # seconds the reading took

    def unavailable(self) -> list[str]:
        """The sources that could not be read (a database, kafka, a missing topic), once
        each, in the order the screen shows them."""
        parts = [*self.stages.values(), *self.lag.values(), *self.dead_letters.values()]
        return list(dict.fromkeys(p.source for p in parts if isinstance(p, Unavailable)))


def incomplete_line(status: PipelineStatus) -> str | None:
    """The last line of a status that could not read everything (it then exits 1)."""
    missing = status.unavailable()
    if not missing:
        return None
    return f"incomplete: could not read {', '.join(missing)} (exit status 1)"


def _count_since(connection: Connection, table: Any, since: dt.datetime) -> int:
    query = select(func.count()).select_from(table).where(table.created_at >= since)
    return int(connection.scalar(query) or 0)


def _outbox_backlog(
    connection: Connection, outbox: Any, topics: Sequence[str], since: dt.datetime
) -> OutboxBacklog:
    pending = unpublished_by_topic(connection, outbox)
    query = (
        select(outbox.topic, func.count())
        .where(outbox.published_at >= since)
        .group_by(outbox.topic)
    )
    published = {str(topic): int(count) for topic, count in connection.execute(query)}
    return OutboxBacklog(
        {
            name: TopicBacklog(*pending.get(name, (0, None)), published.get(name, 0))
            for name in topics
        }
    )


def _activity_counts(connection: Connection) -> ActivityCounts:
    waiting_events, waiting_partners = connection.execute(
        select(func.coalesce(func.sum(WaitingActivity.events), 0), func.count())
    ).one()
    orphans = connection.scalar(
        select(func.count()).select_from(PartnerActivity).where(PartnerActivity.net < 0)
    )
    dropped = connection.scalar(select(func.coalesce(func.sum(DeletedPartner.dropped_events), 0)))
    return ActivityCounts(
        int(waiting_events), int(waiting_partners), int(orphans or 0), int(dropped or 0)
    )


def _stage_counts(
    stage: Stage, topics: Sequence[str], since: dt.datetime
) -> Callable[[Connection], StageCounts]:
    def read(connection: Connection) -> StageCounts:
        created = sum(_count_since(connection, table, since) for table in stage.created)
        outbox = _outbox_backlog(connection, stage.outbox, topics, since) if stage.outbox else None
        activity = _activity_counts(connection) if stage.counts_activity else None
        return StageCounts(created, outbox, activity)

    return read


def _published_by(stage: Stage, topics: Sequence[Topic[Any]]) -> list[str]:
    """The names of those of `topics` whose events `stage`'s outbox publishes."""
    return [topic.name for topic in topics if topic.producer == stage.producer]


def _read_kafka(
    servers: Sequence[str], topics: Sequence[Topic[Any]], timeout: float
) -> tuple[dict[str, GroupLag | Unavailable], dict[str, int | Unavailable]]:
    lag: dict[str, GroupLag | Unavailable] = {}
    dead: dict[str, int | Unavailable] = {}
    try:
        with OffsetReader(servers, timeout) as reader:
            names = [t.name for t in topics] + [t.dead_letter for t in topics]
            ranges = reader.log_ranges(names)
            for topic in topics:
                if topic.name in ranges:
                    partitions = reader.lag(topic.consumer_group, ranges[topic.name], topic.name)
                    lag[topic.name] = GroupLag(topic.consumer_group, topic.name, tuple(partitions))
                else:
                    lag[topic.name] = _missing_topic(topic.name)
                if topic.dead_letter in ranges:
                    dead[topic.dead_letter] = sum(r.records for r in ranges[topic.dead_letter])
                else:
                    dead[topic.dead_letter] = _missing_topic(topic.dead_letter)
    except Exception as exc:  # the broker as a whole: every Kafka figure is unknown
        down = Unavailable("kafka", failure_reason(exc) or type(exc).__name__)
        return {t.name: down for t in topics}, {t.dead_letter: down for t in topics}
    return lag, dead


def _missing_topic(name: str) -> Unavailable:
    return Unavailable(f"topic {name}", "the broker has no such topic (yet)")


def read_status(
    endpoints: Endpoints,
    *,
    topics: tuple[Topic[Any], ...] = TOPICS,
    window: dt.timedelta = WINDOW,
    timeout: float = DEFAULT_TIMEOUT,
) -> PipelineStatus:
    """Read the three databases and the broker, side by side, each within `timeout`."""
    started = time.perf_counter()
    now = utcnow()
    since = now - window
    reads: dict[str, Callable[[], Any]] = {
        stage.service: _bind_stage(endpoints, stage, _published_by(stage, topics), since, timeout)
        for stage in STAGES
    }
    reads["kafka"] = lambda: _read_kafka(endpoints.bootstrap_servers, topics, timeout)
    results = in_parallel(reads)
    lag, dead_letters = results.pop("kafka")
    return PipelineStatus(
        at=now,
        window=window,
        topics=topics,
        sources=endpoints.sources(),
        stages=results,
        lag=lag,
        dead_letters=dead_letters,
        took=time.perf_counter() - started,
    )


def _bind_stage(
    endpoints: Endpoints, stage: Stage, topics: Sequence[str], since: dt.datetime, timeout: float
) -> Callable[[], StageCounts | Unavailable]:
    url = endpoints.database_urls[stage.service]
    return lambda: attempt_read(
        f"{stage.service} database",
        lambda: read_database(url, timeout, _stage_counts(stage, topics, since)),
    )


def status_json(status: PipelineStatus) -> dict[str, Any]:
    """The machine-readable status: null where a figure could not be read, and why
    under `unavailable` (keyed by the source that failed)."""
    unavailable: dict[str, str] = {}

    def known(part: T | Unavailable) -> T | None:
        if isinstance(part, Unavailable):
            unavailable[part.source] = part.reason
            return None
        return part

    stages = {service: known(part) for service, part in status.stages.items()}

    def waiting(unpublished: int, oldest: dt.datetime | None) -> dict[str, Any]:
        return {
            "unpublished": unpublished,
            "oldest_unpublished_at": moment_text(oldest),
            "oldest_unpublished_age_seconds": (
                round((status.at - oldest).total_seconds(), 3) if oldest else None
            ),
        }

    outbox: dict[str, Any] = {}
    published: dict[str, int | None] = {}
    for stage in STAGES:
        if stage.outbox is None:
            continue
        counts = stages.get(stage.service)
        backlog = counts.outbox if counts else None
        names = _published_by(stage, status.topics)
        for name in names:
            published[name] = backlog.topics[name].published_recently if backlog else None
        outbox[stage.service] = (
            {
                **waiting(backlog.unpublished, backlog.oldest_unpublished_at),
                "topics": {
                    name: waiting(t.unpublished, t.oldest_unpublished_at)
                    for name, t in backlog.topics.items()
                },
            }
            if backlog
            else None
        )
    lag: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for topic in status.topics:
        value = known(status.lag[topic.name])
        lag[topic.name] = (
            {
                "group": value.group,
                "total": value.total,
                "partitions": [
                    {
                        "partition": p.partition,
                        "beginning_offset": p.beginning,
                        "end_offset": p.end,
                        "committed_offset": p.committed,
                        "lag": p.lag,
                    }
                    for p in value.partitions
                ],
            }
            if value
            else None
        )
        group = groups.setdefault(topic.consumer_group, {"topics": [], "total": 0})
        group["topics"].append(topic.name)
        group["total"] = (
            None if value is None or group["total"] is None else group["total"] + value.total
        )
    dead_letters = {topic: known(part) for topic, part in status.dead_letters.items()}

    def created(service: str) -> int | None:
        counts = stages.get(service)
        return counts.created_recently if counts else None

    activity: dict[str, Any] | None = None
    for stage in STAGES:
        counts = stages.get(stage.service)
        if stage.counts_activity:
            found = counts.activity if counts else None
            activity = (
                {
                    "waiting": {
                        "events": found.waiting_events,
                        "partners": found.waiting_partners,
                    },
                    "orphan_deletions": found.orphan_deletions,
                    "dropped_events": found.dropped_events,
                }
                if found
                else None
            )

    return {
        "at": rfc3339(status.at),
        "window_seconds": status.window.total_seconds(),
        "sources": status.sources,
        "outbox": outbox,
        "consumer_groups": groups,
        "lag": lag,
        "dead_letters": dead_letters,
        "throughput": {
            "signups_accepted": created("auth"),
            "events_published": {t.name: published.get(t.name) for t in status.topics},
            "profiles_created": created("member"),
            "summaries_created": created("batch"),
        },
        "partner_activity": activity,
        "unavailable": unavailable,
        "took_ms": round(status.took * 1000, 1),
    }


def render_status(status: PipelineStatus, width: int = 100) -> str:
    """The status screen: one line per stage, outbox topic and consumed topic, in the
    order a member's events go through them (each service's stage before the first
    topic it publishes, or right after the topic whose events create its rows)."""
    label_w, now_w = 38, 36
    window = f"{status.window.total_seconds():g} s"
    rows: list[tuple[str, str, str]] = []
    shown: set[Unavailable] = set()
    numbers = iter(range(1, 1000))
    stages_shown: set[str] = set()

    def stage_row(stage: Stage) -> None:
        stages_shown.add(stage.service)
        part = status.stages[stage.service]
        label = f"{next(numbers)} {stage.service}: {stage.step}"
        if isinstance(part, Unavailable):
            rows.append((label, why_unavailable(part, shown), ""))
        else:
            rows.append((label, "", f"{part.created_recently} {stage.verb}"))

    def outbox_row(stage: Stage, topic: Topic[Any]) -> None:
        part = status.stages[stage.service]
        label = f"{next(numbers)} {stage.service} outbox → {topic.name}"
        if isinstance(part, Unavailable):
            rows.append((label, why_unavailable(part, shown), ""))
            return
        if part.outbox is None:
            return
        backlog = part.outbox.topics[topic.name]
        now_text = f"{backlog.unpublished} unpublished"
        if backlog.oldest_unpublished_at is not None:
            age = (status.at - backlog.oldest_unpublished_at).total_seconds()
            now_text += f", oldest {format_duration(max(age, 0))}"
        rows.append((label, now_text, f"{backlog.published_recently} published"))

    def topic_rows(topic: Topic[Any]) -> None:
        group = status.lag[topic.name]
        label = f"{next(numbers)} {topic.name} → {topic.consumer_group}"
        if isinstance(group, Unavailable):
            rows.append((label, why_unavailable(group, shown), ""))
        else:
            room = width - label_w - len(f"lag {group.total}: ")
            rows.append(
                (label, f"lag {group.total}: {partition_lag_text(group.partitions, room)}", "")
            )
        dead = status.dead_letters[topic.dead_letter]
        text = (
            why_unavailable(dead, shown)
            if isinstance(dead, Unavailable)
            else plural(dead, "dead letter")
        )
        rows.append((f"  {topic.dead_letter}", text, ""))

    def activity_rows(stage: Stage) -> None:
        part = status.stages[stage.service]
        label = f"{next(numbers)} {stage.service}: partner activity not counted"
        if isinstance(part, Unavailable):
            rows.append((label, why_unavailable(part, shown), ""))
            return
        if part.activity is None:
            return
        found = part.activity
        rows.extend(
            [
                (label, "", ""),
                (
                    "  waiting for partner-created",
                    f"{plural(found.waiting_events, 'event')}, "
                    f"{plural(found.waiting_partners, 'partner')}",
                    "",
                ),
                (
                    "  orphan deletions",
                    f"{found.orphan_deletions} (deletions of things never counted)"
                    if found.orphan_deletions
                    else "0",
                    "",
                ),
                ("  dropped: partner deleted", plural(found.dropped_events, "event"), ""),
            ]
        )

    for topic in status.topics:
        producer = next((s for s in STAGES if s.producer == topic.producer), None)
        if producer is not None:
            if producer.service not in stages_shown:
                stage_row(producer)
            outbox_row(producer, topic)
        topic_rows(topic)
        for stage in STAGES:
            if stage.created_by is topic.event and stage.service not in stages_shown:
                stage_row(stage)
    for stage in STAGES:
        if stage.service not in stages_shown:
            stage_row(stage)
    for stage in STAGES:
        if stage.counts_activity:
            activity_rows(stage)

    lines = [
        f"signup-pipeline status at {rfc3339(status.at)} (read in {format_duration(status.took)})",
        "",
        f"{'stage':<{label_w}}{'now':<{now_w}}last {window}",
    ]
    for label, now_text, recent in rows:
        if recent:
            lines.append(f"{label:<{label_w}}{now_text:<{now_w}}{recent}".rstrip())
        else:
            lines.append(f"{label:<{label_w}}{now_text}".rstrip())
    lines += ["", "read from: " + ", ".join(f"{k} {v}" for k, v in status.sources.items())]
    return "\n".join(lines)


def show_status(
    endpoints: Endpoints,
    *,
    as_json: bool = False,
    watch: float | None = None,
    out: TextIO | None = None,
    topics: tuple[Topic[Any], ...] = TOPICS,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
    err: TextIO | None = None,
) -> int:
    """Print the status once, or every `watch` seconds (in place on a terminal) until
    Ctrl-C; with `as_json`, one JSON document (per line when watching).

    Once: 0, or 1 when a part could not be read (the screen's last line says which; with
    `as_json`, stderr, so that stdout stays one document). Watching: 0 at Ctrl-C, each
    screen saying what it could not read."""
    out = out or sys.stdout
    interactive = watch is not None and not as_json and out.isatty()
    first = True
    try:
        while True:
            status = read_status(endpoints, topics=topics, timeout=timeout)
            incomplete = incomplete_line(status)
            if as_json:
                document = status_json(status)
                out.write(json.dumps(document, indent=None if watch else 2) + "\n")
            elif interactive:
                width = shutil.get_terminal_size().columns
                screen = render_status(status, width)
                if incomplete:
                    screen += "\n" + incomplete
                footer = f"every {format_duration(watch or 0)}; Ctrl-C to stop"
                # Home, rewrite each line and clear what is left of the old screen: the
                # screen updates without the flicker of clearing it first.
                clear = "\x1b[2J" if first else ""
                body = "\x1b[K\n".join([*screen.splitlines(), footer])
                out.write(f"{clear}\x1b[H{body}\x1b[K\n\x1b[J")
            else:
                out.write(render_status(status, shutil.get_terminal_size().columns) + "\n")
                if incomplete:
                    out.write(incomplete + "\n")
                if watch is not None:
                    out.write("\n")
            out.flush()
            first = False
            if watch is None:
                if incomplete is None:
                    return 0
                if as_json:
                    err = err or sys.stderr
                    err.write(f"error: {incomplete}\n")
                    err.flush()
                return 1
            sleep(watch)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return 0
