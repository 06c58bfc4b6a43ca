"""`signup-pipeline trace <uuid>`: a member's whole history across the three services,
each step with its time, read from their databases (read-only, as `status` reads them):
the signup accepted, profile-insert published, the profile created or rejected, the
answer published and applied (ACTIVE or REJECTED), for a partner partner-created
published and its summary opened, and after a deletion the account deleted,
profile-delete published, the member's tombstone, partner-deleted published and the
summary's tombstone. A deletion (or a rejection) erases the member's outbox rows and
overwrites when it became ACTIVE: those steps say "erased", not "missing"."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import Connection, select

from auth_service.models import ACTIVE, DELETED, REJECTED, Member
from auth_service.models import OutboxEvent as AuthOutbox
from batch_service.models import DeletedPartner, PartnerSummary
from member_service.models import DeletedMember, Partner, User
from member_service.models import OutboxEvent as MemberOutbox
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
from shared.messaging.pipeline import (
    PARTNER_CREATED,
    PARTNER_DELETED,
    PROFILE_CREATED,
    PROFILE_DELETE,
    PROFILE_INSERT,
    PROFILE_REJECTED,
)
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
    reason: str | None = None  # a profile-rejected's, from its payload


@dataclass(frozen=True)
class AuthRecord:
    """What the auth database knows of one signup."""

    accepted_at: dt.datetime | None
    role: str | None
    event: OutboxRow | None  # its profile-insert
    status: str | None = None  # PENDING, ACTIVE, REJECTED, DELETED
    reason: str | None = None  # why REJECTED
    status_changed_at: dt.datetime | None = None
    delete_event: OutboxRow | None = None  # its profile-delete


@dataclass(frozen=True)
class MemberRecord:
    """What the member database knows of one signup."""

    role: str | None  # USER or PARTNER by the table the profile is in; None: no profile
    created_at: dt.datetime | None
    event: OutboxRow | None  # its partner-created
    created_answer: OutboxRow | None = None  # its profile-created
    rejected_answer: OutboxRow | None = None  # its profile-rejected (with the reason)
    deleted_at: dt.datetime | None = None  # its tombstone (deleted_members)
    delete_event: OutboxRow | None = None  # its partner-deleted


@dataclass(frozen=True)
class BatchRecord:
    """What the batch database knows of one partner."""

    summary_at: dt.datetime | None
    deleted_at: dt.datetime | None = None  # its tombstone (deleted_partners)


DONE, PENDING, CLEANED_UP, ERASED, MISSING, UNKNOWN = (
    "done",
    "pending",
    "cleaned_up",
    "erased",
    "missing",
    "unavailable",
)


@dataclass(frozen=True)
class Step:
    """One step of a signup's way through the pipeline."""

    name: str
    # done, pending, cleaned_up (done, its row deleted by housekeeping), erased (done,
    # its record erased with the member's data), missing, unavailable
    state: str
    at: dt.datetime | None = None
    ce_id: str | None = None
    note: str = ""
    # The step that caused this one: its interval is measured from that step's time
    # (the previous step with a time when that one has none). None: the previous step.
    after: str | None = None

    @property
    def reached(self) -> bool:
        """Done, whether or not its timestamp is still kept."""
        return self.state in (DONE, CLEANED_UP, ERASED)


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


def interval_bases(steps: Sequence[Step]) -> list[Step | None]:
    """For each step with a known time, the step its interval is measured from: the step
    that caused it (`after`) when that has a time, else the previous step with one."""
    bases: list[Step | None] = []
    seen: dict[str, Step] = {}
    previous: Step | None = None
    for step in steps:
        if step.at is None:
            bases.append(None)
        else:
            cause = seen.get(step.after) if step.after else None
            bases.append(cause if cause is not None and cause.at is not None else previous)
            previous = step
        seen[step.name] = step
    return bases


