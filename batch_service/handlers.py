"""What the batch service does with its events, inside the consumer's transaction.

Every event of the worker's topics goes to `apply_batch`, all of a transaction's new
events at once (the inbox already claimed them, so each is applied exactly once):

- `partner-created` opens the partner's summary, counting what already waits for it;
- `partner-deleted` drops the summary and everything counted for it, and leaves a
  tombstone;
- activity (`post-created`, `post-deleted`, `follow-created`, `follow-deleted`,
  `coordinate-closed`, `review-created`) is folded into one change per thing counted
  (a row of partner_activity) and one counter update per partner: a partner with 300
  events in a poll costs one row update, not 300.

Exact counts whatever the order. The topics are not ordered between them (a
`follow-deleted` may come before its `follow-created`, a partner's activity before its
`partner-created`), so nothing here depends on order:

- each thing counted keeps `net` = creations applied - deletions applied, and counts
  iff net >= 1. Adding commutes, so every arrival order ends with the same counters. A
  deletion of something never counted leaves net < 0: an orphan, recorded and reported
  (`status`), never taken below zero; a creation arriving later brings it back to 0;
- activity for a partner with no summary yet waits: its things are in partner_activity
  already, and `partner-created` counts them into the summary it opens;
- activity for a deleted partner (its tombstone) is dropped, and counted on the
  tombstone. uuids are never reused, and a partner is only created, then deleted.

A summary opening on one worker while another counts activity for the same partner
must not miss that activity. `partner-created` and `partner-deleted` take the partner's
lock (an advisory lock on PostgreSQL, until commit); activity takes no lock while its
partner's summary exists (`UPDATE x = x + delta` waits on the row itself), and takes
the lock only for a partner it finds without one, then looks again: by then a summary
opened meanwhile is committed, and the activity is added to it. (Locking every partner
of a poll would take a thousand locks per transaction, which the lock table of a
default PostgreSQL holds only a few workers' worth of.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, case, delete, func, select, text, update

from batch_service.models import (
    COORDINATE,
    FOLLOW,
    POST,
    REVIEW,
    DeletedPartner,
    PartnerActivity,
    PartnerSummary,
    WaitingActivity,
)
from shared.messaging.pipeline import (
    CoordinateClosed,
    FollowCreated,
    FollowDeleted,
    PartnerCreated,
    PartnerDeleted,
    PostCreated,
    PostDeleted,
    ReviewCreated,
)
from shared.messaging.processor import Summary
from shared.storage.db import UnitOfWork, insert_or_skip, utcnow

ALREADY_DELETED = Summary("partner already deleted: no summary opened")

# Which counter each kind of thing counts.
COUNTER_OF = {
    POST: "post_count",
    FOLLOW: "follower_count",
    COORDINATE: "coordinate_count",
    REVIEW: "review_count",
}

Item = tuple[str, str, str]  # (partner id, kind, item id): a row of partner_activity


def item_of(event: Any) -> tuple[Item, int, int | None]:
    """The thing an activity event counts, what it adds to its net (+1 or -1) and its
    star (reviews only)."""
    if isinstance(event, PostCreated | PostDeleted):
        return (event.partner_id, POST, event.post_id), _sign(event), None
    if isinstance(event, FollowCreated | FollowDeleted):
        return (event.partner_id, FOLLOW, event.follower_id), _sign(event), None
    if isinstance(event, CoordinateClosed):
        return (event.partner_id, COORDINATE, event.request_id), 1, None
    if isinstance(event, ReviewCreated):
        return (event.partner_id, REVIEW, event.review_id), 1, event.star
    raise TypeError(f"not an activity event: {type(event).__name__}")


def _sign(event: Any) -> int:
    return -1 if isinstance(event, PostDeleted | FollowDeleted) else 1


def apply_batch(events: Sequence[Any], uow: UnitOfWork) -> list[Summary | None]:
    """Apply a transaction's new events of the batch worker (see the module's docstring);
    one Summary per event, in order."""
    uow.lock_all(
        event.partner_id for event in events if isinstance(event, PartnerCreated | PartnerDeleted)
    )
    summaries: list[Summary | None] = []
    activity: list[tuple[int, Any]] = []
    for index, event in enumerate(events):
        if isinstance(event, PartnerCreated):
            summaries.append(on_partner_created(event, uow))
        elif isinstance(event, PartnerDeleted):
            summaries.append(on_partner_deleted(event, uow))
        else:
            summaries.append(None)
            activity.append((index, event))
    if activity:
        said = apply_activity([event for _, event in activity], uow)
        for (index, _), summary in zip(activity, said, strict=True):
            summaries[index] = summary
    return summaries


def on_partner_created(event: PartnerCreated, uow: UnitOfWork) -> Summary:
    """Open the new partner's summary, counting what waited for it; nothing for a
    partner already deleted (its tombstone)."""
    partner = event.partner_id
    uow.lock(partner)
    session = uow.session
    deleted = session.scalar(
        select(DeletedPartner.partner_id).where(DeletedPartner.partner_id == partner)
    )
    if deleted is not None:
        return ALREADY_DELETED
    counted = counted_for(uow, partner)
    waited = session.scalar(
        delete(WaitingActivity)
        .where(WaitingActivity.partner_id == partner)
        .returning(WaitingActivity.events)
    )
    uow.insert(PartnerSummary, {"partner_id": partner, "created_at": utcnow(), **counted})
    if waited:
        return Summary("partner summary opened, counting %d waiting events", waited)
    return Summary("partner summary opened")


def counted_for(uow: UnitOfWork, partner: str) -> dict[str, int]:
    """The partner's counters as partner_activity says (what counts: net >= 1)."""
    counts = uow.session.execute(
        select(
            PartnerActivity.kind,
            func.sum(case((PartnerActivity.net >= 1, 1), else_=0)),
            func.sum(
                case((PartnerActivity.net >= 1, func.coalesce(PartnerActivity.star, 0)), else_=0)
            ),
        )
        .where(PartnerActivity.partner_id == partner)
        .group_by(PartnerActivity.kind)
    ).all()
    counted = dict.fromkeys(COUNTER_OF.values(), 0) | {"star_sum": 0}
    for kind, number, stars in counts:
        counted[COUNTER_OF[kind]] = int(number or 0)
        if kind == REVIEW:
            counted["star_sum"] = int(stars or 0)
    return counted


