"""Tombstones of deleted partners.

deleted_partners holds a row per partner whose account was deleted (`partner-deleted`),
so that a `partner-created` arriving after the deletion (the two topics are not ordered
between them) opens no summary.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deleted_partners",
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partner_id"),
    )


def downgrade() -> None:
    op.drop_table("deleted_partners")