def step_intervals(steps: Sequence[Step]) -> list[float | None]:
    """Milliseconds from the step that caused each step (see interval_bases), for each
    step with a known time.

    Negative when a consumer applied an event before its relay stamped published_at
    (see OVERTAKEN); accepted → profile created → summary created never go backwards."""
    return [
        (step.at - base.at).total_seconds() * 1000
        if step.at is not None and base is not None and base.at is not None
        else None
        for step, base in zip(steps, interval_bases(steps), strict=True)
    ]


def _outbox_row(connection: Connection, outbox: Any, topic: str, key: str) -> OutboxRow | None:
    row = connection.execute(
        select(
            outbox.event_id,
            outbox.created_at,
            outbox.published_at,
            outbox.traceparent,
            outbox.payload,
        )
        .where(outbox.topic == topic, outbox.key == key)
        .order_by(outbox.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    reason = None
    if topic == PROFILE_REJECTED.name:
        try:
            reason = str(json.loads(row[4]).get("reason") or "") or None
        except (ValueError, AttributeError):
            reason = None
    return OutboxRow(row[0], row[1], row[2], row[3], reason)


def _read_auth(member_id: str) -> Callable[[Connection], AuthRecord]:
    def read(connection: Connection) -> AuthRecord:
        member = connection.execute(
            select(
                Member.created_at,
                Member.role,
                Member.status,
                Member.status_reason,
                Member.status_changed_at,
            ).where(Member.uuid == member_id)
        ).first()
        return AuthRecord(
            accepted_at=member[0] if member else None,
            role=member[1] if member else None,
            event=_outbox_row(connection, AuthOutbox, PROFILE_INSERT.name, member_id),
            status=member[2] if member else None,
            reason=member[3] if member else None,
            status_changed_at=member[4] if member else None,
            delete_event=_outbox_row(connection, AuthOutbox, PROFILE_DELETE.name, member_id),
        )

    return read


def _read_member(member_id: str) -> Callable[[Connection], MemberRecord]:
    def read(connection: Connection) -> MemberRecord:
        role, created_at = None, None
        for name, table in (("USER", User), ("PARTNER", Partner)):
            found = connection.scalar(select(table.created_at).where(table.uuid == member_id))
            if found is not None:
                role, created_at = name, found
        return MemberRecord(
            role,
            created_at,
            _outbox_row(connection, MemberOutbox, PARTNER_CREATED.name, member_id),
            created_answer=_outbox_row(connection, MemberOutbox, PROFILE_CREATED.name, member_id),
            rejected_answer=_outbox_row(connection, MemberOutbox, PROFILE_REJECTED.name, member_id),
            deleted_at=connection.scalar(
                select(DeletedMember.deleted_at).where(DeletedMember.uuid == member_id)
            ),
            delete_event=_outbox_row(connection, MemberOutbox, PARTNER_DELETED.name, member_id),
        )

    return read


def _read_batch(member_id: str) -> Callable[[Connection], BatchRecord]:
    def read(connection: Connection) -> BatchRecord:
        at = connection.scalar(
            select(PartnerSummary.created_at).where(PartnerSummary.partner_id == member_id)
        )
        deleted_at = connection.scalar(
            select(DeletedPartner.deleted_at).where(DeletedPartner.partner_id == member_id)
        )
        return BatchRecord(at, deleted_at)

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
    *,
    after: str | None = None,
    erased: str = "",
) -> Step:
    """The step "<topic> published", from the producer's outbox row. `produced`: the
    state the event was written with exists, so a missing row was published and deleted
    by housekeeping (shared/messaging/housekeeping.py), never lost: they commit together.
    `erased`: why the row is gone with the member's data (its rejection or deletion
    purges the member's outbox rows), when it is."""
    if isinstance(source, Unavailable):
        return Step(name, UNKNOWN, note=why_unavailable(source), after=after)
    topic = name.split(" ")[0]
    if row is not None and row.published_at is not None:
        return Step(name, DONE, row.published_at, row.event_id, after=after)
    if row is not None:
        age = format_duration(max((now - row.created_at).total_seconds(), 0))
        return Step(
            name,
            PENDING,
            ce_id=row.event_id,
            note=f"{topic} not yet published (in outbox since {rfc3339(row.created_at)}, "
            f"{age} ago)",
            after=after,
        )
    if erased:
        return Step(name, ERASED, note=erased, after=after)
    if produced:
        hours = retention.total_seconds() / 3600
        return Step(
            name,
            CLEANED_UP,
            note=f"published; outbox row already cleaned up (published rows are kept "
            f"{hours:g} h, OUTBOX_RETENTION_HOURS)",
            after=after,
        )
    return Step(name, MISSING, note=f"no {topic} outbox row", after=after)


def _created_step(
    name: str,
    source: object,
    at: dt.datetime | None,
    previous: Step,
    waiting_for: str,
    consumer: str,
    topic: str,
    now: dt.datetime,
    *,
    erased: str = "",
    note: str = "",
) -> Step:
    """A state change a consumer makes when `previous` (the event's publication)
    reached it; `erased`: why its time is no longer kept, when it is not."""
    after = previous.name
    if isinstance(source, Unavailable):
        return Step(name, UNKNOWN, note=why_unavailable(source), after=after)
    if at is not None:
        return Step(name, DONE, at, note=note, after=after)
    if erased:
        return Step(name, ERASED, note=erased, after=after)
    if not previous.reached:
        return Step(
            name,
            PENDING,
            note=f"{name.split(' ')[0]} not yet: waits for {waiting_for}",
            after=after,
        )
    since = ""
    if previous.at is not None:
        since = f", {topic} published {format_duration((now - previous.at).total_seconds())} ago"
    return Step(
        name,
        PENDING,
        note=f"{name} not yet: {consumer} has not applied it{since}; see `signup-pipeline "
        f"status` (lag) and `signup-pipeline dlt list {topic}`",
        after=after,
    )


# Why a step's time or outbox row is gone after the member's rejection or deletion.
ERASED_WITH_ACCOUNT = "erased: the account's outbox rows are purged when it is {status}"
ERASED_WITH_MEMBER = "erased with the member's data (deleted)"
ACTIVE_OVERWRITTEN = "erased: status_changed_at now holds the deletion"


def assemble_trace(
    member_id: str,
    auth: AuthRecord | Unavailable,
    member: MemberRecord | Unavailable,
    batch: BatchRecord | Unavailable,
    *,
    outbox_retention: dt.timedelta = dt.timedelta(hours=24),
    now: dt.datetime | None = None,
) -> SignupTrace:
    """The steps of one member's life from what each database holds (no I/O)."""
    now = now or utcnow()
    unavailable = {
        part.source: part.reason for part in (auth, member, batch) if isinstance(part, Unavailable)
    }
    a = None if isinstance(auth, Unavailable) else auth
    m = None if isinstance(member, Unavailable) else member
    b = None if isinstance(batch, Unavailable) else batch
    found = any(
        (
            a and (a.accepted_at or a.event or a.status),
            m
            and (m.created_at or m.event or m.created_answer or m.rejected_answer or m.deleted_at),
            b and (b.summary_at or b.deleted_at),
        )
    )
    role = (a.role if a else None) or (m.role if m else None)
    if role is None and ((m and (m.event or m.delete_event)) or (b and b.summary_at)):
        role = "PARTNER"  # only partners get a partner-created event and a summary
    status = a.status if a else None
    rejected = status == REJECTED or bool(m and m.rejected_answer)
    deleted = status == DELETED or bool(m and m.deleted_at) or bool(b and b.deleted_at)
    retention = outbox_retention

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
        retention=retention,
        now=now,
        after="accepted",
        erased=(ERASED_WITH_ACCOUNT.format(status=status) if status in (REJECTED, DELETED) else ""),
    )
    steps = [accepted, insert_published]
    if rejected:
        steps += _rejection_steps(auth, member, a, m, insert_published, retention, now)
    else:
        steps += _creation_steps(
            auth, member, batch, a, m, b, role, deleted, insert_published, retention, now
        )
    if deleted and not rejected:
        steps += _deletion_steps(auth, member, batch, a, m, b, role, retention, now)
    events = (
        a.event if a else None,
        m.event if m else None,
        (m.created_answer or m.rejected_answer) if m else None,
        a.delete_event if a else None,
    )
    trace_id = next((tid for tid in (trace_id_of(e.traceparent) for e in events if e) if tid), None)
    return SignupTrace(member_id, bool(found), role, trace_id, steps, unavailable)