def on_partner_deleted(event: PartnerDeleted, uow: UnitOfWork) -> Summary:
    """Drop the partner's summary and everything counted or waiting for it, and leave its
    tombstone; a second deletion is a no-op, and the deletion of a partner never seen
    leaves only the tombstone."""
    partner = event.partner_id
    uow.lock(partner)
    session = uow.session
    tombstoned = session.execute(
        insert_or_skip(session)(DeletedPartner)
        .values(partner_id=partner, deleted_at=utcnow(), dropped_events=0)
        .on_conflict_do_nothing(index_elements=[DeletedPartner.partner_id])
        .returning(DeletedPartner.partner_id)
    ).scalar()
    if tombstoned is None:
        return Summary("partner already deleted: nothing to do")
    # A summary staged earlier in this transaction (its creation, in the same batch) must
    # be in the table for the delete to reach it.
    uow.flush()
    dropped = _rowcount(
        session.execute(delete(PartnerSummary).where(PartnerSummary.partner_id == partner))
    )
    session.execute(delete(PartnerActivity).where(PartnerActivity.partner_id == partner))
    waited = session.scalar(
        delete(WaitingActivity)
        .where(WaitingActivity.partner_id == partner)
        .returning(WaitingActivity.events)
    )
    if waited:
        session.execute(
            update(DeletedPartner)
            .where(DeletedPartner.partner_id == partner)
            .values(dropped_events=DeletedPartner.dropped_events + waited)
        )
    return Summary(
        "partner deleted (%s%s)",
        "summary dropped" if dropped else "no summary",
        f", {waited} waiting events dropped" if waited else "",
    )


@dataclass
class _Delta:
    """What one transaction's activity changes in one partner's summary."""

    events: int = 0
    counters: Counter[str] = field(default_factory=Counter)


