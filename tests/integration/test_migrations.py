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
