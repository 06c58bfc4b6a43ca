"""The member service's worker: a profile made (or refused) for each signup, and erased
when its account is deleted."""

from __future__ import annotations

from member_service.handlers import on_profile_delete, on_profile_insert
from member_service.models import OutboxEvent, ProcessedEvent
from shared.messaging.pipeline import PROFILE_DELETE, PROFILE_INSERT
from shared.runtime import Route, WorkerSpec

PROFILE_INSERT_WORKER = WorkerSpec(
    routes=(
        Route(PROFILE_INSERT, on_profile_insert),
        Route(PROFILE_DELETE, on_profile_delete),
    ),
    inbox=ProcessedEvent,
    outbox=OutboxEvent,
)
