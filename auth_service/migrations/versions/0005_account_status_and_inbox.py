"""The signup saga and account deletion (issue 17).

- `members.status` (PENDING, ACTIVE, REJECTED, DELETED), `status_reason` and
  `status_changed_at`. Accounts that exist already were made before the saga, whose
  profiles the member service created: they are ACTIVE (the server default).
- The personal columns become nullable: a REJECTED or DELETED account keeps only its
  uuid, role, status and times.
- `processed_events`: the auth worker's inbox (profile-created, profile-rejected).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PERSONAL: dict[str, sa.types.TypeEngine[Any]] = {
    "email": sa.String(length=254),
    "email_key": sa.String(length=254),
    "password_hash": sa.String(length=255),
    "name": sa.String(length=50),
    "phone": sa.String(length=20),
    "birth": sa.Date(),
    "gender": sa.String(length=10),
    "nickname": sa.String(length=20),
}


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=10), server_default="ACTIVE", nullable=False)
        )
        batch.add_column(sa.Column("status_reason", sa.String(length=40), nullable=True))
        batch.add_column(
            sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True)
        )
        for column, type_ in PERSONAL.items():
            batch.alter_column(column, existing_type=type_, nullable=True)
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_index(
        "ix_processed_events_processed_at", "processed_events", ["processed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
    op.drop_table("processed_events")
    # Erased accounts cannot be made whole again: they go with the downgrade.
    op.execute("DELETE FROM members WHERE status IN ('REJECTED', 'DELETED')")
    with op.batch_alter_table("members") as batch:
        for column, type_ in PERSONAL.items():
            batch.alter_column(column, existing_type=type_, nullable=False)
        batch.drop_column("status_changed_at")
        batch.drop_column("status_reason")
        batch.drop_column("status")
