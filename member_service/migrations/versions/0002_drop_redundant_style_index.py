"""Drop the index on favorite_styles.member_uuid.

The unique constraint on (member_uuid, style_id) is backed by an index that leads with
member_uuid, so it already serves every lookup by member; the second index only cost an
extra index insertion for every style row a worker writes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_favorite_styles_member_uuid", table_name="favorite_styles")


def downgrade() -> None:
    op.create_index(
        "ix_favorite_styles_member_uuid", "favorite_styles", ["member_uuid"], unique=False
    )
