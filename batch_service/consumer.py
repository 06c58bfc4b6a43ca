"""The batch service's worker: a partner's summary opened, and dropped when the partner
deletes their account."""

from __future__ import annotations

from batch_service.handlers import on_partner_created, on_partner_deleted
from batch_service.models import ProcessedEvent
from shared.messaging.pipeline import PARTNER_CREATED, PARTNER_DELETED
from shared.runtime import Route, WorkerSpec

PARTNER_CREATED_WORKER = WorkerSpec(
    routes=(
        Route(PARTNER_CREATED, on_partner_created),
        Route(PARTNER_DELETED, on_partner_deleted),
    ),
    inbox=ProcessedEvent,
)
