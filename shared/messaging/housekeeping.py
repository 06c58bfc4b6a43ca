"""Housekeeping: published outbox rows, old inbox rows and the rows of other expiring
tables (idempotency keys) are deleted after their retention, in small batches, each its
own short transaction, skipping rows another transaction holds, so the signup and
consume paths never wait on it.

The inbox must outlive any possible redelivery: keep it longer than the topic's
retention (Kafka's default is 7 days; the default here is 14), or a very late
redelivery would be applied again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, tuple_

from shared.messaging.inbox import InboxRecord
from shared.messaging.outbox import OutboxRecord
from shared.storage.db import Database, utcnow

log = logging.getLogger(__name__)

DEFAULT_OUTBOX_RETENTION = dt.timedelta(hours=24)
DEFAULT_INBOX_RETENTION = dt.timedelta(days=14)


@dataclass(frozen=True)
class Expiring:
    """Another table whose rows go `retention` after `column` (e.g. a service's
    idempotency keys); `key` is its primary key column."""

    model: Any
    key: Any
    column: Any
    retention: dt.timedelta


@dataclass
class Housekeeper:
    """Deletes what has outlived its retention, `batch_size` rows per transaction."""

    database: Database
    outbox: type[OutboxRecord] | None = None
    inbox: type[InboxRecord] | None = None
    outbox_retention: dt.timedelta = DEFAULT_OUTBOX_RETENTION
    inbox_retention: dt.timedelta = DEFAULT_INBOX_RETENTION
    batch_size: int = 500
    interval: float = 300.0
    expiring: tuple[Expiring, ...] = ()

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> dict[str, int]:
        """Delete everything past retention now; how many rows of each table went."""
        deleted = {"outbox": 0, "inbox": 0}
        now = utcnow()
        if self.outbox is not None:
            model = self.outbox
            cutoff = now - self.outbox_retention
            deleted["outbox"] = self._delete_in_batches(
                model, [model.id], model.published_at.is_not(None) & (model.published_at < cutoff)
            )
        if self.inbox is not None:
            inbox = self.inbox
            cutoff = now - self.inbox_retention
            deleted["inbox"] = self._delete_in_batches(
                inbox, [inbox.consumer, inbox.event_id], inbox.processed_at < cutoff
            )
        for table in self.expiring:
            deleted[table.model.__tablename__] = self._delete_in_batches(
                table.model, [table.key], table.column < now - table.retention
            )
        return deleted

    def _delete_in_batches(self, model: Any, keys: list[Any], condition: Any) -> int:
        total = 0
        row_key = tuple_(*keys) if len(keys) > 1 else keys[0]
        while not self._stop.is_set():
            with self.database.sessions() as session, session.begin():
                query = select(*keys).where(condition).limit(self.batch_size)
                if self.database.engine.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)  # never wait on the relay
                found = [tuple(row) if len(keys) > 1 else row[0] for row in session.execute(query)]
                if found:
                    session.execute(delete(model).where(row_key.in_(found)))
            total += len(found)
            if len(found) < self.batch_size:
                break
        return total

    def run(self) -> None:
        """Sweep every `interval` seconds until `stop()`."""
        while not self._stop.wait(self.interval):
            try:
                deleted = self.sweep()
            except Exception:  # housekeeping must never take the process down
                log.exception("housekeeping failed; will try again")
                continue
            if any(deleted.values()):
                log.info("housekeeping deleted %s", deleted)

    def start(self) -> Housekeeper:
        """Sweep on a background thread."""
        self._thread = threading.Thread(target=self.run, name="housekeeping", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sweeping (a batch in progress finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