def _rejection_steps(
    auth: AuthRecord | Unavailable,
    member: MemberRecord | Unavailable,
    a: AuthRecord | None,
    m: MemberRecord | None,
    insert_published: Step,
    retention: dt.timedelta,
    now: dt.datetime,
) -> list[Step]:
    """profile rejected (member), profile-rejected published, account rejected (auth)."""
    answer = m.rejected_answer if m else None
    reason = (answer.reason if answer else None) or (a.reason if a else None) or "unknown"
    because = f"reason {reason}"
    if isinstance(member, Unavailable):
        verdict = Step("profile rejected", UNKNOWN, note=why_unavailable(member))
    elif answer is not None:
        verdict = Step("profile rejected", DONE, answer.created_at, note=because)
    else:  # auth says REJECTED, member's answer row already swept by housekeeping
        verdict = Step(
            "profile rejected",
            CLEANED_UP,
            note=f"{because}; its profile-rejected outbox row already cleaned up",
        )
    verdict = Step(
        verdict.name, verdict.state, verdict.at, note=verdict.note, after=insert_published.name
    )
    published = _published_step(
        "profile-rejected published",
        member,
        answer,
        produced=True,
        retention=retention,
        now=now,
        after=verdict.name,
    )
    applied = _created_step(
        "account rejected",
        auth,
        a.status_changed_at if a and a.status == REJECTED else None,
        published,
        "profile-rejected to be published",
        PROFILE_REJECTED.consumer_group,
        PROFILE_REJECTED.name,
        now,
        note=f"reason {a.reason}" if a and a.reason else "",
    )
    return [verdict, published, applied]


