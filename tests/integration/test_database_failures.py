"""A database that is unwell is waited for: its errors never dead-letter a good event."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.models import Base
from shared.messaging.kafka import Message
from shared.messaging.processor import EventProcessor
from shared.storage.db import Database
from tests.fakes import FakeBroker
from tests.processing import MustComeAgain, process_one
from tests.schema import create_tables

pytestmark = pytest.mark.integration

EVENT = (
    b'{"uuid": "6a2f41a0-3b1e-4c3d-9f5a-1b2c3d4e5f60", "role": "USER", "nickname": "ro",'
    b' "favoriteStyles": [1]}'
)


def test_read_only_standby_after_failover_is_retried_never_dead_lettered(postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database()
    database = Database.from_url(url, Base.metadata)
    create_tables(database)
    database.engine.dispose()
    name = url.rsplit("/", 1)[1]
    admin = create_engine(postgres.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    admin.dispose()
    broker = FakeBroker()
    spec = PROFILE_INSERT_WORKER
    processor = EventProcessor(spec.routes, database, spec.inbox, broker.producer())
    record = Message("profile-insert", b"k", EVENT, [("ce_id", b"ro-1")], 0, 0)

    for attempt in (1, 5, 50):
        with pytest.raises(MustComeAgain):
            process_one(processor, record, attempt)

    assert broker.topics["profile-insert.DLT"] == []
    database.engine.dispose()
