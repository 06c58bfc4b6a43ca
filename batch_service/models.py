"""The batch service's own tables: partner summaries (with their score, which the
ranking reads through an index), what each counter counts (`partner_activity`), the
activity waiting for its partner, tombstones of deleted partners and its inbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Computed, Double, Index, Integer, SmallInteger, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.messaging.inbox import InboxRecord
from shared.storage.db import UTCDateTime


class Base(DeclarativeBase):
    """Declarative base of the batch database."""


# The original's ranking score: followerCount x 0.4 + coordinateCount x 0.3 +
# averageStar x 0.3, computed by the database from the stored counters (a stored
# generated column, so an index can order partners by it). Both dialects read this SQL.
SCORE_SQL = (
    "follower_count * 0.4 + coordinate_count * 0.3 + "
    "(CASE WHEN review_count > 0 "
    "THEN CAST(star_sum AS DOUBLE PRECISION) / review_count ELSE 0 END) * 0.3"
)


class PartnerSummary(Base):
    """A partner's aggregates (the original design's PartnerSummary), one row per partner.

    Every counter is the number of distinct things counted in `partner_activity` for the
    partner (a post not deleted, a follower still following, a closed request, a review);
    the average star is `star_sum / review_count`, derived, never stored rounded."""

    __tablename__ = "partner_summaries"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    post_count: Mapped[int] = mapped_column(Integer, default=0)
    follower_count: Mapped[int] = mapped_column(Integer, default=0)
    coordinate_count: Mapped[int] = mapped_column(Integer, default=0)
    review_count: Mapped[int] = mapped_column(Integer, default=0)
    star_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    score: Mapped[float] = mapped_column(Double, Computed(SCORE_SQL, persisted=True))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)

    @property
    def average_star(self) -> float:
        """The exact mean of the partner's reviews' stars (0.0 without a review)."""
        return self.star_sum / self.review_count if self.review_count else 0.0


# The ranking's order (score descending, ties by partner id ascending), read straight
# from this index: the top 30 of a million partners is 30 index entries.
Index("ix_partner_summaries_ranking", PartnerSummary.score.desc(), PartnerSummary.partner_id)


# What a row of partner_activity is: the kinds of things a partner's counters count.
POST, FOLLOW, COORDINATE, REVIEW = "post", "follow", "coordinate", "review"


class PartnerActivity(Base):
    """One thing a partner's counter counts, and how many times its creation was applied
    minus its deletion (`net`): a post (item: its id), a follower (the follower's uuid), a
    closed coordination request, a review (with its star).

    It counts iff net >= 1. The rule commutes, so the counters come out right whatever
    order the topics deliver in: a `follow-deleted` consumed before its `follow-created`
    leaves net -1 (an orphan deletion: recorded, reported, subtracted from nothing), and
    the creation, when it comes, brings it back to 0. A creation applied twice under
    two event ids still counts once."""

    __tablename__ = "partner_activity"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    net: Mapped[int] = mapped_column(Integer)
    star: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)


class WaitingActivity(Base):
    """Activity for a partner whose `partner-created` has not been applied yet: its
    things are already in partner_activity, and are counted into the summary the moment
    it opens. One row per waiting partner, for `status`."""

    __tablename__ = "waiting_activity"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    events: Mapped[int] = mapped_column(Integer)
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class DeletedPartner(Base):
    """A partner whose account was deleted (`partner-deleted`): all that is left of it
    here. partner-created and partner-deleted are two topics, which Kafka does not order
    between them; a `partner-created` arriving after the deletion finds this row and
    opens nothing."""

    __tablename__ = "deleted_partners"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deleted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Activity events that came for the partner after its deletion: dropped, and counted.
    dropped_events: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ProcessedEvent(InboxRecord, Base):
    """Events this service applied (its inbox)."""
