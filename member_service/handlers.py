"""What the member service does with each event, inside the consumer's transaction."""

from __future__ import annotations

from typing import Any

from member_service.models import FavoriteStyle, OutboxEvent, Partner, User
from shared.messaging.consumer import EventContext
from shared.messaging.outbox import add_event
from shared.messaging.pipeline import PARTNER_CREATED
from shared.storage.db import UnitOfWork, utcnow
from shared.telemetry.tracecontext import current_traceparent

SOURCE = "member-service"


def on_profile_insert(event: dict[str, Any], uow: UnitOfWork, context: EventContext) -> None:
    """Create the USER or PARTNER profile and its styles; announce a new partner."""
    member_id = event["uuid"]
    profile = User if event["role"] == "USER" else Partner
    uow.insert(profile, {"uuid": member_id, "nickname": event["nickname"], "created_at": utcnow()})
    for style in event["favoriteStyles"]:
        uow.insert(FavoriteStyle, {"member_uuid": member_id, "style_id": style})
    if profile is Partner:
        add_event(
            uow,
            OutboxEvent,
            topic=PARTNER_CREATED.name,
            key=member_id,
            payload={"partnerId": member_id},
            source=SOURCE,
            traceparent=current_traceparent(),
        )
