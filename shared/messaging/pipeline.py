"""The pipeline on one page: every topic, its key, its event schema, who produces it
and who consumes it. Read this first.

    client --POST /auth/signup--> auth_service
        members row + outbox row, one transaction --relay--> profile-insert
    member_service worker (group member-service)
        users|partners + favorite_styles + inbox (+ outbox partner-created), one transaction
        --relay--> partner-created
    batch_service worker (group batch-service)
        partner_summaries + inbox, one transaction
    member_service --relay--> profile-created | profile-rejected (the saga's answer)
    auth_service worker (group auth-service)
        the account ACTIVE, or REJECTED and erased; + inbox, one transaction

    client --DELETE /auth/me--> auth_service
        account erased + outbox row, one transaction --relay--> profile-delete
    member_service worker: profile erased (+ outbox partner-deleted) --relay--> partner-deleted
    batch_service worker: partner summary erased

    other teams' services --> post-created | post-deleted | follow-created |
        follow-deleted | coordinate-closed | review-created (keyed by partner uuid)
    batch_service worker: each partner's counters, average star and score, exactly once

A record that can never be applied goes, byte for byte, to ``<topic>.DLT``.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeGuard, TypeVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

ROLES = ("USER", "PARTNER")
MAX_STYLE_ID = 2**63 - 1  # a Java long, and the member service's BIGINT column


class StrictInteger(fields.Integer):
    """An integer that refuses booleans and numeric strings, as Jackson would for `int`."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(value)


def distinct_values(values: list[Any]) -> None:
    """Validator: no value appears twice."""
    if len(set(values)) != len(values):
        raise ValidationError("Styles must be distinct.")


def _uuid_text(value: str) -> None:
    """Only the canonical form (lower-case, hyphenated, as Java's UUID.toString() writes)."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        canonical = None
    if canonical != value:
        raise ValidationError("Not a canonical UUID.")


class EventSchema(Schema):
    """Events are read tolerantly: fields a newer producer adds are ignored."""

    class Meta:
        unknown = EXCLUDE


@dataclass(frozen=True)
class ProfileInsert:
    """A new member's profile, as the member service needs it (loaded by its schema)."""

    uuid: str
    role: str
    nickname: str
    favorite_styles: list[int]


@dataclass(frozen=True)
class PartnerCreated:
    """A partner exists, as the batch service needs it (loaded by its schema)."""

    partner_id: str


@dataclass(frozen=True)
class ProfileDelete:
    """An account was deleted: every service erases what it holds of the member."""

    uuid: str


@dataclass(frozen=True)
class ProfileCreated:
    """The member service made the profile of a `profile-insert` (the saga's yes)."""

    uuid: str


# Why the member service refused a profile, for the account holder to act on.
REJECTION_REASONS = ("nickname_taken",)


@dataclass(frozen=True)
class ProfileRejected:
    """The member service refused a `profile-insert` for a reason the account holder can
    act on (the saga's no): auth rejects the account and erases its data."""

    uuid: str
    reason: str


@dataclass(frozen=True)
class PartnerDeleted:
    """A partner's account was deleted: the batch service drops its summary."""

    partner_id: str


class ProfileInsertSchema(EventSchema):
    """`profile-insert`: the Spring `InsertProfileDto`."""

    uuid = fields.String(required=True, validate=_uuid_text)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    nickname = fields.String(required=True, validate=validate.Length(min=1, max=50))
    favorite_styles = fields.List(
        StrictInteger(validate=validate.Range(min=1, max=MAX_STYLE_ID)),
        required=True,
        validate=[validate.Length(max=20), distinct_values],
        data_key="favoriteStyles",
    )

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> ProfileInsert:
        return ProfileInsert(**data)


class PartnerCreatedSchema(EventSchema):
    """`partner-created`: the Spring `PartnerSummaryDto`."""

    partner_id = fields.String(required=True, validate=_uuid_text, data_key="partnerId")

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> PartnerCreated:
        return PartnerCreated(**data)


