"""Published outbox rows and old inbox rows go after their retention; nothing else does."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import MetaData, func, select, update

from member_service.models import Base, OutboxEvent, ProcessedEvent
from shared.messaging.housekeeping import Housekeeper
from shared.messaging.outbox import add_event
from shared.messaging.pipeline import PARTNER_CREATED, PartnerCreated
from shared.storage.db import Database, utcnow

pytestmark = pytest.mark.integration


def count(database: Database, model: type) -> int:
    with database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_sweep_deletes_only_what_outlived_its_retention_in_batches(
    make_database: Callable[[MetaData], Database],
) -> None:
    database = make_database(Base.metadata)
    now = utcnow()
    old, recent = now - dt.timedelta(days=3), now - dt.timedelta(minutes=5)
    published: list[tuple[str, dt.datetime | None]] = []
    with database.unit_of_work() as uow:
        for n in range(23):
            event_id = add_event(
                uow,
                OutboxEvent,
                PARTNER_CREATED,
                PartnerCreated(str(uuid.uuid4())),
                key="k",
                source="s",
            )
            published.append((event_id, old if n < 12 else recent if n < 18 else None))
        for n in range(17):
            uow.session.add(
                ProcessedEvent(
                    consumer="member-service",
                    event_id=f"e{n}",
                    topic="t",
                    processed_at=now - dt.timedelta(days=20 if n < 9 else 1),
                )
            )
        uow.flush()
        for event_id, at in published:
            uow.session.execute(
                update(OutboxEvent).where(OutboxEvent.event_id == event_id).values(published_at=at)
            )
        uow.commit()
    keeper = Housekeeper(database, OutboxEvent, ProcessedEvent, batch_size=5)

    deleted = keeper.sweep()

    assert deleted == {"outbox": 12, "inbox": 9}
    assert count(database, OutboxEvent) == 11  # 6 recent published + 5 never published
    with database.sessions() as session:
        unpublished = session.scalar(select(func.count()).where(OutboxEvent.published_at.is_(None)))
    assert unpublished == 5
    assert count(database, ProcessedEvent) == 8
    assert keeper.sweep() == {"outbox": 0, "inbox": 0}
