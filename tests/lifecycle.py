"""Helpers for tests of a member's life in the member and batch services (issue 17):
records of the lifecycle topics, the two services' processors on their real handlers,
and what is left of a member in their tables."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import MetaData, String, Text, func, or_, select

from batch_service.consumer import BATCH_WORKER
from member_service.handlers import on_profile_delete, on_profile_insert
from member_service.models import OutboxEvent
from member_service.models import ProcessedEvent as MemberInbox
from shared.messaging.kafka import Message
from shared.messaging.pipeline import (
    PARTNER_CREATED,
    PARTNER_DELETED,
    PROFILE_DELETE,
    PROFILE_INSERT,
)
from shared.messaging.processor import EventProcessor, Route
from shared.storage.db import Database
from tests.fakes import FakeBroker

_offsets = itertools.count()


def uuid_of(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


def record(topic: str, document: dict[str, Any], *, partition: int = 0) -> Message:
    """A record of `topic` with its own ce_id, keyed as the pipeline keys it."""
    key = document.get("uuid") or document.get("partnerId")
    offset = next(_offsets)
    return Message(
        topic,
        key.encode() if key else None,
        json.dumps(document).encode(),
        [("ce_id", f"{topic}-{offset}".encode())],
        partition=partition,
        offset=offset,
    )


def insert_record(
    member_id: str,
    nickname: str,
    role: str = "USER",
    styles: Sequence[int] = (1, 2),
    *,
    partition: int = 0,
) -> Message:
    document = {
        "uuid": member_id,
        "role": role,
        "nickname": nickname,
        "favoriteStyles": list(styles),
    }
    return record(PROFILE_INSERT.name, document, partition=partition)


def delete_record(member_id: str) -> Message:
    return record(PROFILE_DELETE.name, {"uuid": member_id})


def partner_created_record(partner_id: str) -> Message:
    return record(PARTNER_CREATED.name, {"partnerId": partner_id})


def partner_deleted_record(partner_id: str) -> Message:
    return record(PARTNER_DELETED.name, {"partnerId": partner_id})


def member_processor(database: Database, broker: FakeBroker, **options: Any) -> EventProcessor:
    """The member worker's processor: profile-insert and profile-delete, real handlers."""
    routes: tuple[Route[Any], ...] = (
        Route(PROFILE_INSERT, on_profile_insert),
        Route(PROFILE_DELETE, on_profile_delete),
    )
    return EventProcessor(routes, database, MemberInbox, broker.producer(), **options)


def batch_processor(database: Database, broker: FakeBroker, **options: Any) -> EventProcessor:
    """The batch worker's processor: every topic it reads, its real batch handler."""
    return EventProcessor(
        BATCH_WORKER.routes, database, BATCH_WORKER.inbox, broker.producer(), **options
    )


def outbox(database: Database, key: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(topic, key, payload) of the member outbox's rows (of `key`), in id order."""
    query = select(OutboxEvent.topic, OutboxEvent.key, OutboxEvent.payload).order_by(OutboxEvent.id)
    if key is not None:
        query = query.where(OutboxEvent.key == key)
    with database.sessions() as session:
        return [(topic, k, json.loads(payload)) for topic, k, payload in session.execute(query)]


def rows_holding(
    database: Database, metadata: MetaData, text: str, *, except_tables: Iterable[str] = ()
) -> list[tuple[str, str, Any]]:
    """(table, column, value) of every text column, in every table of `metadata` but
    `except_tables`, whose value contains `text`, case-insensitively."""
    found = []
    skipped = set(except_tables)
    pattern = f"%{text.lower()}%"
    with database.sessions() as session:
        for table in metadata.sorted_tables:
            if table.name in skipped:
                continue
            columns = [c for c in table.columns if isinstance(c.type, String | Text)]
            if not columns:
                continue
            query = select(*columns).where(or_(*(func.lower(c).like(pattern) for c in columns)))
            for row in session.execute(query):
                for column, value in zip(columns, row, strict=True):
                    if value is not None and text.lower() in str(value).lower():
                        found.append((table.name, column.name, value))
    return found
