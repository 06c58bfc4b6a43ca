"""Database plumbing every service shares: engines, sessions and the unit of work."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, Integer, create_engine, event, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from shared.config import ConfigError
from shared.private_files import create_private_file, private_directory

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
BigIntegerPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always UTC and timezone-aware, also on SQLite (which drops zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware UTC time")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def make_engine(url: str) -> Engine:
    """An engine for a PostgreSQL or SQLite URL, tuned for this pipeline's write pattern.

    `hide_parameters`: a database error's text would otherwise carry the statement's
    values (an email, a password hash) into whatever logs or re-raises it."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database URL {url!r} is not a SQLAlchemy URL: {exc}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(url, parsed.database)
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True
        )
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"database URL {url!r} names a driver that is not installed ({exc}); "
            "use postgresql+psycopg2://... or sqlite:///path"
        ) from None


def _sqlite_engine(url: str, database: str | None) -> Engine:
    """A file of its own is private (issue 16, item 7: it holds password hashes and
    personal data): its directory, if this creates it, is 0700 and the file is created
    0600 before SQLite opens it, whatever the umask. SQLite gives its -wal, -shm and
    -journal files the database file's own mode (os_unix.c, findCreateFileMode), so they
    are 0600 too. An existing file or directory is left as it is."""
    path = Path(database) if database and database != ":memory:" else None
    if path is not None and (database or "").startswith("file:"):
        path = None  # a SQLite URI (?uri=true): its options, not a path, say what to open
    if path is not None:
        private_directory(path.parent)
    engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

    if path is not None:
        private_path = path

        @event.listens_for(engine, "do_connect")
        def _create_private(*_: Any) -> None:
            # At each connection, not now: a file removed meanwhile is created private
            # again, and making an engine still touches nothing but the directory. If it
            # cannot be created, SQLite says why in its own error, as before.
            with contextlib.suppress(OSError):
                create_private_file(private_path)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # SQLite has one writer. Taking the write lock up front makes a second writer
        # wait (busy timeout) instead of failing with SQLITE_BUSY on lock upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def check_connection(engine: Engine) -> None:
    """Raise if the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


class Database:
    """One service's database: its engine, its session factory, and its tables."""

    def __init__(self, engine: Engine, metadata: Any) -> None:
        self.engine = engine
        self.metadata = metadata
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, metadata: Any) -> Database:
        """Connect lazily to the database at `url`."""
        return cls(make_engine(url), metadata)

    def unit_of_work(self, after_commit: Callable[[], None] | None = None) -> UnitOfWork:
        """A new unit of work on this database."""
        return UnitOfWork(self.sessions, after_commit)


class UnitOfWork:
    """One transaction: everything done inside is committed together or not at all.

    Leaving the block without `commit()` rolls back. `after_commit` runs only once the
    commit succeeded (it wakes the outbox relay, never before the row is visible).
    """

    session: Session

    def __init__(
        self, sessions: sessionmaker[Session], after_commit: Callable[[], None] | None = None
    ) -> None:
        self._sessions = sessions
        self._after_commit = after_commit
        self._staged: dict[type[Any], list[dict[str, Any]]] = {}

    def __enter__(self) -> UnitOfWork:
        self.session = self._sessions()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed, and, unlike rollback(), leaves
        # loaded objects readable (detached, not expired) for the caller.
        self._staged.clear()
        self.session.close()

    def insert(self, model: type[Any], values: dict[str, Any]) -> None:
        """Stage a row of `model`. Staged rows are written at `flush()`, one multi-row
        INSERT per model in the order models were first staged: a consumer applying a
        batch of events pays one round trip per table, not one per row."""
        self._staged.setdefault(model, []).append(values)

    def flush(self) -> None:
        """Write what was added to the session, then the staged rows."""
        self.session.flush()
        for model, rows in self._staged.items():
            # Core, not the ORM's bulk path: the rows are plain dicts, nothing to track.
            self.session.connection().execute(insert(model.__table__), rows)
        self._staged.clear()

    def lock(self, key: str) -> None:
        """Serialise, per `key`, the transactions that take this lock: on PostgreSQL a
        transaction-level advisory lock on 64 bits of a hash of the whole key (a uuid's
        own first bits may be shared), held until commit or rollback, so the second
        transaction waits and its next statement sees what the first committed. SQLite
        has one writer at a time (BEGIN IMMEDIATE): nothing to do."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        self.session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _lock_id(key)})

    def lock_all(self, keys: Iterable[str]) -> None:
        """`lock(key)` for every key, in one statement and in one global order (of the
        lock ids), so that two transactions locking overlapping sets never wait for each
        other in a cycle. A key already held by this transaction is taken again at no
        cost (advisory locks are re-entrant within a session)."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        ids = sorted({_lock_id(key) for key in keys})
        if ids:
            # unnest yields the array in order, and each row's lock is taken as the row
            # is produced (an ORDER BY would sort only after every lock was taken).
            self.session.execute(
                text("SELECT count(pg_advisory_xact_lock(id)) FROM unnest(:ids) AS id"),
                {"ids": ids},
            )

    def commit(self) -> None:
        """Flush, commit the transaction, then run the after-commit hook."""
        self.flush()
        self.session.commit()
        if self._after_commit is not None:
            self._after_commit()


def _lock_id(key: str) -> int:
    """The advisory lock of `key`: 64 bits of a hash of the whole key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def insert_or_skip(session: Session) -> Any:
    """The dialect's INSERT, the one with `on_conflict_do_nothing()` (PostgreSQL or
    SQLite, the two this project runs on)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def redact_url(url: str) -> str:
    """A database URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<not a database URL>"


def failure_reason(exc: BaseException) -> str:
    """One line saying why: the driver's own message rather than SQLAlchemy's wrapping."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return first or type(exc).__name__
