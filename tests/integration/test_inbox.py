"""The inbox claims each event once per consumer, also when two workers race for it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import MetaData

from devtools.postgres import PostgresServer
from member_service.models import Base, ProcessedEvent
from shared.messaging.inbox import claim_events
from shared.storage.db import Database
from tests.schema import create_tables

pytestmark = pytest.mark.integration


def test_claims_only_events_not_yet_recorded(
    make_database: Callable[[MetaData], Database],
) -> None:
    database = make_database(Base.metadata)
    with database.unit_of_work() as uow:
        first = claim_events(uow.session, ProcessedEvent, "g", [("a", "t"), ("b", "t")])
        uow.commit()
    with database.unit_of_work() as uow:
        second = claim_events(uow.session, ProcessedEvent, "g", [("b", "t"), ("c", "t")])
        other_group = claim_events(uow.session, ProcessedEvent, "h", [("a", "t")])
        uow.commit()

    assert first == {"a", "b"}
    assert second == {"c"}
    assert other_group == {"a"}


def test_two_workers_racing_for_one_event_claim_it_once(postgres: PostgresServer) -> None:
    """On PostgreSQL (SQLite has a single writer, so there is no race to lose)."""
    database = Database.from_url(postgres.create_database(), Base.metadata)
    create_tables(database)
    claimed: list[set[str]] = []
    first_claimed = threading.Event()

    def second_worker() -> None:
        first_claimed.wait(5)
        with database.unit_of_work() as uow:
            # Blocks on the first worker's uncommitted row, then sees it committed.
            claimed.append(claim_events(uow.session, ProcessedEvent, "g", [("e", "t")]))
            uow.commit()

    racer = threading.Thread(target=second_worker)
    racer.start()
    with database.unit_of_work() as uow:
        claimed.append(claim_events(uow.session, ProcessedEvent, "g", [("e", "t")]))
        first_claimed.set()
        racer.join(0.5)
        assert racer.is_alive()  # still waiting for this transaction
        uow.commit()
    racer.join(5)
    database.engine.dispose()

    assert claimed == [{"e"}, set()]
