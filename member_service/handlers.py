"""What the member service does with each event, inside the consumer's transaction.

A member's life here: `profile-insert` makes its profile (or refuses it, when another
member has its nickname) and answers auth with `profile-created` or `profile-rejected`;
`profile-delete` erases everything of it and leaves a tombstone. The two come from
different topics, which Kafka does not order between them, so a deletion may arrive
first: the tombstone makes the deletion win whatever the order (uuids are never
reused, and a member only goes insert, then delete).

Summaries never carry the nickname (personal data): roles, counts and reasons only.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select

from member_service.models import (
    DeletedMember,
    FavoriteStyle,
    MemberRole,
    OutboxEvent,
    Partner,
    User,
    nickname_key,
)
from shared.messaging.outbox import add_event
from shared.messaging.pipeline import (
    PARTNER_CREATED,
    PARTNER_DELETED,
    PROFILE_CREATED,
    PROFILE_REJECTED,
    E,
    PartnerCreated,
    PartnerDeleted,
    ProfileCreated,
    ProfileDelete,
    ProfileInsert,
    ProfileRejected,
    Topic,
)
from shared.messaging.processor import Summary
from shared.storage.db import UnitOfWork, insert_or_skip, utcnow
from shared.telemetry.tracecontext import current_traceparent

SOURCE = "member-service"
NICKNAME_TAKEN = "nickname_taken"
ALREADY_DELETED = Summary("member already deleted: no profile created, no answer")


def _deleted(uow: UnitOfWork, statement: Any) -> int:
    """Run a DELETE; how many rows it removed."""
    return cast(CursorResult[Any], uow.session.execute(statement)).rowcount


def _answer(uow: UnitOfWork, topic: Topic[E], event: E, member_id: str) -> None:
    add_event(
        uow,
        OutboxEvent,
        topic,
        event,
        key=member_id,
        source=SOURCE,
        traceparent=current_traceparent(),
    )


def on_profile_insert(event: ProfileInsert, uow: UnitOfWork) -> Summary:
    """Create the USER or PARTNER profile and its styles and answer `profile-created`
    (and announce a new partner), or, when another member holds the nickname (whatever
    its case or width), store nothing and answer `profile-rejected` (nickname_taken).
    A deleted member (its tombstone) gets nothing and no answer. An event for a uuid
    that already has a profile contradicts it and is refused whole (MemberRole's
    primary key), to be dead-lettered.

    The nickname is claimed first, by inserting the member's role row at once with ON
    CONFLICT DO NOTHING on the nickname index: if another transaction holds the same
    key uncommitted, PostgreSQL waits for it, then inserts (it rolled back) or inserts
    nothing (it committed). So of any number of members asking for one nickname, in one
    batch or in concurrent workers, exactly one gets it and the others are rejected;
    none fails, so none is dead-lettered for a mere clash."""
    uow.lock(event.uuid)
    deleted = uow.session.scalar(select(DeletedMember.uuid).where(DeletedMember.uuid == event.uuid))
    if deleted is not None:
        return ALREADY_DELETED
    key = nickname_key(event.nickname)
    role_row = {"uuid": event.uuid, "role": event.role, "nickname_key": key}
    claimed = uow.session.execute(
        insert_or_skip(uow.session)(MemberRole)
        .values(role_row)
        .on_conflict_do_nothing(index_elements=[MemberRole.nickname_key])
        .returning(MemberRole.uuid)
    ).scalar()
    if claimed is None:
        has_profile = uow.session.scalar(
            select(MemberRole.uuid).where(MemberRole.uuid == event.uuid)
        )
        if has_profile is not None:
            # A second profile for this uuid (it holds the key itself, or has another
            # role): the primary key refuses it, as every contradiction, and the
            # IntegrityError has the event dead-lettered. Never a rejection: auth would
            # erase an account whose profile exists.
            uow.session.execute(insert_or_skip(uow.session)(MemberRole).values(role_row))
        _answer(
            uow,
            PROFILE_REJECTED,
            ProfileRejected(uuid=event.uuid, reason=NICKNAME_TAKEN),
            event.uuid,
        )
        return Summary(
            "%s profile rejected (%s), profile-rejected queued", event.role, NICKNAME_TAKEN
        )
    profile = User if event.role == "USER" else Partner
    uow.insert(profile, {"uuid": event.uuid, "nickname": event.nickname, "created_at": utcnow()})
    for style in event.favorite_styles:
        uow.insert(FavoriteStyle, {"member_uuid": event.uuid, "style_id": style})
    _answer(uow, PROFILE_CREATED, ProfileCreated(uuid=event.uuid), event.uuid)
    if profile is Partner:
        _answer(uow, PARTNER_CREATED, PartnerCreated(partner_id=event.uuid), event.uuid)
    styles = len(event.favorite_styles)
    return Summary(
        "%s profile created (%d style%s)%s",
        event.role,
        styles,
        "" if styles == 1 else "s",
        ", partner-created queued" if profile is Partner else "",
    )


def on_profile_delete(event: ProfileDelete, uow: UnitOfWork) -> Summary:
    """Erase the member: its profile, styles and role row (which frees its nickname),
    and every outbox row keyed by it, published or not (nothing of the member is left
    but its tombstone, and the inbox rows of the events that made and erased it); a
    partner's deletion is announced (`partner-deleted`) for the batch service. The
    tombstone makes a later `profile-insert` for the uuid create nothing, and a second
    deletion a no-op. A deletion of a member never seen leaves only the tombstone."""
    uow.lock(event.uuid)
    tombstoned = uow.session.execute(
        insert_or_skip(uow.session)(DeletedMember)
        .values(uuid=event.uuid, deleted_at=utcnow())
        .on_conflict_do_nothing(index_elements=[DeletedMember.uuid])
        .returning(DeletedMember.uuid)
    ).scalar()
    if tombstoned is None:
        return Summary("member already deleted: nothing to do")
    # Rows staged earlier in this transaction (this member's insert, in the same batch)
    # must be in the tables for the deletes below to reach them.
    uow.flush()
    role = uow.session.scalar(select(MemberRole.role).where(MemberRole.uuid == event.uuid))
    styles = _deleted(uow, delete(FavoriteStyle).where(FavoriteStyle.member_uuid == event.uuid))
    for model in (User, Partner, MemberRole):
        uow.session.execute(delete(model).where(model.uuid == event.uuid))
    purged = _deleted(uow, delete(OutboxEvent).where(OutboxEvent.key == event.uuid))
    # After the purge, which must not take it.
    if role == "PARTNER":
        _answer(uow, PARTNER_DELETED, PartnerDeleted(partner_id=event.uuid), event.uuid)
    return Summary(
        "member deleted (%s, %d style%s, %d outbox row%s purged)%s",
        f"{role} profile" if role else "no profile",
        styles,
        "" if styles == 1 else "s",
        purged,
        "" if purged == 1 else "s",
        ", partner-deleted queued" if role == "PARTNER" else "",
    )
