"""Nicknames unique among members, case-insensitively; tombstones of deleted members.

member_roles gets `nickname_key` (the nickname, NFKC then casefolded: "Mimi", "MIMI"
and "Ｍｉｍｉ" are one key) with a unique index, filled from each member's profile
(users for a USER, partners for a PARTNER). Members that already share a key are not
merged: the oldest (by created_at, then uuid) keeps it, each other one gets NULL (which
the index allows any number of times) and the migration logs a warning naming both
uuids, for the operator to settle (ask the member for another nickname).

deleted_members holds a row per deleted member (`profile-delete`), so that an insert
arriving after the deletion creates nothing.

This uses the service's key as it is today (member_service.models.nickname_key);
changing it later comes with its own migration.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from member_service.models import NICKNAME_KEY_LENGTH, nickname_key

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

member_roles = sa.table(
    "member_roles",
    sa.column("uuid", sa.String),
    sa.column("role", sa.String),
    sa.column("nickname_key", sa.String),
)


def _profiles(bind: sa.Connection) -> list[Any]:
    """(uuid, nickname) of every member, oldest first: each member_roles row's profile
    of its own role."""
    rows: list[Any] = []
    for role, table in (("USER", "users"), ("PARTNER", "partners")):
        profiles = sa.table(
            table,
            sa.column("uuid", sa.String),
            sa.column("nickname", sa.String),
            sa.column("created_at", sa.DateTime),
        )
        rows.extend(
            bind.execute(
                sa.select(profiles.c.uuid, profiles.c.nickname, profiles.c.created_at)
                .join(member_roles, member_roles.c.uuid == profiles.c.uuid)
                .where(member_roles.c.role == role)
            ).all()
        )
    rows.sort(key=lambda row: (row.created_at, row.uuid))
    return rows


def upgrade() -> None:
    op.add_column(
        "member_roles",
        sa.Column("nickname_key", sa.String(length=NICKNAME_KEY_LENGTH), nullable=True),
    )
    bind = op.get_bind()
    holders: dict[str, str] = {}  # key -> uuid of the oldest member with it
    for row in _profiles(bind):
        key = nickname_key(row.nickname)
        if key in holders:
            log.warning(
                "members %s and %s have one nickname (case-insensitively); %s keeps it, "
                "%s has no nickname key until an operator settles it",
                holders[key],
                row.uuid,
                holders[key],
                row.uuid,
            )
            continue
        holders[key] = row.uuid
    if holders:
        bind.execute(
            sa.update(member_roles)
            .where(member_roles.c.uuid == sa.bindparam("member"))
            .values(nickname_key=sa.bindparam("key")),
            [{"member": uuid, "key": key} for key, uuid in holders.items()],
        )
    op.create_index("ix_member_roles_nickname_key", "member_roles", ["nickname_key"], unique=True)
    op.create_table(
        "deleted_members",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )


def downgrade() -> None:
    op.drop_table("deleted_members")
    op.drop_index("ix_member_roles_nickname_key", table_name="member_roles")
    with op.batch_alter_table("member_roles") as batch:
        batch.drop_column("nickname_key")
