"""The auth service's own tables: members (credentials and personal data) and its outbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.outbox import OutboxRecord
from shared.storage.db import UTCDateTime


class Base(DeclarativeBase):
    """Declarative base of the auth database."""


class Member(Base):
    """An account. `email_key` is the lower-cased email; its unique index is what makes
    one account per email hold under concurrent signups."""

    __tablename__ = "members"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    email_key: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(50))
    phone: Mapped[str] = mapped_column(String(20))
    birth: Mapped[dt.date] = mapped_column(Date)
    gender: Mapped[str] = mapped_column(String(10))
    role: Mapped[str] = mapped_column(String(10))
    nickname: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class OutboxEvent(OutboxRecord, Base):
    """Events waiting to be relayed to Kafka (`profile-insert`)."""