class ProfileDeleteSchema(EventSchema):
    """`profile-delete`: the original's topic, `{"uuid"}`."""

    uuid = fields.String(required=True, validate=_uuid_text)

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> ProfileDelete:
        return ProfileDelete(**data)


class ProfileCreatedSchema(EventSchema):
    """`profile-created`: `{"uuid"}`."""

    uuid = fields.String(required=True, validate=_uuid_text)

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> ProfileCreated:
        return ProfileCreated(**data)


class ProfileRejectedSchema(EventSchema):
    """`profile-rejected`: `{"uuid", "reason"}`."""

    uuid = fields.String(required=True, validate=_uuid_text)
    reason = fields.String(required=True, validate=validate.OneOf(REJECTION_REASONS))

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> ProfileRejected:
        return ProfileRejected(**data)


class PartnerDeletedSchema(EventSchema):
    """`partner-deleted`: `{"partnerId"}`."""

    partner_id = fields.String(required=True, validate=_uuid_text, data_key="partnerId")

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> PartnerDeleted:
        return PartnerDeleted(**data)


MAX_ITEM_ID = 2**63 - 1  # a Java long


class ItemId(fields.Field):  # type: ignore[type-arg]
    """An id another team's service gave a post, a coordination request or a review: a
    string of 1 to 64 printable characters, or a non-negative integer (a Java long),
    which is kept as its decimal text (so `7` and `"7"` are one item)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool):
            raise ValidationError("Not an id: a string or an integer.")
        if isinstance(value, int):
            if not 0 <= value <= MAX_ITEM_ID:
                raise ValidationError("An integer id is between 0 and 2^63-1.")
            return str(value)
        if isinstance(value, str):
            if not 1 <= len(value) <= 64 or not value.isprintable() or value != value.strip():
                raise ValidationError("A string id has 1 to 64 printable characters.")
            return value
        raise ValidationError("Not an id: a string or an integer.")

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


@dataclass(frozen=True)
class PostCreated:
    """A partner published a post (the post service's event)."""

    post_id: str
    partner_id: str


@dataclass(frozen=True)
class PostDeleted:
    """A partner's post was deleted."""

    post_id: str
    partner_id: str


@dataclass(frozen=True)
class FollowCreated:
    """A member started following a partner."""

    follower_id: str
    partner_id: str


@dataclass(frozen=True)
class FollowDeleted:
    """A member stopped following a partner."""

    follower_id: str
    partner_id: str


@dataclass(frozen=True)
class CoordinateClosed:
    """A coordination request to a partner was closed (done): it counts for the partner."""

    request_id: str
    partner_id: str


STARS = (1, 5)


@dataclass(frozen=True)
class ReviewCreated:
    """A member reviewed a partner with 1 to 5 stars."""

    review_id: str
    partner_id: str
    star: int


ActivityEvent = (
    PostCreated | PostDeleted | FollowCreated | FollowDeleted | CoordinateClosed | ReviewCreated
)


def _partner_id() -> fields.String:
    return fields.String(required=True, validate=_uuid_text, data_key="partnerId")


class PostCreatedSchema(EventSchema):
    """`post-created`: `{"postId", "partnerId"}`."""

    post_id = ItemId(required=True, data_key="postId")
    partner_id = _partner_id()

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> PostCreated:
        return PostCreated(**data)


class PostDeletedSchema(EventSchema):
    """`post-deleted`: `{"postId", "partnerId"}`."""

    post_id = ItemId(required=True, data_key="postId")
    partner_id = _partner_id()

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> PostDeleted:
        return PostDeleted(**data)


class FollowCreatedSchema(EventSchema):
    """`follow-created`: `{"followerId", "partnerId"}` (the follower is a member)."""

    follower_id = fields.String(required=True, validate=_uuid_text, data_key="followerId")
    partner_id = _partner_id()

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> FollowCreated:
        return FollowCreated(**data)


class FollowDeletedSchema(EventSchema):
    """`follow-deleted`: `{"followerId", "partnerId"}`."""

    follower_id = fields.String(required=True, validate=_uuid_text, data_key="followerId")
    partner_id = _partner_id()

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> FollowDeleted:
        return FollowDeleted(**data)


class CoordinateClosedSchema(EventSchema):
    """`coordinate-closed`: `{"requestId", "partnerId"}`."""

    request_id = ItemId(required=True, data_key="requestId")
    partner_id = _partner_id()

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> CoordinateClosed:
        return CoordinateClosed(**data)


class ReviewCreatedSchema(EventSchema):
    """`review-created`: `{"reviewId", "partnerId", "star": 1..5}`."""

    review_id = ItemId(required=True, data_key="reviewId")
    partner_id = _partner_id()
    star = StrictInteger(required=True, validate=validate.Range(min=STARS[0], max=STARS[1]))

    @post_load
    def _event(self, data: dict[str, Any], **_: Any) -> ReviewCreated:
        return ReviewCreated(**data)


E = TypeVar("E")


@dataclass(frozen=True)
class Topic(Generic[E]):
    """A topic, what its key is, its event type and the schema of its JSON, and who is at
    each end."""

    name: str
    key: str
    event: type[E]
    schema: type[Schema]
    producer: str
    consumer_group: str
    partitions: int
    # A faster check of the same rules, for topics read thousands of times a second: the
    # event when the document is valid, None when it is not or it cannot tell (then the
    # schema decides, and says why). Tested to agree with the schema on generated
    # documents (tests/unit/test_events.py).
    quick: Callable[[dict[str, Any]], E | None] | None = None

    @property
    def dead_letter(self) -> str:
        """The topic where records that can never be applied are kept."""
        return f"{self.name}.DLT"

    def load(self, document: dict[str, Any]) -> E:
        """The event in a JSON object; raises marshmallow's ValidationError."""
        if self.quick is not None:
            quick = self.quick(document)
            if quick is not None:
                return quick
        event: E = _schema(self.schema).load(document)
        return event

    def dump(self, event: E) -> dict[str, Any]:
        """The JSON object of `event`."""
        document: dict[str, Any] = _schema(self.schema).dump(event)
        return document


@functools.cache
def _schema(schema: type[Schema]) -> Schema:
    """One instance per schema: building one costs more than loading an event."""
    return schema()


PROFILE_INSERT = Topic(
    name="profile-insert",
    key="member uuid",
    event=ProfileInsert,
    schema=ProfileInsertSchema,
    producer="auth-service",
    consumer_group="member-service",
    partitions=6,
)

PARTNER_CREATED = Topic(
    name="partner-created",
    key="partner uuid",
    event=PartnerCreated,
    schema=PartnerCreatedSchema,
    producer="member-service",
    consumer_group="batch-service",
    partitions=6,
)

# A member's lifecycle crosses topics (profile-insert, then maybe profile-delete), and
# Kafka orders nothing between topics: a deletion can be consumed before its insert.
# uuids are never reused and a member only goes insert -> delete, so every consumer
# keeps a tombstone per deleted uuid and lets the deletion win whatever the arrival
# order: a late insert (or partner-created) for a tombstoned uuid creates nothing.
PROFILE_DELETE = Topic(
    name="profile-delete",
    key="member uuid",
    event=ProfileDelete,
    schema=ProfileDeleteSchema,
    producer="auth-service",
    consumer_group="member-service",
    partitions=6,
)

PROFILE_CREATED = Topic(
    name="profile-created",
    key="member uuid",
    event=ProfileCreated,
    schema=ProfileCreatedSchema,
    producer="member-service",
    consumer_group="auth-service",
    partitions=6,
)

PROFILE_REJECTED = Topic(
    name="profile-rejected",
    key="member uuid",
    event=ProfileRejected,
    schema=ProfileRejectedSchema,
    producer="member-service",
    consumer_group="auth-service",
    partitions=6,
)

PARTNER_DELETED = Topic(
    name="partner-deleted",
    key="partner uuid",
    event=PartnerDeleted,
    schema=PartnerDeletedSchema,
    producer="member-service",
    consumer_group="batch-service",
    partitions=6,
)

# What partners do, told by other teams' services (the contract defines what they send):
# the batch service turns them into each partner's counters. Keyed by partner uuid, so
# one partner's events of a topic keep their order; between topics nothing is ordered,
# and a partner's activity may even come before its `partner-created`.


# The schemas' rules, checked without marshmallow's machinery (a tenth of the cost: the
# batch worker decodes thousands of these a second). A document they do not vouch for
# goes to the schema, which decides and says why.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _quick_uuid(value: Any) -> TypeGuard[str]:
    return type(value) is str and _CANONICAL_UUID.fullmatch(value) is not None


def _quick_item(value: Any) -> str | None:
    """ItemId's rules: the id as kept, or None."""
    if type(value) is int:
        return str(value) if 0 <= value <= MAX_ITEM_ID else None
    if type(value) is str and 1 <= len(value) <= 64 and value.isprintable():
        return value if value == value.strip() else None
    return None


def _quick_pair(
    event: Callable[[str, str], Any], item_key: str, item_is_uuid: bool = False
) -> Callable[[dict[str, Any]], Any]:
    """The quick check of `{item_key, "partnerId"}` building `event(item, partner)`."""

    def quick(document: dict[str, Any]) -> Any:
        partner = document.get("partnerId")
        if not _quick_uuid(partner):
            return None
        raw = document.get(item_key)
        item = (raw if _quick_uuid(raw) else None) if item_is_uuid else _quick_item(raw)
        return None if item is None else event(item, partner)

    return quick


def _quick_review(document: dict[str, Any]) -> ReviewCreated | None:
    partner, star = document.get("partnerId"), document.get("star")
    item = _quick_item(document.get("reviewId"))
    if item is None or not _quick_uuid(partner) or type(star) is not int:
        return None
    return ReviewCreated(item, partner, star) if STARS[0] <= star <= STARS[1] else None


def _activity(
    name: str,
    event: type[E],
    schema: type[Schema],
    producer: str,
    quick: Callable[[dict[str, Any]], E | None],
) -> Topic[E]:
    return Topic(
        name=name,
        key="partner uuid",
        event=event,
        schema=schema,
        producer=producer,
        consumer_group="batch-service",
        partitions=6,
        quick=quick,
    )


POST_CREATED = _activity(
    "post-created",
    PostCreated,
    PostCreatedSchema,
    "post-service",
    _quick_pair(PostCreated, "postId"),
)
POST_DELETED = _activity(
    "post-deleted",
    PostDeleted,
    PostDeletedSchema,
    "post-service",
    _quick_pair(PostDeleted, "postId"),
)
FOLLOW_CREATED = _activity(
    "follow-created",
    FollowCreated,
    FollowCreatedSchema,
    "follow-service",
    _quick_pair(FollowCreated, "followerId", item_is_uuid=True),
)
FOLLOW_DELETED = _activity(
    "follow-deleted",
    FollowDeleted,
    FollowDeletedSchema,
    "follow-service",
    _quick_pair(FollowDeleted, "followerId", item_is_uuid=True),
)
COORDINATE_CLOSED = _activity(
    "coordinate-closed",
    CoordinateClosed,
    CoordinateClosedSchema,
    "coordinate-service",
    _quick_pair(CoordinateClosed, "requestId"),
)
REVIEW_CREATED = _activity(
    "review-created", ReviewCreated, ReviewCreatedSchema, "review-service", _quick_review
)


ACTIVITY_TOPICS: tuple[Topic[Any], ...] = (
    POST_CREATED,
    POST_DELETED,
    FOLLOW_CREATED,
    FOLLOW_DELETED,
    COORDINATE_CLOSED,
    REVIEW_CREATED,
)

# In the order a member's life goes through them: the signup, its answer, the deletion;
# then the partners' activity.
TOPICS: tuple[Topic[Any], ...] = (
    PROFILE_INSERT,
    PARTNER_CREATED,
    PROFILE_CREATED,
    PROFILE_REJECTED,
    PROFILE_DELETE,
    PARTNER_DELETED,
    *ACTIVITY_TOPICS,
)
