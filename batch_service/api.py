"""The batch read API: `GET /partners/<partnerId>/summary` and `GET /partners/ranking`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from sqlalchemy import select

from batch_service.models import PartnerSummary
from batch_service.schemas import PartnerRankingSchema, PartnerSummarySchema
from shared.http.apidocs import NOT_FOUND, UNAVAILABLE, VALIDATION_FAILED, Route, install_openapi
from shared.http.web import ApiError, base_app
from shared.storage.db import Database
from shared.telemetry.logs import bind

ROUTES = (
    Route(
        "GET",
        "/partners/<partner_id>/summary",
        operation_id="getPartnerSummary",
        summary="A partner's summary counters.",
        status=200,
        answer=PartnerSummarySchema,
        errors=(NOT_FOUND, UNAVAILABLE),
        parameters={"partner_id": "The partner's member uuid."},
        description="Opened when the `partner-created` event is applied (counting the "
        "activity that came before it); until then, and after the partner's deletion, "
        "this answers 404.",
    ),
    Route(
        "GET",
        "/partners/ranking",
        operation_id="getPartnerRanking",
        summary="The partners with the highest score.",
        status=200,
        answer=PartnerRankingSchema,
        errors=(VALIDATION_FAILED, UNAVAILABLE),
        query={
            "limit": (
                "How many partners, 1 to 100 (default 30).",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 30},
            )
        },
        description="Score = followerCount x 0.4 + coordinateCount x 0.3 + averageStar x "
        "0.3, highest first, equal scores by partner id. Read live from the summaries "
        "(an index on the score): it moves as soon as a batch of events is committed.",
    ),
)

DEFAULT_RANKING, MAX_RANKING = 30, 100


def summary_json(summary: PartnerSummary) -> dict[str, Any]:
    """A summary as the API shows it."""
    return {
        "partnerId": summary.partner_id,
        "postCount": summary.post_count,
        "followerCount": summary.follower_count,
        "coordinateCount": summary.coordinate_count,
        "reviewCount": summary.review_count,
        "averageStar": summary.average_star,
        "score": summary.score,
    }


def ranking_limit(raw: str | None) -> int:
    """`?limit=`: 1 to 100, 30 when absent; a clear 400 otherwise."""
    if raw is None:
        return DEFAULT_RANKING
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_RANKING:
        problem = f"An integer from 1 to {MAX_RANKING}."
        raise ApiError(400, "validation_failed", "Invalid query.", {"limit": [problem]})
    return int(raw)


def create_app(database: Database) -> Flask:
    """The batch read API on `database`."""
    app = base_app("batch_service", database)
    partners = Blueprint("partners", __name__, url_prefix="/partners")

    @partners.get("/ranking")
    def get_ranking() -> Response:
        limit = ranking_limit(request.args.get("limit"))
        with database.unit_of_work() as uow:
            top = uow.session.scalars(
                select(PartnerSummary)
                .order_by(PartnerSummary.score.desc(), PartnerSummary.partner_id)
                .limit(limit)
            ).all()
        return jsonify(partners=[summary_json(summary) for summary in top])

    @partners.get("/<partner_id>/summary")
    def get_summary(partner_id: str) -> Response:
        bind(member_uuid=partner_id)
        with database.unit_of_work() as uow:
            summary = uow.session.get(PartnerSummary, partner_id)
        if summary is None:
            raise ApiError(404, "not_found", f"No summary for partner {partner_id}.")
        return jsonify(summary_json(summary))

    app.register_blueprint(partners)
    install_openapi(app, "batch API", "Partner summaries.", ROUTES)
    return app
