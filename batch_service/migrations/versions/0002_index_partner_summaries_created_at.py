"""Index partner_summaries.created_at.

`signup-pipeline status` counts the summaries created in the last minute
(created_at >= now - 60 s) on every refresh; without an index that is a full scan of a
table that only grows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_partner_summaries_created_at", "partner_summaries", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_partner_summaries_created_at", table_name="partner_summaries")
