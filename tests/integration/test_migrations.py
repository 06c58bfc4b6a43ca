"""Each service's Alembic history builds, on SQLite and PostgreSQL, exactly the schema
its models describe."""

from __future__ import annotations

import logging

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from auth_service.models import Base as AuthBase
from batch_service.models import Base as BatchBase
from member_service.models import Base as MemberBase
from shared.storage.db import make_engine
from shared.storage.migrations import alembic_config, current_revision, head_revision, upgrade

pytestmark = pytest.mark.integration

SERVICES = {"auth": AuthBase, "member": MemberBase, "batch": BatchBase}


@pytest.mark.parametrize("service", list(SERVICES))
def test_empty_database_upgraded_to_head_matches_the_models(
    service: str, database_url: str
) -> None:
    upgrade(service, database_url)

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, SERVICES[service].metadata)
            revision = current_revision(connection)
    finally:
        engine.dispose()
    assert differences == []
    assert revision == head_revision(service)


@pytest.mark.parametrize("service", list(SERVICES))
def test_history_downgrades_to_nothing_and_upgrades_again(service: str, database_url: str) -> None:
    config = alembic_config(service, database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")

    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    command.upgrade(config, "head")


def test_upgrading_twice_is_a_no_op(database_url: str) -> None:
    upgrade("member", database_url)
    upgrade("member", database_url)


def test_member_roles_are_filled_from_existing_profiles_and_a_uuid_with_both_is_not_merged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """0004: every existing profile gets its role; a uuid the old bug gave both a users and
    a partners row keeps USER and is named in a warning, for the operator to settle."""
    upgrade("member", database_url, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            for table, uuid in [
                ("users", "u-1"),
                ("partners", "p-1"),
                ("users", "both-1"),
                ("partners", "both-1"),
            ]:
                connection.execute(
                    text(
                        f"INSERT INTO {table} (uuid, nickname, created_at) "  # noqa: S608
                        "VALUES (:uuid, 'n', CURRENT_TIMESTAMP)"
                    ),
                    {"uuid": uuid},
                )
        with caplog.at_level(logging.WARNING):
            upgrade("member", database_url)
        with engine.connect() as connection:
            roles = dict(connection.execute(text("SELECT uuid, role FROM member_roles")).all())
    finally:
        engine.dispose()
    assert roles == {"u-1": "USER", "p-1": "PARTNER", "both-1": "USER"}
    assert any("both-1" in record.getMessage() for record in caplog.records)


def test_email_keys_take_the_new_normal_form_and_one_mailbox_is_reported_not_merged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """auth 0003: keys become the mailbox's normal form; two accounts that are now one
    mailbox are not merged (the oldest keeps the key, the other is named in a warning
    and cannot log in by email); an address now refused keeps its key, with a warning."""
    upgrade("auth", database_url, "0002")
    accounts = [  # uuid, email as typed; created in this order
        ("a-1", "IDN@bücher.de"),
        ("a-2", "idn@xn--bcher-kva.de"),
        ("a-3", "fw@ｅｘａｍｐｌｅ.com"),
        ("a-4", "Kim@Example.com"),
        ("a-5", '"quoted"@example.com'),
    ]
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            for n, (uuid, email) in enumerate(accounts):
                connection.execute(
                    text(
                        "INSERT INTO members (uuid, email, email_key, password_hash, name, "
                        "phone, birth, gender, role, nickname, created_at) VALUES (:uuid, "
                        ":email, :key, 'h', 'n', '+1-555-0100', '1990-01-01', 'OTHER', "
                        "'USER', 'nick', :created)"
                    ),
                    {
                        "uuid": uuid,
                        "email": email,
                        "key": email.lower(),
                        "created": f"2026-01-01 00:00:0{n}",
                    },
                )
        with caplog.at_level(logging.WARNING):
            upgrade("auth", database_url)
        with engine.connect() as connection:
            keys = dict(connection.execute(text("SELECT uuid, email_key FROM members")).all())
            emails = dict(connection.execute(text("SELECT uuid, email FROM members")).all())
        config = alembic_config("auth", database_url)
        command.downgrade(config, "0002")  # and back: the old keys again
        with engine.connect() as connection:
            restored = dict(connection.execute(text("SELECT uuid, email_key FROM members")).all())
    finally:
        engine.dispose()
    assert keys == {
        "a-1": "idn@xn--bcher-kva.de",
        "a-2": "a-2",
        "a-3": "fw@example.com",
        "a-4": "kim@example.com",
        "a-5": '"quoted"@example.com',
    }
    assert emails == dict(accounts)  # as typed, untouched
    warnings = [record.getMessage() for record in caplog.records]
    assert any("a-1 and a-2 are one mailbox" in line for line in warnings), warnings
    assert any("a-5" in line and "no longer accepted" in line for line in warnings), warnings
    assert restored == {uuid: email.lower() for uuid, email in accounts}
