"""What an operator looks at: the whole pipeline now (`signup-pipeline status`) and where
one signup is (`signup-pipeline trace <uuid>`).

The services each read only their own database; this reads all three, and the broker,
found the way the services find them (the same variables and defaults, through
`Settings.from_env`). It only looks: plain SELECTs (read-only transactions on
PostgreSQL, no write lock on SQLite), no consumer group joined (see shared/offsets.py).
A part that cannot be read is reported unavailable, with the reason, and the rest is
still shown.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from sqlalchemy import Connection, Engine, create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from auth_service.models import Member
from auth_service.models import OutboxEvent as AuthOutbox
from batch_service.models import PartnerSummary
from member_service.models import OutboxEvent as MemberOutbox
from member_service.models import Partner, User
from shared.config import Settings
from shared.db import utcnow
from shared.offsets import OffsetReader, PartitionLag
from shared.outbox import OutboxRecord, rfc3339
from shared.pipeline import PARTNER_CREATED, PROFILE_INSERT, TOPICS, Topic
from shared.tracecontext import trace_id_of

T = TypeVar("T")

SERVICES = ("auth", "member", "batch")
WINDOW = dt.timedelta(seconds=60)
DEFAULT_TIMEOUT = 3.0


# --- where things are, and what could not be read ----------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where the pipeline keeps its state: each service's database and the broker."""

    database_urls: Mapping[str, str]
    bootstrap_servers: Sequence[str]
    outbox_retention: dt.timedelta = dt.timedelta(hours=24)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Endpoints:
        """As the services read them; raises ConfigError for a malformed setting."""
        settings = {service: Settings.from_env(service, env) for service in SERVICES}
        return cls(
            database_urls={service: s.database_url for service, s in settings.items()},
            bootstrap_servers=settings["auth"].bootstrap_servers,
            outbox_retention=settings["auth"].outbox_retention,
        )

    def sources(self) -> dict[str, str]:
        """What was read, for the reader of a report (no passwords)."""
        shown = {service: redact(url) for service, url in self.database_urls.items()}
        shown["kafka"] = ",".join(self.bootstrap_servers)
        return shown


@dataclass(frozen=True)
class Unavailable:
    """A part that could not be read: which source failed, and why (one line)."""

    source: str
    reason: str


def redact(url: str) -> str:
    """A database URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<not a database URL>"


def failure_reason(exc: BaseException) -> str:
    """One line saying why: the driver's own message rather than SQLAlchemy's wrapping."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return first or type(exc).__name__


def _attempt(source: str, read: Callable[[], T]) -> T | Unavailable:
    try:
        return read()
    # Whatever goes wrong is shown as this part's reason, beside the parts that worked:
    # an operator's screen must not turn into a traceback when it is needed most.
    except Exception as exc:
        return Unavailable(source, failure_reason(exc))


def _in_parallel(reads: Mapping[str, Callable[[], T]]) -> dict[str, T]:
    """Each read on its own thread: a database that hangs until its timeout does not
    hold up the others."""
    with ThreadPoolExecutor(max_workers=len(reads), thread_name_prefix="read") as pool:
        futures = {name: pool.submit(read) for name, read in reads.items()}
        return {name: future.result() for name, future in futures.items()}


