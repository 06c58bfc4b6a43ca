"""`signup-pipeline trace <uuid>`: where one signup is, each step with its time, read
from the three services' databases (read-only, as `status` reads them)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import Connection, select

from auth_service.models import Member
from auth_service.models import OutboxEvent as AuthOutbox
from batch_service.models import PartnerSummary
from member_service.models import OutboxEvent as MemberOutbox
from member_service.models import Partner, User
from operations.formatting import (
    format_duration,
    moment_text,
    why_unavailable,
)
from operations.sources import (
    DEFAULT_TIMEOUT,
    Endpoints,
    Unavailable,
    attempt_read,
    in_parallel,
    read_database,
)
from shared.messaging.outbox import rfc3339
from shared.messaging.pipeline import PARTNER_CREATED, PROFILE_INSERT
from shared.storage.db import utcnow
from shared.telemetry.tracecontext import trace_id_of

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
        return lambda: attempt_read(
            f"{service} database", lambda: read_database(url, timeout, readers[service])
        )

    found = in_parallel({service: bind(service) for service in readers})
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
    by housekeeping (shared/messaging/housekeeping.py), never lost: they commit together."""
    if isinstance(source, Unavailable):
        return Step(name, UNKNOWN, note=why_unavailable(source))
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
        return Step(name, UNKNOWN, note=why_unavailable(source))
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
        accepted = Step("accepted", UNKNOWN, note=why_unavailable(auth))
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
                "at": moment_text(step.at),
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
    err: TextIO | None = None,
) -> int:
    """Print where the signup `member_id` is: 0 when found with every database read, 1
    when no database knows it or one could not be read (the last line says which). When
    none could be read, one line on stderr says why instead (with `as_json`, the document
    still goes to stdout)."""
    out = out or sys.stdout
    err = err or sys.stderr
    trace = read_trace(endpoints, member_id, timeout=timeout)
    if as_json:
        out.write(json.dumps(trace_json(trace), indent=2) + "\n")
    elif len(trace.unavailable) == len(endpoints.database_urls) and not trace.found:
        down = "; ".join(f"{s}: {r}" for s, r in trace.unavailable.items())
        err.write(f"error: no database could be read ({down})\n")
    else:
        out.write(render_trace(trace) + "\n")
        if trace.found and trace.unavailable:
            out.write(f"incomplete: could not read {', '.join(trace.unavailable)}\n")
    out.flush()
    err.flush()
    return 0 if trace.found and not trace.unavailable else 1
