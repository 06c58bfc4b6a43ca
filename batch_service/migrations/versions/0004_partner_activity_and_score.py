"""Partner aggregates that aggregate: what each counter counts, exact stars, the score.

- partner_summaries: `star_sum` (the average star is star_sum / review_count, derived,
  so `average_star`, never set before, goes), `score` (a stored generated column, the
  original's followerCount x 0.4 + coordinateCount x 0.3 + averageStar x 0.3) and the
  ranking's index on (score DESC, partner_id).
- partner_activity: one row per thing counted (post, follower, closed request, review).
- waiting_activity: partners whose activity came before their `partner-created`.
- deleted_partners.dropped_events: activity that came after the partner's deletion.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# As batch_service.models.SCORE_SQL was when this revision was written.
SCORE_SQL = (
    "follower_count * 0.4 + coordinate_count * 0.3 + "
    "(CASE WHEN review_count > 0 "
    "THEN CAST(star_sum AS DOUBLE PRECISION) / review_count ELSE 0 END) * 0.3"
)


def upgrade() -> None:
    with op.batch_alter_table("partner_summaries") as batch:
        batch.add_column(sa.Column("star_sum", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("score", sa.Double(), sa.Computed(SCORE_SQL, persisted=True), nullable=True)
        )
        batch.drop_column("average_star")
    op.create_index(
        "ix_partner_summaries_ranking",
        "partner_summaries",
        [sa.text("score DESC"), "partner_id"],
    )
    op.create_table(
        "partner_activity",
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("net", sa.Integer(), nullable=False),
        sa.Column("star", sa.SmallInteger(), nullable=True),
        sa.PrimaryKeyConstraint("partner_id", "kind", "item_id"),
    )
    op.create_table(
        "waiting_activity",
        sa.Column("partner_id", sa.String(length=36), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partner_id"),
    )
    with op.batch_alter_table("deleted_partners") as batch:
        batch.add_column(
            sa.Column("dropped_events", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("deleted_partners") as batch:
        batch.drop_column("dropped_events")
    op.drop_table("waiting_activity")
    op.drop_table("partner_activity")
    op.drop_index("ix_partner_summaries_ranking", table_name="partner_summaries")
    with op.batch_alter_table("partner_summaries") as batch:
        batch.add_column(sa.Column("average_star", sa.Float(), nullable=False, server_default="0"))
        batch.drop_column("score")
        batch.drop_column("star_sum")
