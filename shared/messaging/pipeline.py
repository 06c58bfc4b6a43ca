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

A record that can never be applied goes, byte for byte, to ``<topic>.DLT``.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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

    @property
    def dead_letter(self) -> str:
        """The topic where records that can never be applied are kept."""
        return f"{self.name}.DLT"

    def load(self, document: dict[str, Any]) -> E:
        """The event in a JSON object; raises marshmallow's ValidationError."""
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

# In the order a member's life goes through them: the signup, its answer, the deletion.
TOPICS: tuple[Topic[Any], ...] = (
    PROFILE_INSERT,
    PARTNER_CREATED,
    PROFILE_CREATED,
    PROFILE_REJECTED,
    PROFILE_DELETE,
    PARTNER_DELETED,
)
