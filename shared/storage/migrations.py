"""Schema migrations: one Alembic history per service, in `<service>_service/migrations`.

`python -m <service>_service migrate` upgrades the service's database to head. Tables are
never made with `create_all` outside tests; a test checks that head matches the models.
"""

from __future__ import annotations

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, text

from shared.storage.db import make_engine

# Any constant works; it only has to be the same for every copy of one service.
_MIGRATION_LOCK = 7_150_001


def alembic_config(service: str, url: str) -> Config:
    """Alembic's configuration for `service`'s history on the database at `url`."""
    config = Config()
    config.set_main_option("script_location", f"{service}_service:migrations")
    config.attributes["database_url"] = url
    return config


def upgrade(service: str, url: str, revision: str = "head") -> None:
    """Bring the database to `revision` (head by default)."""
    command.upgrade(alembic_config(service, url), revision)


def head_revision(service: str) -> str | None:
    """The newest revision of `service`'s history."""
    config = alembic_config(service, "")
    return ScriptDirectory.from_config(config).get_current_head()


def is_older_revision(service: str, revision: str) -> bool:
    """True if `revision` is in `service`'s history (so head is newer or equal)."""
    scripts = ScriptDirectory.from_config(alembic_config(service, ""))
    return any(script.revision == revision for script in scripts.walk_revisions())


def current_revision(connection: Connection) -> str | None:
    """The revision the connected database is at, None if never migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def run_env(metadata: MetaData) -> None:
    """Body of each service's `env.py`: run the migrations online on the configured URL."""
    engine = make_engine(context.config.attributes["database_url"])
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # Copies of a service started together migrate one after the other.
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                    )
                context.run_migrations()
    finally:
        engine.dispose()
