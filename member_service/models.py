"""The member service's own tables: profiles, favourite styles, its inbox and outbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.inbox import InboxRecord
from shared.messaging.outbox import OutboxRecord
from shared.storage.db import BigIntegerPK, UTCDateTime


class Base(DeclarativeBase):
    """Declarative base of the member database."""


class MemberRole(Base):
    """One row per member, whatever its role: a uuid has one role. A profile-insert for a
    uuid already here (another role, or the same role under another event) fails on this
    primary key, in the transaction that would have applied it, and is dead-lettered; an
    event redelivered with its own id never gets this far (the inbox skips it)."""

    __tablename__ = "member_roles"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    role: Mapped[str] = mapped_column(String(10))


class User(Base):
    """A member who signed up with role USER."""

    __tablename__ = "users"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    nickname: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class Partner(Base):
    """A member who signed up with role PARTNER."""

    __tablename__ = "partners"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    nickname: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class FavoriteStyle(Base):
    """One style a member likes; a member lists each style once (the unique index, which
    leads with member_uuid, also serves lookups by member)."""

    __tablename__ = "favorite_styles"
    __table_args__ = (UniqueConstraint("member_uuid", "style_id"),)

    id: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True, autoincrement=True)
    member_uuid: Mapped[str] = mapped_column(String(36))
    style_id: Mapped[int] = mapped_column(BigInteger)


class ProcessedEvent(InboxRecord, Base):
    """Events this service applied (its inbox)."""


class OutboxEvent(OutboxRecord, Base):
    """Events waiting to be relayed to Kafka (`partner-created`)."""
