"""The member read API: `GET /members/<uuid>`."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import select

from member_service.models import FavoriteStyle, Partner, User
from shared.db import Database
from shared.outbox import rfc3339
from shared.web import ApiError, base_app


def create_app(database: Database) -> Flask:
    """The member read API on `database`."""
    app = base_app("member_service", database)
    members = Blueprint("members", __name__, url_prefix="/members")

    @members.get("/<member_id>")
    def get_member(member_id: str) -> Response:
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
    return app
