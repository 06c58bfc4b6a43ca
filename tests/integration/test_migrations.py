"""Each service's Alembic history builds, on SQLite and PostgreSQL, exactly the schema
its models describe."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

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