def _creation_steps(
    auth: AuthRecord | Unavailable,
    member: MemberRecord | Unavailable,
    batch: BatchRecord | Unavailable,
    a: AuthRecord | None,
    m: MemberRecord | None,
    b: BatchRecord | None,
    role: str | None,
    deleted: bool,
    insert_published: Step,
    retention: dt.timedelta,
    now: dt.datetime,
) -> list[Step]:
    """profile created, profile-created published, account active; for a partner
    partner-created published and summary created."""
    gone = ERASED_WITH_MEMBER if deleted else ""
    profile_exists = bool(m and m.created_at)
    profile = _created_step(
        "profile created",
        member,
        m.created_at if m else None,
        insert_published,
        "profile-insert to be published",
        PROFILE_INSERT.consumer_group,
        PROFILE_INSERT.name,
        now,
        erased=gone,
    )
    steps = [profile]
    status = a.status if a else None
    answer_published = _published_step(
        "profile-created published",
        member,
        m.created_answer if m else None,
        produced=profile_exists or status == ACTIVE,
        retention=retention,
        now=now,
        after=profile.name,
        erased=gone,
    )
    if not profile.reached and answer_published.state == MISSING:
        answer_published = Step(
            answer_published.name,
            PENDING,
            note="profile-created not yet: waits for the profile",
            after=profile.name,
        )
    active = _created_step(
        "account active",
        auth,
        a.status_changed_at if a and status == ACTIVE else None,
        answer_published,
        "profile-created to be published",
        PROFILE_CREATED.consumer_group,
        PROFILE_CREATED.name,
        now,
        erased=ACTIVE_OVERWRITTEN if status == DELETED else "",
    )
    steps += [answer_published, active]
    if role == "PARTNER":
        partner_published = _published_step(
            "partner-created published",
            member,
            m.event if m else None,
            produced=profile_exists,
            retention=retention,
            now=now,
            after=profile.name,
            erased=gone,
        )
        if not profile.reached and partner_published.state == MISSING:
            partner_published = Step(
                "partner-created published",
                PENDING,
                note="partner-created not yet: waits for the profile",
                after=profile.name,
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
                erased=ERASED_WITH_MEMBER if b and b.deleted_at else "",
            ),
        ]
    return steps


