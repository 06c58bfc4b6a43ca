"""The auth worker: the member service's answer to each signup (the saga's end)."""

from __future__ import annotations

from auth_service.handlers import on_profile_created, on_profile_rejected
from auth_service.models import ProcessedEvent
from shared.messaging.pipeline import PROFILE_CREATED, PROFILE_REJECTED
from shared.runtime import Route, WorkerSpec

SIGNUP_ANSWER_WORKER = WorkerSpec(
    routes=(
        Route(PROFILE_CREATED, on_profile_created),
        Route(PROFILE_REJECTED, on_profile_rejected),
    ),
    inbox=ProcessedEvent,
)