def reading_engine(url: str, timeout: float = DEFAULT_TIMEOUT) -> Engine:
    """An engine for looking only, that gives up within about `timeout` seconds.

    Not shared.db.make_engine: that one takes SQLite's write lock at every BEGIN (right
    for the services, wrong for a bystander) and creates a missing SQLite file (a status
    run from the wrong directory would leave empty databases behind)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not Path(path).is_file():
            raise FileNotFoundError(f"no database file at {path or '(none)'}")
        return create_engine(
            url, poolclass=NullPool, hide_parameters=True, connect_args={"timeout": timeout}
        )
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {"connect_timeout": max(2, math.ceil(timeout))}  # libpq's minimum
    return create_engine(url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args)


def _read_database(url: str, timeout: float, read: Callable[[Connection], T]) -> T:
    engine = reading_engine(url, timeout)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # For this transaction only, not the session: behind a pooler such as
                # PgBouncer a session setting would outlive us on someone else's query.
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
                connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
            return read(connection)
    finally:
        engine.dispose()


# --- formatting ---------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """`350 ms`, `12.3 s`, `4m 5s`, `2h 3m`, `3d 4h`: short and readable."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    days, whole = divmod(whole, 86_400)
    hours, whole = divmod(whole, 3_600)
    minutes, whole = divmod(whole, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {whole}s"


def plural(count: int, singular: str, many: str | None = None) -> str:
    """`1 record`, `3 records`."""
    return f"{count} {singular if count == 1 else many or singular + 's'}"


def partition_lag_text(partitions: Sequence[PartitionLag], width: int) -> str:
    """Every partition's lag (`p0 0  p1 3`) if that fits in `width` characters, else only
    the lagging ones, as many as fit, and how many more there are."""
    every = "  ".join(f"p{p.partition} {p.lag}" for p in partitions)
    if len(every) <= width:
        return every
    lagging = [f"p{p.partition} {p.lag}" for p in partitions if p.lag]
    if not lagging:
        return "0 on every partition"
    shown: list[str] = []
    for n, item in enumerate(lagging):
        left = len(lagging) - n  # this one and those after it
        after = f"  (+{left - 1} more)" if left > 1 else ""
        if shown and len("  ".join([*shown, item]) + after) > width:
            return "  ".join(shown) + f"  (+{left} more)"
        shown.append(item)
    return "  ".join(shown)


# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One service's part of the flow, as its database shows it."""

    service: str
    created: tuple[Any, ...]  # tables whose new rows are this stage's throughput
    step: str  # what one such row means, for the screen
    verb: str
    outbox: type[OutboxRecord] | None


STAGES = (
    Stage("auth", (Member,), "signup accepted", "accepted", AuthOutbox),
    Stage("member", (User, Partner), "profile created", "created", MemberOutbox),
    Stage("batch", (PartnerSummary,), "summary created", "created", None),
)


@dataclass(frozen=True)
class OutboxBacklog:
    """A service's outbox: what waits to be published, and what was published lately."""

    unpublished: int
    oldest_unpublished_at: dt.datetime | None
    published_recently: int


@dataclass(frozen=True)
class StageCounts:
    """What one service's database says: rows created lately, and its outbox."""

    created_recently: int
    outbox: OutboxBacklog | None


@dataclass(frozen=True)
class GroupLag:
    """How far a consumer group is behind on its topic."""

    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        """The sum over partitions of end offset minus committed offset."""
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class PipelineStatus:
    """One reading of the whole pipeline. `topics`: profile-insert and partner-created
    (tests pass private copies), which the auth and member outboxes publish."""

    at: dt.datetime
    window: dt.timedelta
    topics: tuple[Topic, Topic]
    sources: dict[str, str]
    stages: dict[str, StageCounts | Unavailable]
    lag: dict[str, GroupLag | Unavailable]  # by consumer group
    dead_letters: dict[str, int | Unavailable]  # by dead-letter topic
    took: float = 0.0  # seconds the reading took


def _count_since(connection: Connection, table: Any, since: dt.datetime) -> int:
    query = select(func.count()).select_from(table).where(table.created_at >= since)
    return int(connection.scalar(query) or 0)


def _outbox_backlog(connection: Connection, outbox: Any, since: dt.datetime) -> OutboxBacklog:
    pending = connection.execute(
        select(func.count(), func.min(outbox.created_at)).where(outbox.published_at.is_(None))
    ).one()
    published = connection.scalar(
        select(func.count()).select_from(outbox).where(outbox.published_at >= since)
    )
    return OutboxBacklog(int(pending[0] or 0), pending[1], int(published or 0))


def _stage_counts(stage: Stage, since: dt.datetime) -> Callable[[Connection], StageCounts]:
    def read(connection: Connection) -> StageCounts:
        created = sum(_count_since(connection, table, since) for table in stage.created)
        outbox = _outbox_backlog(connection, stage.outbox, since) if stage.outbox else None
        return StageCounts(created, outbox)

    return read


def _read_kafka(
    servers: Sequence[str], topics: Sequence[Topic], timeout: float
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
                    lag[topic.consumer_group] = GroupLag(
                        topic.consumer_group, topic.name, tuple(partitions)
                    )
                else:
                    lag[topic.consumer_group] = _missing_topic(topic.name)
                if topic.dead_letter in ranges:
                    dead[topic.dead_letter] = sum(r.records for r in ranges[topic.dead_letter])
                else:
                    dead[topic.dead_letter] = _missing_topic(topic.dead_letter)
    except Exception as exc:  # the broker as a whole: every Kafka figure is unknown
        down = Unavailable("kafka", failure_reason(exc) or type(exc).__name__)
        return {t.consumer_group: down for t in topics}, {t.dead_letter: down for t in topics}
    return lag, dead


def _missing_topic(name: str) -> Unavailable:
    return Unavailable(f"topic {name}", "the broker has no such topic (yet)")


def read_status(
    endpoints: Endpoints,
    *,
    topics: tuple[Topic, Topic] = TOPICS,
    window: dt.timedelta = WINDOW,
    timeout: float = DEFAULT_TIMEOUT,
) -> PipelineStatus:
    """Read the three databases and the broker, side by side, each within `timeout`."""
    started = time.perf_counter()
    now = utcnow()
    since = now - window
    reads: dict[str, Callable[[], Any]] = {
        stage.service: _bind_stage(endpoints, stage, since, timeout) for stage in STAGES
    }
    reads["kafka"] = lambda: _read_kafka(endpoints.bootstrap_servers, topics, timeout)
    results = _in_parallel(reads)
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
    endpoints: Endpoints, stage: Stage, since: dt.datetime, timeout: float
) -> Callable[[], StageCounts | Unavailable]:
    url = endpoints.database_urls[stage.service]
    return lambda: _attempt(
        f"{stage.service} database",
        lambda: _read_database(url, timeout, _stage_counts(stage, since)),
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
    outbox: dict[str, Any] = {}
    published: dict[str, int | None] = {}
    for stage, topic in zip(STAGES[:2], status.topics, strict=True):
        counts = stages[stage.service]
        backlog = counts.outbox if counts else None
        published[topic.name] = backlog.published_recently if backlog else None
        outbox[stage.service] = (
            {
                "topic": topic.name,
                "unpublished": backlog.unpublished,
                "oldest_unpublished_at": _moment(backlog.oldest_unpublished_at),
                "oldest_unpublished_age_seconds": (
                    round((status.at - backlog.oldest_unpublished_at).total_seconds(), 3)
                    if backlog.oldest_unpublished_at
                    else None
                ),
            }
            if backlog
            else None
        )
    lag: dict[str, Any] = {}
    for group, part in status.lag.items():
        value = known(part)
        lag[group] = (
            {
                "topic": value.topic,
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
    dead_letters = {topic: known(part) for topic, part in status.dead_letters.items()}

    def created(service: str) -> int | None:
        counts = stages.get(service)
        return counts.created_recently if counts else None

    return {
        "at": rfc3339(status.at),
        "window_seconds": status.window.total_seconds(),
        "sources": status.sources,
        "outbox": outbox,
        "lag": lag,
        "dead_letters": dead_letters,
        "throughput": {
            "signups_accepted": created("auth"),
            "events_published": published,
            "profiles_created": created("member"),
            "summaries_created": created("batch"),
        },
        "unavailable": unavailable,
        "took_ms": round(status.took * 1000, 1),
    }


def _moment(moment: dt.datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


def _why(part: Unavailable, shown: set[Unavailable] | None = None) -> str:
    """Why a part is missing; only its source when the same reason is shown above."""
    if shown is not None:
        if part in shown:
            return f"unavailable: {part.source} (above)"
        shown.add(part)
    return f"unavailable: {part.source}: {part.reason}"


def render_status(status: PipelineStatus, width: int = 100) -> str:
    """The status screen: one line per stage, in the order a signup goes through them."""
    label_w, now_w = 35, 36
    window = f"{status.window.total_seconds():g} s"
    rows: list[tuple[str, str, str]] = []
    shown: set[Unavailable] = set()

    def stage_rows(stage: Stage, number: int, topic: Topic | None) -> None:
        part = status.stages[stage.service]
        label = f"{number} {stage.service}: {stage.step}"
        outbox_label = f"{number + 1} {stage.service} outbox → {topic.name if topic else ''}"
        if isinstance(part, Unavailable):
            rows.append((label, _why(part, shown), ""))
            if topic is not None:
                rows.append((outbox_label, _why(part, shown), ""))
            return
        rows.append((label, "", f"{part.created_recently} {stage.verb}"))
        if topic is not None and part.outbox is not None:
            backlog = part.outbox
            now_text = f"{backlog.unpublished} unpublished"
            if backlog.oldest_unpublished_at is not None:
                age = (status.at - backlog.oldest_unpublished_at).total_seconds()
                now_text += f", oldest {format_duration(max(age, 0))}"
            rows.append((outbox_label, now_text, f"{backlog.published_recently} published"))

    def topic_rows(topic: Topic, number: int) -> None:
        group = status.lag[topic.consumer_group]
        label = f"{number} {topic.name} → {topic.consumer_group}"
        if isinstance(group, Unavailable):
            rows.append((label, _why(group, shown), ""))
        else:
            room = width - label_w - len(f"lag {group.total}: ")
            rows.append(
                (label, f"lag {group.total}: {partition_lag_text(group.partitions, room)}", "")
            )
        dead = status.dead_letters[topic.dead_letter]
        text = _why(dead, shown) if isinstance(dead, Unavailable) else plural(dead, "dead letter")
        rows.append((f"  {topic.dead_letter}", text, ""))

    profile_insert, partner_created = status.topics
    stage_rows(STAGES[0], 1, profile_insert)
    topic_rows(profile_insert, 3)
    stage_rows(STAGES[1], 4, partner_created)
    topic_rows(partner_created, 6)
    stage_rows(STAGES[2], 7, None)

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
    topics: tuple[Topic, Topic] = TOPICS,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the status once, or every `watch` seconds (in place on a terminal) until
    Ctrl-C; with `as_json`, one JSON document (per line when watching). Always 0."""
    out = out or sys.stdout
    interactive = watch is not None and not as_json and out.isatty()
    first = True
    try:
        while True:
            status = read_status(endpoints, topics=topics, timeout=timeout)
            if as_json:
                document = status_json(status)
                out.write(json.dumps(document, indent=None if watch else 2) + "\n")
            elif interactive:
                width = shutil.get_terminal_size().columns
                screen = render_status(status, width)
                footer = f"every {format_duration(watch or 0)}; Ctrl-C to stop"
                # Home, rewrite each line and clear what is left of the old screen: the
                # screen updates without the flicker of clearing it first.
                clear = "\x1b[2J" if first else ""
                body = "\x1b[K\n".join([*screen.splitlines(), footer])
                out.write(f"{clear}\x1b[H{body}\x1b[K\n\x1b[J")
            else:
                out.write(render_status(status, shutil.get_terminal_size().columns) + "\n")
                if watch is not None:
                    out.write("\n")
            out.flush()
            first = False
            if watch is None:
                return 0
            sleep(watch)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return 0


# --- trace ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxRow:
    """An event as its outbox row keeps it."""

    event_id: str
    created_at: dt.datetime
    published_at: dt.datetime | None
    traceparent: str | None


@dataclass(frozen=True)
class AuthRecord:
    """What the auth database knows of one signup."""

    accepted_at: dt.datetime | None
    role: str | None
    event: OutboxRow | None  # its profile-insert


@dataclass(frozen=True)
class MemberRecord:
    """What the member database knows of one signup."""

    role: str | None  # USER or PARTNER by the table the profile is in; None: no profile
    created_at: dt.datetime | None
    event: OutboxRow | None  # its partner-created


@dataclass(frozen=True)
class BatchRecord:
    """What the batch database knows of one partner."""

    summary_at: dt.datetime | None


DONE, PENDING, CLEANED_UP, MISSING, UNKNOWN = (
    "done",
    "pending",
    "cleaned_up",
    "missing",
    "unavailable",
)


@dataclass(frozen=True)
class Step:
    """One step of a signup's way through the pipeline."""

    name: str
    state: str  # done, pending, cleaned_up (done, its row deleted), missing, unavailable
    at: dt.datetime | None = None
    ce_id: str | None = None
    note: str = ""

    @property
    def reached(self) -> bool:
        """Done, whether or not its timestamp is still kept."""
        return self.state in (DONE, CLEANED_UP)


@dataclass(frozen=True)
class SignupTrace:
    """Where one signup is, step by step."""

    member_id: str
    found: bool
    role: str | None
    trace_id: str | None
    steps: list[Step]
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every step of its role reached."""
        return self.role is not None and all(step.reached for step in self.steps)


# Why a "published" step can come after the step it caused: the relay stamps
# published_at once the broker acknowledged the whole batch, in its own transaction,
# while the consumer may already have fetched and applied the record.
OVERTAKEN = (
    "a negative interval: published_at is stamped after the broker's acknowledgement, "
    "and the consumer may apply the event before that stamp is written"
)


def step_intervals(steps: Sequence[Step]) -> list[float | None]:
    """Milliseconds from the previous step with a known time, for each step with one.

    Negative when a consumer applied an event before its relay stamped published_at
    (see OVERTAKEN); accepted → profile created → summary created never go backwards."""
    intervals: list[float | None] = []
    previous: dt.datetime | None = None
    for step in steps:
        if step.at is None:
            intervals.append(None)
            continue
        intervals.append(
            (step.at - previous).total_seconds() * 1000 if previous is not None else None
        )
        previous = step.at
    return intervals


def _outbox_row(connection: Connection, outbox: Any, topic: str, key: str) -> OutboxRow | None:
    row = connection.execute(
        select(outbox.event_id, outbox.created_at, outbox.published_at, outbox.traceparent)
        .where(outbox.topic == topic, outbox.key == key)
        .order_by(outbox.id)
        .limit(1)
    ).first()
    return OutboxRow(row[0], row[1], row[2], row[3]) if row else None


def _read_auth(member_id: str) -> Callable[[Connection], AuthRecord]:
    def read(connection: Connection) -> AuthRecord:
        member = connection.execute(
            select(Member.created_at, Member.role).where(Member.uuid == member_id)
        ).first()
        return AuthRecord(
            accepted_at=member[0] if member else None,
            role=member[1] if member else None,
            event=_outbox_row(connection, AuthOutbox, PROFILE_INSERT.name, member_id),
        )

    return read


def _read_member(member_id: str) -> Callable[[Connection], MemberRecord]:
    def read(connection: Connection) -> MemberRecord:
        role, created_at = None, None
        for name, table in (("USER", User), ("PARTNER", Partner)):
            found = connection.scalar(select(table.created_at).where(table.uuid == member_id))
            if found is not None:
                role, created_at = name, found
        event = _outbox_row(connection, MemberOutbox, PARTNER_CREATED.name, member_id)
        return MemberRecord(role, created_at, event)

    return read


def _read_batch(member_id: str) -> Callable[[Connection], BatchRecord]:
    def read(connection: Connection) -> BatchRecord:
        at = connection.scalar(
            select(PartnerSummary.created_at).where(PartnerSummary.partner_id == member_id)
        )
        return BatchRecord(at)

    return read


def read_trace(
    endpoints: Endpoints, member_id: str, *, timeout: float = DEFAULT_TIMEOUT
) -> SignupTrace:
    """Read one signup's rows from the three databases and put its steps in order."""
    readers: dict[str, Callable[[Connection], Any]] = {
        "auth": _read_auth(member_id),
        "member": _read_member(member_id),
        "batch": _read_batch(member_id),
    }

    def bind(service: str) -> Callable[[], Any]:
        url = endpoints.database_urls[service]
        return lambda: _attempt(
            f"{service} database", lambda: _read_database(url, timeout, readers[service])
        )

    found = _in_parallel({service: bind(service) for service in readers})
    return assemble_trace(
        member_id,
        found["auth"],
        found["member"],
        found["batch"],
        outbox_retention=endpoints.outbox_retention,
    )


def _published_step(
    name: str,
    source: AuthRecord | MemberRecord | Unavailable,
    row: OutboxRow | None,
    produced: bool,
    retention: dt.timedelta,
    now: dt.datetime,
) -> Step:
    """The step "<topic> published", from the producer's outbox row. `produced`: the
    state the event was written with exists, so a missing row was published and deleted
    by housekeeping (shared/housekeeping.py), never lost: they commit together."""
    if isinstance(source, Unavailable):
        return Step(name, UNKNOWN, note=_why(source))
    topic = name.split(" ")[0]
    if row is not None and row.published_at is not None:
        return Step(name, DONE, row.published_at, row.event_id)
    if row is not None:
        age = format_duration(max((now - row.created_at).total_seconds(), 0))
        return Step(
            name,
            PENDING,
            ce_id=row.event_id,
            note=f"{topic} not yet published (in outbox since {rfc3339(row.created_at)}, "
            f"{age} ago)",
        )
    if produced:
        hours = retention.total_seconds() / 3600
        return Step(
            name,
            CLEANED_UP,
            note=f"published; outbox row already cleaned up (published rows are kept "
            f"{hours:g} h, OUTBOX_RETENTION_HOURS)",
        )
    return Step(name, MISSING, note=f"no {topic} outbox row")


def _created_step(
    name: str,
    source: object,
    at: dt.datetime | None,
    previous: Step,
    waiting_for: str,
    consumer: str,
    topic: str,
    now: dt.datetime,
) -> Step:
    if isinstance(source, Unavailable):
        return Step(name, UNKNOWN, note=_why(source))
    if at is not None:
        return Step(name, DONE, at)
    if not previous.reached:
        return Step(name, PENDING, note=f"{name.split(' ')[0]} not yet: waits for {waiting_for}")
    since = ""
    if previous.at is not None:
        since = f", {topic} published {format_duration((now - previous.at).total_seconds())} ago"
    return Step(
        name,
        PENDING,
        note=f"{name} not yet: {consumer} has not applied it{since}; see `signup-pipeline "
        f"status` (lag) and `signup-pipeline dlt list {topic}`",
    )


def assemble_trace(
    member_id: str,
    auth: AuthRecord | Unavailable,
    member: MemberRecord | Unavailable,
    batch: BatchRecord | Unavailable,
    *,
    outbox_retention: dt.timedelta = dt.timedelta(hours=24),
    now: dt.datetime | None = None,
) -> SignupTrace:
    """The steps of one signup from what each database holds (no I/O)."""
    now = now or utcnow()
    unavailable = {
        part.source: part.reason for part in (auth, member, batch) if isinstance(part, Unavailable)
    }
    a = None if isinstance(auth, Unavailable) else auth
    m = None if isinstance(member, Unavailable) else member
    b = None if isinstance(batch, Unavailable) else batch
    found = any(
        (
            a and (a.accepted_at or a.event),
            m and (m.created_at or m.event),
            b and b.summary_at,
        )
    )
    role = (a.role if a else None) or (m.role if m else None)
    if role is None and ((m and m.event) or (b and b.summary_at)):
        role = "PARTNER"  # only partners get a partner-created event and a summary

    if isinstance(auth, Unavailable):
        accepted = Step("accepted", UNKNOWN, note=_why(auth))
    elif auth.accepted_at is not None:
        accepted = Step("accepted", DONE, auth.accepted_at)
    else:
        accepted = Step("accepted", MISSING, note="no members row in the auth database")
    profile_exists = bool(m and m.created_at)
    insert_published = _published_step(
        "profile-insert published",
        auth,
        a.event if a else None,
        produced=bool(a and a.accepted_at) or profile_exists,
        retention=outbox_retention,
        now=now,
    )
    profile = _created_step(
        "profile created",
        member,
        m.created_at if m else None,
        insert_published,
        "profile-insert to be published",
        PROFILE_INSERT.consumer_group,
        PROFILE_INSERT.name,
        now,
    )
    steps = [accepted, insert_published, profile]
    if role == "PARTNER":
        partner_published = _published_step(
            "partner-created published",
            member,
            m.event if m else None,
            produced=profile_exists,
            retention=outbox_retention,
            now=now,
        )
        if not profile_exists and partner_published.state == MISSING:
            partner_published = Step(
                "partner-created published",
                PENDING,
                note="partner-created not yet: waits for the profile",
            )
        steps += [
            partner_published,
            _created_step(
                "summary created",
                batch,
                b.summary_at if b else None,
                partner_published,
                "partner-created to be published",
                PARTNER_CREATED.consumer_group,
                PARTNER_CREATED.name,
                now,
            ),
        ]
    trace_id = trace_id_of(a.event.traceparent if a and a.event else None) or trace_id_of(
        m.event.traceparent if m and m.event else None
    )
    return SignupTrace(member_id, bool(found), role, trace_id, steps, unavailable)


def trace_json(trace: SignupTrace) -> dict[str, Any]:
    """The machine-readable trace; `ms_since_previous` may be negative (see OVERTAKEN)."""
    intervals = step_intervals(trace.steps)
    first, last = trace.steps[0].at, trace.steps[-1].at
    return {
        "uuid": trace.member_id,
        "found": trace.found,
        "role": trace.role,
        "trace_id": trace.trace_id,
        "complete": trace.complete,
        "total_ms": (
            round((last - first).total_seconds() * 1000, 3)
            if trace.complete and first and last
            else None
        ),
        "steps": [
            {
                "step": step.name,
                "state": step.state,
                "at": _moment(step.at),
                "ms_since_previous": round(ms, 3) if ms is not None else None,
                "ce_id": step.ce_id,
                "note": step.note,
            }
            for step, ms in zip(trace.steps, intervals, strict=True)
        ],
        "unavailable": trace.unavailable,
    }


def render_trace(trace: SignupTrace) -> str:
    """One line per step, with its time and the milliseconds since the step before."""
    if not trace.found:
        where = "the auth, member or batch database"
        if trace.unavailable:
            down = "; ".join(f"{s}: {r}" for s, r in trace.unavailable.items())
            where = f"the databases that could be read (unavailable: {down})"
        return f"no signup with uuid {trace.member_id} in {where}"
    lines = [
        f"signup {trace.member_id}  role {trace.role or 'unknown'}  "
        f"trace {trace.trace_id or '(none recorded)'}"
    ]
    intervals = step_intervals(trace.steps)
    for n, (step, ms) in enumerate(zip(trace.steps, intervals, strict=True), start=1):
        if step.at is not None:
            delta = f"{ms:+,.1f} ms" if ms is not None else ""
            ce = f"  ce_id {step.ce_id}" if step.ce_id else ""
            line = f"  {n} {step.name:<26} {rfc3339(step.at):<28} {delta:>12}{ce}"
            lines.append(line.rstrip())
        else:
            lines.append(f"  {n} {step.name:<26} {step.note}")
    if any(ms is not None and ms < 0 for ms in intervals):
        lines.append(f"  ({OVERTAKEN})")
    if trace.role is None:
        lines.append("  (role unknown: partner-created and summary apply to PARTNER signups only)")
    first, last = trace.steps[0], trace.steps[-1]
    if trace.complete and first.at and last.at:
        total = (last.at - first.at).total_seconds() * 1000
        lines.append(f"complete: {total:,.1f} ms from accepted to {last.name}")
    elif trace.complete:
        lines.append("complete")
    else:
        waiting = next((s for s in trace.steps if not s.reached), None)
        lines.append(f"not complete: next step {waiting.name}" if waiting else "not complete")
    return "\n".join(lines)


def show_trace(
    endpoints: Endpoints,
    member_id: str,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Print where the signup `member_id` is; 1 when no database knows it."""
    out = out or sys.stdout
    trace = read_trace(endpoints, member_id, timeout=timeout)
    if as_json:
        out.write(json.dumps(trace_json(trace), indent=2) + "\n")
    else:
        out.write(render_trace(trace) + "\n")
    out.flush()
    return 0 if trace.found else 1


__all__ = [
    "Endpoints",
    "PipelineStatus",
    "SignupTrace",
    "Unavailable",
    "assemble_trace",
    "read_status",
    "read_trace",
    "render_status",
    "render_trace",
    "show_status",
    "show_trace",
    "status_json",
    "trace_json",
]
