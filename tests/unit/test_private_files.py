"""What a local run writes is its user's alone (issue 16, item 7): the SQLite databases
(password hashes, personal data) with their -wal, -shm and -journal files, and their
directory; the logs and their directory. Checked under a permissive umask (022, the
usual one), which used to leave them all readable by every local user."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.private_files import create_private_file, open_private_log, private_directory
from shared.storage.db import make_engine


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(*paths: Path) -> dict[str, str]:
    return {path.name: oct(mode(path)) for path in paths}


def test_a_sqlite_database_its_wal_shm_and_journal_and_its_directory_are_private(
    tmp_path: Path,
) -> None:
    database = tmp_path / "var" / "auth.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            connection.execute(text("CREATE TABLE member (email TEXT)"))
            connection.execute(text("INSERT INTO member VALUES ('someone@example.com')"))
            connection.commit()
            # Still connected: the write-ahead log and its index are there.
            wal = database.with_name("auth.db-wal")
            shm = database.with_name("auth.db-shm")
            assert modes(database.parent) == {"var": "0o700"}
            assert modes(database, wal, shm) == {
                "auth.db": "0o600",
                "auth.db-wal": "0o600",
                "auth.db-shm": "0o600",
            }
    finally:
        engine.dispose()
    # Out of WAL mode, a write leaves a rollback journal (TRUNCATE keeps it): SQLite gives
    # it the database's mode too.
    with sqlite3.connect(database) as raw:
        raw.execute("PRAGMA journal_mode=TRUNCATE")
        raw.execute("INSERT INTO member VALUES ('other@example.com')")
    raw.close()
    assert modes(database.with_name("auth.db-journal")) == {"auth.db-journal": "0o600"}


def test_a_database_removed_while_its_engine_lives_comes_back_private(tmp_path: Path) -> None:
    database = tmp_path / "var" / "batch.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        database.unlink()
        with engine.connect() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.commit()
        assert modes(database) == {"batch.db": "0o600"}
    finally:
        engine.dispose()


def test_an_existing_database_and_directory_chosen_by_the_operator_keep_their_modes(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    database = shared / "member.db"
    sqlite3.connect(database).close()
    os.chmod(database, 0o640)
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert modes(shared, database) == {"shared": "0o750", "member.db": "0o640"}


def test_every_directory_made_for_a_path_is_private_and_the_tools_own_is_tightened(
    tmp_path: Path,
) -> None:
    deep = private_directory(tmp_path / "a" / "b" / "logs")
    assert modes(tmp_path / "a", tmp_path / "a" / "b", deep) == {
        "a": "0o700",
        "b": "0o700",
        "logs": "0o700",
    }
    old = tmp_path / "old-logs"
    old.mkdir()
    assert mode(old) == 0o755
    private_directory(old)
    assert mode(old) == 0o755  # not the tool's own: left alone
    private_directory(old, tighten=True)
    assert mode(old) == 0o700


def test_a_log_file_is_private_when_made_and_made_private_when_an_older_run_left_it_open(
    tmp_path: Path,
) -> None:
    fresh, older = tmp_path / "auth-api.log", tmp_path / "broker.log"
    older.write_bytes(b"an older run's line\n")
    assert mode(older) == 0o644
    for path in (fresh, older):
        with open_private_log(path) as log:
            log.write(b"a line\n")
    assert modes(fresh, older) == {"auth-api.log": "0o600", "broker.log": "0o600"}
    assert older.read_bytes() == b"an older run's line\na line\n"  # appended to


def test_a_private_file_is_created_once(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    assert create_private_file(path) is True
    os.chmod(path, 0o640)
    assert create_private_file(path) is False
    assert mode(path) == 0o640
