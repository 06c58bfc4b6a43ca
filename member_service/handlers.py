"""What the member service does with each event, inside the consumer's transaction."""

from __future__ import annotations

from member_service.models import FavoriteStyle, MemberRole, OutboxEvent, Partner, User
from shared.messaging.outbox import add_event
from shared.messaging.pipeline import PARTNER_CREATED, PartnerCreated, ProfileInsert
from shared.messaging.processor import Summary
from shared.storage.db import UnitOfWork, utcnow
from shared.telemetry.tracecontext import current_traceparent

SOURCE = "member-service"


def on_profile_insert(event: ProfileInsert, uow: UnitOfWork) -> Summary:
    """Create the USER or PARTNER profile and its styles; announce a new partner. Says
    what it did (role and counts only: the nickname is personal data). An event for a
    uuid that already has a profile contradicts it and is refused whole (MemberRole)."""
    profile = User if event.role == "USER" else Partner
    # First, so that a uuid that already has a profile, of either role, stops here (its
    # primary key) and the whole event is dead-lettered: one uuid, one role.
    uow.insert(MemberRole, {"uuid": event.uuid, "role": event.role})
    uow.insert(profile, {"uuid": event.uuid, "nickname": event.nickname, "created_at": utcnow()})
    for style in event.favorite_styles:
        uow.insert(FavoriteStyle, {"member_uuid": event.uuid, "style_id": style})
    if profile is Partner:
        add_event(
            uow,
            OutboxEvent,
            PARTNER_CREATED,
            PartnerCreated(partner_id=event.uuid),
            key=event.uuid,
            source=SOURCE,
            traceparent=current_traceparent(),
        )
    styles = len(event.favorite_styles)
    return Summary(
        "%s profile created (%d style%s)%s",
        event.role,
        styles,
        "" if styles == 1 else "s",
        ", partner-created queued" if profile is Partner else "",
    )
