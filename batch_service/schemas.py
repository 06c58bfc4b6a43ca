"""Bodies of the batch API's answers (which its OpenAPI document describes)."""

from __future__ import annotations

from marshmallow import fields

from shared.http.apidocs import AnswerSchema


class PartnerSummarySchema(AnswerSchema):
    """`GET /partners/<partnerId>/summary` answers 200 with this."""

    partnerId = fields.UUID(required=True)
    postCount = fields.Integer(required=True)
    followerCount = fields.Integer(required=True)
    coordinateCount = fields.Integer(required=True)
    reviewCount = fields.Integer(required=True)
    averageStar = fields.Float(required=True)
