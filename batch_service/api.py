"""The batch read API: `GET /partners/<partnerId>/summary`."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from batch_service.models import PartnerSummary
from batch_service.schemas import PartnerSummarySchema
from shared.http.apidocs import NOT_FOUND, UNAVAILABLE, Route, install_openapi
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
        description="Created with every counter at zero when the `partner-created` event "
        "is applied; until then this answers 404.",
    ),
)


def create_app(database: Database) -> Flask:
    """The batch read API on `database`."""
    app = base_app("batch_service", database)
    partners = Blueprint("partners", __name__, url_prefix="/partners")

    @partners.get("/<partner_id>/summary")
    def get_summary(partner_id: str) -> Response:
        bind(member_uuid=partner_id)
        with database.unit_of_work() as uow:
            summary = uow.session.get(PartnerSummary, partner_id)
        if summary is None:
            raise ApiError(404, "not_found", f"No summary for partner {partner_id}.")
        return jsonify(
            partnerId=summary.partner_id,
            postCount=summary.post_count,
            followerCount=summary.follower_count,
            coordinateCount=summary.coordinate_count,
            reviewCount=summary.review_count,
            averageStar=summary.average_star,
        )

    app.register_blueprint(partners)
    install_openapi(app, "batch API", "Partner summaries.", ROUTES)
    return app