def apply_activity(events: Sequence[Any], uow: UnitOfWork) -> list[Summary]:
    """Fold the events into one net change per thing counted, write those in one
    statement, and apply one counter change per partner; what has no summary waits or,
    for a deleted partner, is dropped. One Summary per event."""
    uow.flush()  # summaries opened earlier in this transaction are updated below
    session = uow.session
    nets: dict[Item, int] = {}
    stars: dict[Item, int | None] = {}
    per_partner: dict[str, _Delta] = {}
    items: list[Item] = []
    for event in events:
        item, sign, star = item_of(event)
        items.append(item)
        nets[item] = nets.get(item, 0) + sign
        stars.setdefault(item, star)  # a review's first star is the one kept
        delta = per_partner.get(item[0])
        if delta is None:
            delta = per_partner[item[0]] = _Delta()
        delta.events += 1
    orphans: set[Item] = set()
    for item, before, after, star in _add_nets(uow, nets, stars):
        change = int(after >= 1) - int(before >= 1)
        partner, kind, _ = item
        if change:
            counters = per_partner[partner].counters
            counters[COUNTER_OF[kind]] += change
            if kind == REVIEW:
                counters["star_sum"] += change * (star or 0)
        if after < 0:
            orphans.add(item)
    changes = {p: d.counters for p, d in per_partner.items()}
    existing = _add_to_summaries(uow, changes)
    missing = [partner for partner in per_partner if partner not in existing]
    if missing:
        # No summary, as far as this transaction can see: one may be opening on another
        # worker right now, counting partner_activity without the rows written above
        # (not committed yet). Its partner-created holds the partner's lock until it
        # commits: take the locks, then look again.
        uow.lock_all(missing)
        existing |= _add_to_summaries(uow, {p: changes[p] for p in missing})
        missing = [partner for partner in missing if partner not in existing]
    deleted = _deleted(uow, missing)
    waiting = {p: per_partner[p].events for p in missing if p not in deleted}
    dropped = {p: per_partner[p].events for p in missing if p in deleted}
    if waiting:
        _wait(uow, waiting)
    if dropped:
        session.execute(delete(PartnerActivity).where(PartnerActivity.partner_id.in_(dropped)))
        session.connection().execute(
            update(DeletedPartner)
            .where(DeletedPartner.partner_id == bindparam("partner"))
            .values(dropped_events=DeletedPartner.dropped_events + bindparam("n")),
            [{"partner": p, "n": n} for p, n in dropped.items()],
        )
    return [_said(item, existing, waiting, orphans) for item in items]


_COUNTED = Summary("counted")
_WAITING = Summary("waiting for partner-created")
_DROPPED = Summary("dropped: partner deleted")
_ORPHAN = Summary("deletion of something never counted: recorded as an orphan")


def _said(item: Item, existing: set[str], waiting: dict[str, int], orphans: set[Item]) -> Summary:
    if item[0] in existing:
        return _ORPHAN if item in orphans else _COUNTED
    return _WAITING if item[0] in waiting else _DROPPED


def _add_nets(
    uow: UnitOfWork, nets: dict[Item, int], stars: dict[Item, int | None]
) -> list[tuple[Item, int, int, int | None]]:
    """Add each item's net change in one statement; (item, net before, net after, star)
    for each. A change of 0 (created and deleted in this very batch) changes nothing."""
    changed_items = [(item, net) for item, net in nets.items() if net]
    if not changed_items:
        return []
    connection = uow.session.connection()
    if connection.dialect.name == "postgresql":
        result = connection.execute(
            _ADD_NETS_PG,
            {
                "partner_id": [item[0] for item, _ in changed_items],
                "kind": [item[1] for item, _ in changed_items],
                "item_id": [item[2] for item, _ in changed_items],
                "net": [net for _, net in changed_items],
                "star": [stars[item] for item, _ in changed_items],
            },
        )
    else:
        rows = [
            {"partner_id": p, "kind": k, "item_id": i, "net": net, "star": stars[(p, k, i)]}
            for (p, k, i), net in changed_items
        ]
        result = _add_nets_generic(uow, rows)
    changed = []
    for partner, kind, item_id, after, star in result:
        item = (partner, kind, item_id)
        changed.append((item, after - nets[item], after, star))
    return changed


