"""A misconfigured process stops at start with one readable line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.broker import LocalBroker, free_port

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")}
    clean.pop("AUTH_JWT_SECRET", None)
    clean.pop("SIGNUP_PIPELINE_DEV", None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=clean | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "is not a SQLAlchemy URL"),
        ("mysql://user@localhost/db", "names a driver that is not installed"),
        ("postgresql+psycopg2://postgres@127.0.0.1:9/x?connect_timeout=2", "cannot reach"),
    ],
)
def test_bad_database_url_is_one_clear_line(url: str, needle: str, tmp_path: Path) -> None:
    result = run(["member_service", "worker"], {"MEMBER_DATABASE_URL": url}, tmp_path)
    assert_one_line_error(result, needle, "MEMBER_DATABASE_URL" if "reach" in needle else "")


def test_unmigrated_database_names_the_migrate_command(tmp_path: Path) -> None:
    result = run(["batch_service", "api"], {}, tmp_path)
    assert_one_line_error(result, "python -m batch_service migrate")


def test_unreachable_broker_is_one_clear_line(tmp_path: Path) -> None:
    assert run(["member_service", "migrate"], {}, tmp_path).returncode == 0
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = run(["member_service", "worker"], env, tmp_path)
    assert_one_line_error(result, "cannot reach Kafka", "KAFKA_BOOTSTRAP_SERVERS")


@pytest.mark.parametrize(
    ("env", "needle"),
    [({}, "AUTH_JWT_SECRET is not set"), ({"AUTH_JWT_SECRET": "short"}, "shorter than 32")],
)
def test_auth_api_refuses_to_start_without_a_real_secret_outside_dev_mode(
    env: dict[str, str], needle: str, tmp_path: Path
) -> None:
    assert run(["auth_service", "migrate"], {}, tmp_path).returncode == 0
    result = run(["auth_service", "api"], env, tmp_path)
    assert_one_line_error(result, needle)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not a level"),
        ({"WEB_CONCURRENCY": "many"}, "WEB_CONCURRENCY='many' is not a whole number"),
    ],
)
def test_bad_process_setting_is_one_clear_line(
    env: dict[str, str], needle: str, tmp_path: Path
) -> None:
    result = run(["member_service", "api"], env, tmp_path)
    assert_one_line_error(result, needle)


def test_missing_topics_outside_dev_mode_are_named_not_created(tmp_path: Path) -> None:
    assert run(["batch_service", "migrate"], {}, tmp_path).returncode == 0
    with LocalBroker() as empty_broker:
        env = {"KAFKA_BOOTSTRAP_SERVERS": empty_broker.bootstrap_servers}
        result = run(["batch_service", "worker"], env, tmp_path)
    assert_one_line_error(result, "lacks topics", "partner-created", "kafka-topics")


def test_a_newer_schema_than_the_code_knows_is_accepted_for_rolling_deploys(
    tmp_path: Path,
) -> None:
    from sqlalchemy import create_engine, text

    from batch_service.models import Base
    from shared.config import Settings
    from shared.runtime import open_database

    url = f"sqlite:///{tmp_path / 'batch.db'}"
    assert run(["batch_service", "migrate"], {"BATCH_DATABASE_URL": url}, tmp_path).returncode == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    engine.dispose()

    settings = Settings.from_env("batch", {"BATCH_DATABASE_URL": url})
    open_database(settings, Base.metadata).engine.dispose()