def _deletion_steps(
    auth: AuthRecord | Unavailable,
    member: MemberRecord | Unavailable,
    batch: BatchRecord | Unavailable,
    a: AuthRecord | None,
    m: MemberRecord | None,
    b: BatchRecord | None,
    role: str | None,
    retention: dt.timedelta,
    now: dt.datetime,
) -> list[Step]:
    """account deleted (auth), profile-delete published, profile erased (member's
    tombstone); for a partner partner-deleted published and summary erased (batch's)."""
    if isinstance(auth, Unavailable):
        account = Step("account deleted", UNKNOWN, note=why_unavailable(auth))
    elif auth.status == DELETED and auth.status_changed_at is not None:
        account = Step("account deleted", DONE, auth.status_changed_at)
    else:
        account = Step("account deleted", MISSING, note="the auth database has no deletion")
    published = _published_step(
        "profile-delete published",
        auth,
        a.delete_event if a else None,
        produced=account.reached,
        retention=retention,
        now=now,
        after=account.name,
    )
    erased = _created_step(
        "profile erased",
        member,
        m.deleted_at if m else None,
        published,
        "profile-delete to be published",
        PROFILE_DELETE.consumer_group,
        PROFILE_DELETE.name,
        now,
    )
    steps = [account, published, erased]
    if role == "PARTNER":
        partner_published = _published_step(
            "partner-deleted published",
            member,
            m.delete_event if m else None,
            produced=erased.reached,
            retention=retention,
            now=now,
            after=erased.name,
        )
        if not erased.reached and partner_published.state == MISSING:
            partner_published = Step(
                partner_published.name,
                PENDING,
                note="partner-deleted not yet: waits for the profile's erasure",
                after=erased.name,
            )
        steps += [
            partner_published,
            _created_step(
                "summary erased",
                batch,
                b.deleted_at if b else None,
                partner_published,
                "partner-deleted to be published",
                PARTNER_DELETED.consumer_group,
                PARTNER_DELETED.name,
                now,
            ),
        ]
    return steps


def trace_json(trace: SignupTrace) -> dict[str, Any]:
    """The machine-readable trace: `ms_since_previous` is measured from the step named in
    `since` (the one that caused it, see interval_bases) and may be negative (see
    OVERTAKEN); `note` says why a step waits, or why its time is gone (state `erased`
    or `cleaned_up`), or a rejection's reason."""
    intervals = step_intervals(trace.steps)
    bases = interval_bases(trace.steps)
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
                "since": base.name if ms is not None and base is not None else None,
                "ce_id": step.ce_id,
                "note": step.note,
            }
            for step, ms, base in zip(trace.steps, intervals, bases, strict=True)
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
    bases = interval_bases(trace.steps)
    numbers = {step.name: n for n, step in enumerate(trace.steps, start=1)}
    previous: Step | None = None
    for n, (step, ms, base) in enumerate(zip(trace.steps, intervals, bases, strict=True), 1):
        if step.at is not None:
            delta = f"{ms:+,.1f} ms" if ms is not None else ""
            # Measured from an earlier step than the line above: say which.
            if ms is not None and base is not None and base is not previous:
                delta += f" from {numbers[base.name]}"
            ce = f"  ce_id {step.ce_id}" if step.ce_id else ""
            note = f"  {step.note}" if step.note else ""
            line = f"  {n:>2} {step.name:<26} {rfc3339(step.at):<28} {delta:>12}{ce}{note}"
            lines.append(line.rstrip())
            previous = step
        else:
            lines.append(f"  {n:>2} {step.name:<26} {step.note}")
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