# PostgreSQL: the rows travel as arrays into a statement of constant text (parsed and
# planned once), not as a VALUES list of thousands of parameters.
_ADD_NETS_PG = text(
    "INSERT INTO partner_activity (partner_id, kind, item_id, net, star) "
    "SELECT * FROM unnest(CAST(:partner_id AS text[]), CAST(:kind AS text[]), "
    "CAST(:item_id AS text[]), CAST(:net AS integer[]), CAST(:star AS smallint[])) "
    "ON CONFLICT (partner_id, kind, item_id) "
    "DO UPDATE SET net = partner_activity.net + excluded.net "
    "RETURNING partner_id, kind, item_id, net, star"
)


def _add_nets_generic(uow: UnitOfWork, rows: list[dict[str, Any]]) -> Any:
    """The same upsert on SQLite: one INSERT .. ON CONFLICT for all rows (insertmanyvalues)."""
    insert = insert_or_skip(uow.session)
    table = PartnerActivity.__table__
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.partner_id, table.c.kind, table.c.item_id],
        set_={"net": table.c.net + statement.excluded.net},
    ).returning(table.c.partner_id, table.c.kind, table.c.item_id, table.c.net, table.c.star)
    return uow.session.connection().execute(statement, rows)


def _deleted(uow: UnitOfWork, partners: list[str]) -> set[str]:
    if not partners:
        return set()
    return set(
        uow.session.scalars(
            select(DeletedPartner.partner_id).where(DeletedPartner.partner_id.in_(partners))
        )
    )


_COLUMNS = ("post_count", "follower_count", "coordinate_count", "review_count", "star_sum")

# One statement for every partner of the batch on PostgreSQL: the changes travel as
# arrays, one row update per partner however many events it had; it answers which
# partners have a summary.
_ADD_TO_SUMMARIES_PG = text(
    "UPDATE partner_summaries AS s SET "
    + ", ".join(f"{c} = s.{c} + d.{c}" for c in _COLUMNS)
    + " FROM unnest(CAST(:partner_id AS text[]), "
    + ", ".join(f"CAST(:{c} AS bigint[])" for c in _COLUMNS)
    + ") AS d(partner_id, "
    + ", ".join(_COLUMNS)
    + ") WHERE s.partner_id = d.partner_id RETURNING s.partner_id"
)


def _add_to_summaries(uow: UnitOfWork, changes: dict[str, Counter[str]]) -> set[str]:
    """Add each partner's counter changes to its summary, one row update per partner;
    answer the partners that have a summary (the others' events wait or are dropped)."""
    partners = sorted(changes)
    connection = uow.session.connection()
    if connection.dialect.name == "postgresql":
        # A partner whose changes are all 0 (only duplicates of things counted) is
        # updated too, by nothing: that is what says whether its summary exists.
        arrays: dict[str, list[Any]] = {"partner_id": partners}
        for column in _COLUMNS:
            arrays[column] = [changes[p][column] for p in partners]
        return set(connection.execute(_ADD_TO_SUMMARIES_PG, arrays).scalars())
    existing = set(
        uow.session.scalars(
            select(PartnerSummary.partner_id).where(PartnerSummary.partner_id.in_(partners))
        )
    )
    table = cast(Table, PartnerSummary.__table__)
    changed = [p for p in partners if p in existing and changes[p]]
    if changed:
        connection.execute(
            update(table)
            .where(table.c.partner_id == bindparam("partner"))
            .values({c: table.c[c] + bindparam(f"d_{c}") for c in _COLUMNS}),
            [{"partner": p} | {f"d_{c}": changes[p][c] for c in _COLUMNS} for p in changed],
        )
    return existing


def _wait(uow: UnitOfWork, waiting: dict[str, int]) -> None:
    """Count events waiting for their partner's summary, one row per partner."""
    insert = insert_or_skip(uow.session)
    table = WaitingActivity.__table__
    statement = insert(table)
    now = utcnow()
    uow.session.connection().execute(
        statement.on_conflict_do_update(
            index_elements=[table.c.partner_id],
            set_={"events": table.c.events + statement.excluded.events},
        ),
        [{"partner_id": p, "events": n, "since": now} for p, n in waiting.items()],
    )


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount
