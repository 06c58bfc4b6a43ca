"""The auth service's own tables: members (credentials and personal data), idempotency
keys, its inbox (the saga's answers) and its outbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.inbox import InboxRecord
from shared.messaging.outbox import OutboxRecord
from shared.storage.db import UTCDateTime


class Base(DeclarativeBase):
    """Declarative base of the auth database."""


# An account's life: PENDING until the member service answers, then ACTIVE, or REJECTED
# (its data erased); DELETED when its owner deletes it (its data erased).
PENDING, ACTIVE, REJECTED, DELETED = "PENDING", "ACTIVE", "REJECTED", "DELETED"
LIVE = (PENDING, ACTIVE)  # the statuses whose credentials and tokens are good


class Member(Base):
    """An account. `email_key` is the email's normal form (auth_service/emails.py); its
    unique index is what makes one account per mailbox hold under concurrent signups.
    A REJECTED or DELETED account keeps only its uuid, role, status and times: every
    personal column is NULL (which also frees its email)."""

    __tablename__ = "members"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(254))
    email_key: Mapped[str | None] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(50))
    phone: Mapped[str | None] = mapped_column(String(20))
    birth: Mapped[dt.date | None] = mapped_column(Date)
    gender: Mapped[str | None] = mapped_column(String(10))
    role: Mapped[str] = mapped_column(String(10))
    nickname: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[str] = mapped_column(String(10), default=PENDING, server_default=ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(String(40))
    status_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Carried by every access token (`ver`); a password change increments it, so every
    # token issued before the change is refused.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class IdempotencyKey(Base):
    """A signup's `Idempotency-Key`, kept so that a retry gets the answer the first try
    got. Both columns are HMACs under the service's secret: the key as the client sent
    it, and the request body (which holds the password, so never a plain hash of it)."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    request: Mapped[str] = mapped_column(String(64))
    member_uuid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class ProcessedEvent(InboxRecord, Base):
    """Events the auth worker applied (its inbox): the member service's answers."""


class OutboxEvent(OutboxRecord, Base):
    """Events waiting to be relayed to Kafka (`profile-insert`, `profile-delete`)."""
