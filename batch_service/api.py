"""The batch read API: `GET /partners/<partnerId>/summary`."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from batch_service.models import PartnerSummary
from shared.db import Database
from shared.web import ApiError, base_app


def create_app(database: Database) -> Flask:
    """The batch read API on `database`."""
    app = base_app("batch_service", database)
    partners = Blueprint("partners", __name__, url_prefix="/partners")

    @partners.get("/<partner_id>/summary")
    def get_summary(partner_id: str) -> Response:
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
    return app
