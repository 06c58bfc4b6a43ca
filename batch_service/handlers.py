"""What the batch service does with each event, inside the consumer's transaction."""

from __future__ import annotations

from batch_service.models import PartnerSummary
from shared.messaging.pipeline import PartnerCreated
from shared.messaging.processor import Summary
from shared.storage.db import UnitOfWork, utcnow

OPENED = Summary("partner summary opened")


def on_partner_created(event: PartnerCreated, uow: UnitOfWork) -> Summary:
    """Open the new partner's summary with every counter at zero."""
    uow.insert(
        PartnerSummary,
        {
            "partner_id": event.partner_id,
            "post_count": 0,
            "follower_count": 0,
            "coordinate_count": 0,
            "review_count": 0,
            "average_star": 0.0,
            "created_at": utcnow(),
        },
    )
    return OPENED
