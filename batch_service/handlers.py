"""What the batch service does with each event, inside the consumer's transaction."""

from __future__ import annotations

from typing import Any

from batch_service.models import PartnerSummary
from shared.messaging.consumer import EventContext
from shared.storage.db import UnitOfWork, utcnow


def on_partner_created(event: dict[str, Any], uow: UnitOfWork, context: EventContext) -> None:
    """Open the new partner's summary with every counter at zero."""
    uow.insert(
        PartnerSummary,
        {
            "partner_id": event["partnerId"],
            "post_count": 0,
            "follower_count": 0,
            "coordinate_count": 0,
            "review_count": 0,
            "average_star": 0.0,
            "created_at": utcnow(),
        },
    )
