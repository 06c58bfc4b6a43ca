"""The `partner-created` worker of the batch service."""

from __future__ import annotations

from batch_service.handlers import on_partner_created
from batch_service.models import ProcessedEvent
from shared.messaging.pipeline import PARTNER_CREATED
from shared.runtime import Route, WorkerSpec

PARTNER_CREATED_WORKER = WorkerSpec(
    routes=(Route(PARTNER_CREATED, on_partner_created),), inbox=ProcessedEvent
)
