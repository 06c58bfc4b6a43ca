"""The member service's own tables: profiles, favourite styles, tombstones of deleted
members, its inbox and outbox."""

from __future__ import annotations

import datetime as dt
import unicodedata

from sqlalchemy import BigInteger, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.inbox import InboxRecord
from shared.messaging.outbox import OutboxRecord
from shared.storage.db import BigIntegerPK, UTCDateTime


class Base(DeclarativeBase):
    """Declarative base of the member database."""


def nickname_key(nickname: str) -> str:
    """What makes two nicknames the same: NFKC (full-width and compatibility forms become
    the plain ones) then casefolded, normalised again since casefolding may leave a
    string that is not (Unicode's NFKC_Casefold, without its removal of ignorables).
    "Mimi", "MIMI" and "Ｍｉｍｉ" have one key."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", nickname).casefold())


# The longest key a nickname of the event's 50 characters can have: NFKC turns one
# character into at most 18 (U+FDFA), and casefolding does not lengthen those.
NICKNAME_KEY_LENGTH = 900


class MemberRole(Base):
    """One row per member, whatever its role: a uuid has one role. A profile-insert for a
    uuid already here (another role, or the same role under another event) fails on this
    primary key, in the transaction that would have applied it, and is dead-lettered; an
    event redelivered with its own id never gets this far (the inbox skips it).

    `nickname_key` (`nickname_key()` above: NFKC, casefolded) makes
    nicknames unique among members whatever their case or width: its unique index is
    what decides between two members asking for one nickname at once. NULL only for the
    younger of two members that already shared a nickname before migration 0005."""

    __tablename__ = "member_roles"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    role: Mapped[str] = mapped_column(String(10))
    nickname_key: Mapped[str | None] = mapped_column(
        String(NICKNAME_KEY_LENGTH), unique=True, index=True
    )


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


class DeletedMember(Base):
    """A member whose account was deleted (`profile-delete`): all that is left of it here.
    uuids are never reused, so a `profile-insert` arriving after the deletion (topics are
    not ordered between them) finds this row and creates nothing."""

    __tablename__ = "deleted_members"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    deleted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ProcessedEvent(InboxRecord, Base):
    """Events this service applied (its inbox)."""


class OutboxEvent(OutboxRecord, Base):
    """Events waiting to be relayed to Kafka (`profile-created`, `profile-rejected`,
    `partner-created`, `partner-deleted`)."""
