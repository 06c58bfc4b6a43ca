"""The batch service's own tables: partner summaries, tombstones of deleted partners and
its inbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.inbox import InboxRecord
from shared.storage.db import UTCDateTime


class Base(DeclarativeBase):
    """Declarative base of the batch database."""


class PartnerSummary(Base):
    """A partner's aggregates (the original design's PartnerSummary), one row per partner."""

    __tablename__ = "partner_summaries"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    post_count: Mapped[int] = mapped_column(Integer, default=0)
    follower_count: Mapped[int] = mapped_column(Integer, default=0)
    coordinate_count: Mapped[int] = mapped_column(Integer, default=0)
    review_count: Mapped[int] = mapped_column(Integer, default=0)
    average_star: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class DeletedPartner(Base):
    """A partner whose account was deleted (`partner-deleted`): all that is left of it
    here. partner-created and partner-deleted are two topics, which Kafka does not order
    between them; a `partner-created` arriving after the deletion finds this row and
    opens nothing."""

    __tablename__ = "deleted_partners"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deleted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ProcessedEvent(InboxRecord, Base):
    """Events this service applied (its inbox)."""
