"""Index members.created_at and outbox.key.

`signup-pipeline status` counts the members created in the last minute
(created_at >= now - 60 s) on every refresh, and `signup-pipeline trace <uuid>` finds a
signup's outbox row by (topic, key). Without these indexes both are full scans of tables
that only grow (members) or hold a day of events (outbox).

The outbox index is on key alone: this outbox carries one topic (profile-insert), so
topic does not narrow a lookup, and the key (the member's uuid) matches one row.

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
    op.create_index("ix_members_created_at", "members", ["created_at"], unique=False)
    op.create_index("ix_outbox_key", "outbox", ["key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outbox_key", table_name="outbox")
    op.drop_index("ix_members_created_at", table_name="members")
