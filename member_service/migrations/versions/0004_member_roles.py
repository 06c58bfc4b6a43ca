"""One uuid, one role: member_roles holds a row per member, whatever its role.

A profile-insert for a uuid that already had a profile of the other role used to be
applied: the uuid then had both a users and a partners row (and a partner summary
downstream). member_roles' primary key now refuses it, in the event's own transaction,
and the event is dead-lettered.

Existing profiles are copied in. A uuid that already has both a users and a partners row
(made by that very bug) is not merged: it keeps its USER role here, and the migration
logs a warning naming each such uuid, for the operator to settle.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)


def upgrade() -> None:
    op.create_table(
        "member_roles",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    bind = op.get_bind()
    bind.execute(sa.text("INSERT INTO member_roles (uuid, role) SELECT uuid, 'USER' FROM users"))
    bind.execute(
        sa.text(
            "INSERT INTO member_roles (uuid, role) SELECT uuid, 'PARTNER' FROM partners "
            "WHERE uuid NOT IN (SELECT uuid FROM users)"
        )
    )
    both = bind.execute(
        sa.text("SELECT uuid FROM partners WHERE uuid IN (SELECT uuid FROM users) ORDER BY uuid")
    ).scalars()
    for uuid in both:
        log.warning("member %s has both a USER and a PARTNER profile; kept as USER", uuid)


def downgrade() -> None:
    op.drop_table("member_roles")
