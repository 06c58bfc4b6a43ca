"""The `profile-insert` worker of the member service."""

from __future__ import annotations

from member_service.handlers import on_profile_insert
from member_service.models import OutboxEvent, ProcessedEvent
from shared.messaging.pipeline import PROFILE_INSERT
from shared.runtime import Route, WorkerSpec

PROFILE_INSERT_WORKER = WorkerSpec(
    routes=(Route(PROFILE_INSERT, on_profile_insert),),
    inbox=ProcessedEvent,
    outbox=OutboxEvent,
)
