"""The inbox: a consumer's record of the events it applied, written in the same
transaction as their effects.

Because the row and the effects commit together, an event is applied exactly once per
consumer however often Kafka delivers it: a redelivery finds its row and changes
nothing. Two workers racing on the same event (after a rebalance) both try to insert
the same primary key; the database lets one commit and the other fails on the key,
rolls back, and counts the event as a duplicate.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from shared.db import UTCDateTime, utcnow


class InboxRecord:
    """Columns of a service's `processed_events` table; mix into its declarative base."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249))
    processed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


def claim_event(
    session: Session, model: type[InboxRecord], consumer: str, event_id: str, topic: str
) -> bool:
    """Record `event_id` as processed by `consumer`; False if it already was."""
    if session.get(model, (consumer, event_id)) is not None:
        return False
    row = model()
    row.consumer = consumer
    row.event_id = event_id
    row.topic = topic
    row.processed_at = utcnow()
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        return False
    return True
