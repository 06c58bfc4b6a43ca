"""The whole pipeline in one process: three real SQLite databases, one fake broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from argon2 import PasswordHasher, Type
from flask.testing import FlaskClient
from kafka.structs import TopicPartition

from auth_service.api import create_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base as AuthBase
from auth_service.models import OutboxEvent as AuthOutbox
from batch_service.consumer import BATCH_WORKER
from batch_service.models import Base as BatchBase
from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.models import Base as MemberBase
from member_service.models import OutboxEvent as MemberOutbox
from shared.messaging.outbox import OutboxRelay
from shared.messaging.processor import BatchReport, EventProcessor
from shared.runtime import WorkerSpec
from shared.storage.db import Database
from tests.fakes import FakeBroker
from tests.schema import create_tables

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID)


def signup_body(**overrides: Any) -> dict[str, Any]:
    """A valid signup request, with `overrides` applied."""
    import uuid

    body: dict[str, Any] = {
        "email": f"{uuid.uuid4().hex[:10]}@example.com",
        "password": "correct horse battery",
        "name": "Kim Minji",
        "phone": "+82-10-1234-5678",
        "birth": "1994-05-17",
        "gender": "FEMALE",
        "role": "USER",
        # One per call: nicknames are unique among members (the member service rejects
        # a second one), and tests sign up several members with this body.
        "nickname": f"minji-{uuid.uuid4().hex[:8]}",
        "favoriteStyles": [3, 1, 7],
    }
    body.update(overrides)
    return body


def drain(relay: OutboxRelay) -> int:
    """Relay passes until one sends nothing; how many rows they sent."""
    sent = 0
    while passed := relay.publish_pending():
        sent += passed
    return sent


class InMemoryPipeline:
    """auth API → outbox relay → fake broker → member processor → relay → batch processor."""

    def __init__(self, directory: Path) -> None:
        self.broker = FakeBroker()
        self.auth_db = self._database("auth", directory, AuthBase)
        self.member_db = self._database("member", directory, MemberBase)
        self.batch_db = self._database("batch", directory, BatchBase)
        self.auth_relay = OutboxRelay(self.auth_db, AuthOutbox, self.broker.producer)
        self.member_relay = OutboxRelay(self.member_db, MemberOutbox, self.broker.producer)
        self.app = create_app(self.auth_db, TokenIssuer("k" * 32), hasher=FAST_HASHER)
        self.client: FlaskClient = self.app.test_client()
        self.member = self._processor(PROFILE_INSERT_WORKER, self.member_db)
        self.batch = self._processor(BATCH_WORKER, self.batch_db)
        self.cursors: dict[str, int] = {}

    @staticmethod
    def _database(name: str, directory: Path, base: Any) -> Database:
        database = Database.from_url(f"sqlite:///{directory / name}.db", base.metadata)
        create_tables(database)
        return database

    def _processor(self, spec: WorkerSpec, database: Database) -> EventProcessor:
        return EventProcessor(spec.routes, database, spec.inbox, self.broker.producer())

    def deliver(self, topic: str, processor: EventProcessor) -> BatchReport:
        """Hand every record of `topic` not yet committed to `processor` as one poll, and
        commit (move the cursor to) what it reports done; a record to retry comes again
        at the next delivery."""
        log = self.broker.topics[topic]
        start = self.cursors.get(topic, 0)
        if start == len(log):
            return BatchReport()
        partition = TopicPartition(topic, 0)
        report = processor.apply({partition: log[start:]})
        progress = report.partitions[partition]
        if progress.commit_to is not None:
            self.cursors[topic] = progress.commit_to
        return report

    def run(self) -> None:
        """Move everything through: relay, member, relay, batch. Each relay is drained:
        a pass sends only the oldest waiting row of each key, and the member service
        writes two rows for a partner (profile-created, partner-created)."""
        drain(self.auth_relay)
        self.deliver("profile-insert", self.member)
        drain(self.member_relay)
        self.deliver("partner-created", self.batch)

    def close(self) -> None:
        for database in (self.auth_db, self.member_db, self.batch_db):
            database.engine.dispose()
