"""One mailbox, one account: recompute every email_key in the new normal form.

email_key was the address lower-cased. It is now the normal form of
auth_service/emails.py (the domain in IDNA ASCII, the local part NFC then NFKC,
lower-cased), under which `idn@bücher.de` and `idn@xn--bcher-kva.de` are one key.

Accounts that were distinct keys and are one mailbox now are not merged: the oldest
(by created_at, then uuid) keeps the mailbox's key; each other one gets its uuid as its
key (which no address can equal), so it can no longer log in by email, and the migration
logs a warning naming both uuids, for the operator to settle (tell the owner, delete or
merge by hand). An account whose address the service now refuses (a quoted local part,
an invisible character...) keeps its old key and is named in a warning: it cannot log
in until its email is corrected.

This uses the service's normal form as it is today; changing that form later comes
with its own migration.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from auth_service.emails import EmailNotAccepted, email_key

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

members = sa.table(
    "members",
    sa.column("uuid", sa.String),
    sa.column("email", sa.String),
    sa.column("email_key", sa.String),
    sa.column("created_at", sa.DateTime),
)


def _set_keys(bind: sa.Connection, keys: dict[str, str]) -> None:
    """Give each uuid its key without ever holding one key twice: first every changing
    row its uuid (unique, and no address), then its final key."""
    if not keys:
        return
    statement = (
        sa.update(members)
        .where(members.c.uuid == sa.bindparam("member"))
        .values(email_key=sa.bindparam("key"))
    )
    bind.execute(statement, [{"member": uuid, "key": uuid} for uuid in keys])
    bind.execute(statement, [{"member": uuid, "key": key} for uuid, key in keys.items()])


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(members.c.uuid, members.c.email, members.c.email_key).order_by(
            members.c.created_at, members.c.uuid
        )
    ).all()
    mailboxes: dict[str, list[str]] = defaultdict(list)
    refused: dict[str, str] = {}  # uuid -> old key
    for row in rows:
        try:
            mailboxes[email_key(row.email.strip())].append(row.uuid)
        except EmailNotAccepted as exc:
            refused[row.uuid] = row.email_key
            log.warning(
                "account %s: its email is no longer accepted (%s); it keeps its old key "
                "and cannot log in until its email is corrected",
                row.uuid,
                exc,
            )
    old = {row.uuid: row.email_key for row in rows}
    keys: dict[str, str] = {}
    for key, uuids in mailboxes.items():
        kept, *others = uuids
        keys[kept] = key
        for other in others:
            keys[other] = other
            log.warning(
                "accounts %s and %s are one mailbox under the new email normal form; %s "
                "keeps it, %s cannot log in by email until an operator settles it",
                kept,
                other,
                kept,
                other,
            )
    for uuid, key in refused.items():
        if key in mailboxes:  # an old key that is now another account's normal form
            keys[uuid] = uuid
            log.warning("account %s: its old key is now another account's; set to its uuid", uuid)
    _set_keys(bind, {uuid: key for uuid, key in keys.items() if old[uuid] != key})


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(members.c.uuid, members.c.email)).all()
    _set_keys(bind, {row.uuid: row.email.strip().lower() for row in rows})
