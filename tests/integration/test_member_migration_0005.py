"""Member migration 0005, on SQLite and PostgreSQL: nickname keys filled from the
existing profiles, members that already share one not merged, and back again."""

from __future__ import annotations

import logging

import pytest
from alembic import command
from sqlalchemy import inspect, text

from shared.storage.db import make_engine
from shared.storage.migrations import alembic_config, upgrade

pytestmark = pytest.mark.integration


def test_nickname_keys_are_filled_and_a_shared_nickname_stays_with_the_oldest_member(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The oldest member with a key keeps it; each younger one gets NULL and is named in
    a warning with the one that keeps it. A uuid the old bug gave both a USER and a
    PARTNER profile is a USER since 0004: its users nickname counts."""
    upgrade("member", database_url, "0003")
    profiles = [  # table, uuid, nickname; created in this order
        ("users", "u-old", "Mimi"),
        ("partners", "p-young", "MIMI"),
        ("users", "u-youngest", "ｍｉｍｉ"),
        ("users", "u-other", "Other"),
        ("users", "both-1", "Both"),
        ("partners", "both-1", "Shop"),
        ("partners", "p-shop", "shop"),
    ]
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            for n, (table, uuid, nickname) in enumerate(profiles):
                connection.execute(
                    text(
                        f"INSERT INTO {table} (uuid, nickname, created_at) "  # noqa: S608
                        "VALUES (:uuid, :nickname, :created)"
                    ),
                    {"uuid": uuid, "nickname": nickname, "created": f"2026-01-01 00:00:0{n}"},
                )
        with caplog.at_level(logging.WARNING):
            upgrade("member", database_url)
        with engine.connect() as connection:
            keys = dict(
                connection.execute(text("SELECT uuid, nickname_key FROM member_roles")).all()
            )
            tables = set(inspect(connection).get_table_names())
        command.downgrade(alembic_config("member", database_url), "0004")
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("member_roles")}
            tables_after = set(inspect(connection).get_table_names())
        upgrade("member", database_url)  # and up again
    finally:
        engine.dispose()

    assert keys == {
        "u-old": "mimi",
        "p-young": None,
        "u-youngest": None,
        "u-other": "other",
        "both-1": "both",
        "p-shop": "shop",  # both-1's partners nickname counts for nothing
    }
    assert "deleted_members" in tables
    warnings = [record.getMessage() for record in caplog.records]
    assert any("u-old and p-young" in line for line in warnings), warnings
    assert any("u-old and u-youngest" in line for line in warnings), warnings
    assert not any("p-shop" in line or "Mimi" in line for line in warnings), warnings
    assert columns == {"uuid", "role"}
    assert "deleted_members" not in tables_after
