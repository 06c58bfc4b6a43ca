"""What the batch service does with each event, inside the consumer's transaction.

`partner-created` opens a partner's summary, `partner-deleted` drops it and leaves a
tombstone. They come from two topics, which Kafka does not order between them, so a
deletion may arrive first: the tombstone makes it win whatever the order (uuids are
never reused, and a partner is only created, then deleted).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select

from batch_service.models import DeletedPartner, PartnerSummary
from shared.messaging.pipeline import PartnerCreated, PartnerDeleted
from shared.messaging.processor import Summary
from shared.storage.db import UnitOfWork, insert_or_skip, utcnow

OPENED = Summary("partner summary opened")
ALREADY_DELETED = Summary("partner already deleted: no summary opened")


def on_partner_created(event: PartnerCreated, uow: UnitOfWork) -> Summary:
    """Open the new partner's summary with every counter at zero; nothing for a partner
    already deleted (its tombstone)."""
    uow.lock(event.partner_id)
    deleted = uow.session.scalar(
        select(DeletedPartner.partner_id).where(DeletedPartner.partner_id == event.partner_id)
    )
    if deleted is not None:
        return ALREADY_DELETED
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


def on_partner_deleted(event: PartnerDeleted, uow: UnitOfWork) -> Summary:
    """Drop the partner's summary and leave its tombstone; a second deletion is a no-op,
    and the deletion of a partner never seen leaves only the tombstone."""
    uow.lock(event.partner_id)
    tombstoned = uow.session.execute(
        insert_or_skip(uow.session)(DeletedPartner)
        .values(partner_id=event.partner_id, deleted_at=utcnow())
        .on_conflict_do_nothing(index_elements=[DeletedPartner.partner_id])
        .returning(DeletedPartner.partner_id)
    ).scalar()
    if tombstoned is None:
        return Summary("partner already deleted: nothing to do")
    # A summary staged earlier in this transaction (its creation, in the same batch) must
    # be in the table for the delete to reach it.
    uow.flush()
    dropped = cast(
        CursorResult[Any],
        uow.session.execute(
            delete(PartnerSummary).where(PartnerSummary.partner_id == event.partner_id)
        ),
    ).rowcount
    return Summary("partner deleted (%s)", "summary dropped" if dropped else "no summary")
