"""Bodies of the batch API's answers (which its OpenAPI document describes)."""

from __future__ import annotations

from marshmallow import fields

from shared.http.apidocs import AnswerSchema


class PartnerSummarySchema(AnswerSchema):
    """`GET /partners/<partnerId>/summary` answers 200 with this; the ranking lists it."""

    partnerId = fields.UUID(required=True)
    postCount = fields.Integer(required=True)
    followerCount = fields.Integer(required=True)
    coordinateCount = fields.Integer(required=True)
    reviewCount = fields.Integer(required=True)
    averageStar = fields.Float(
        required=True,
        metadata={"description": "The exact mean of the reviews' stars, 0 without a review."},
    )
    score = fields.Float(
        required=True,
        metadata={"description": "followerCount x 0.4 + coordinateCount x 0.3 + averageStar x 0.3"},
    )


class PartnerRankingSchema(AnswerSchema):
    """`GET /partners/ranking` answers 200 with this."""

    partners = fields.List(
        fields.Nested(PartnerSummarySchema),
        required=True,
        metadata={"description": "Highest score first; equal scores by partner id."},
    )
