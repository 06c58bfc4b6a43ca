"""The member read API: `GET /members/<uuid>`."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import select

from member_service.models import FavoriteStyle, Partner, User
from member_service.schemas import MemberSchema
from shared.http.apidocs import NOT_FOUND, UNAVAILABLE, Route, install_openapi
from shared.http.web import ApiError, base_app
from shared.messaging.outbox import rfc3339
from shared.storage.db import Database
from shared.telemetry.logs import bind

ROUTES = (
    Route(
        "GET",
        "/members/<member_id>",
        operation_id="getMember",
        summary="A member's profile, once the pipeline has brought it here.",
        status=200,
        answer=MemberSchema,
        errors=(NOT_FOUND, UNAVAILABLE),
        parameters={"member_id": "The uuid that signup answered."},
        description="A signup shows here within moments, not at once: until its "
        "`profile-insert` event is applied this answers 404. It answers 404 too for a "
        "signup whose nickname another member holds (refused, never shown here) and for "
        "a member whose account was deleted.",
    ),
)


def create_app(database: Database) -> Flask:
    """The member read API on `database`."""
    app = base_app("member_service", database)
    members = Blueprint("members", __name__, url_prefix="/members")

    @members.get("/<member_id>")
    def get_member(member_id: str) -> Response:
        bind(member_uuid=member_id)
        with database.unit_of_work() as uow:
            role = "USER"
            profile: User | Partner | None = uow.session.get(User, member_id)
            if profile is None:
                role = "PARTNER"
                profile = uow.session.get(Partner, member_id)
            if profile is None:
                raise ApiError(404, "not_found", f"No member {member_id}.")
            styles = uow.session.scalars(
                select(FavoriteStyle.style_id)
                .where(FavoriteStyle.member_uuid == member_id)
                .order_by(FavoriteStyle.id)
            ).all()
        return jsonify(
            uuid=profile.uuid,
            role=role,
            nickname=profile.nickname,
            favoriteStyles=list(styles),
            createdAt=rfc3339(profile.created_at),
        )

    app.register_blueprint(members)
    install_openapi(app, "member API", "Member profiles, as the pipeline built them.", ROUTES)
    return app
