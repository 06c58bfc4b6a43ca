"""Bodies of the member API's answers (which its OpenAPI document describes)."""

from __future__ import annotations

from marshmallow import fields, validate

from shared.http.apidocs import AnswerSchema
from shared.messaging.pipeline import ROLES


class MemberSchema(AnswerSchema):
    """`GET /members/<uuid>` answers 200 with this."""

    uuid = fields.UUID(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    nickname = fields.String(required=True)
    favoriteStyles = fields.List(
        fields.Integer(),
        required=True,
        metadata={"description": "Style ids in the order the member chose them."},
    )
    createdAt = fields.DateTime(
        required=True,
        metadata={"description": "When the profile was created here (RFC 3339, UTC)."},
    )
