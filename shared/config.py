"""Configuration from the environment: the contract's variables and their defaults."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import overload

DEFAULT_BOOTSTRAP = "localhost:9092"
DEV_MODE_VARIABLE = "SIGNUP_PIPELINE_DEV"

# Every variable a process of the pipeline reads (the README's configuration table).
# A test checks the code reads no other, and that docker-compose sets no other.
ENVIRONMENT = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "AUTH_DATABASE_URL",
    "MEMBER_DATABASE_URL",
    "BATCH_DATABASE_URL",
    "AUTH_JWT_SECRET",
    "ARGON2_TIME_COST",
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "AUTH_RATE_LIMITS",
    "AUTH_RATE_LIMIT_REDIS_URL",
    "AUTH_RATE_LIMIT_SIGNUP_PER_ADDRESS",
    "AUTH_RATE_LIMIT_SIGNUP_PER_EMAIL",
    "AUTH_RATE_LIMIT_LOGIN_PER_ADDRESS",
    "AUTH_RATE_LIMIT_LOGIN_PER_EMAIL",
    "TRUSTED_PROXY_HOPS",
    DEV_MODE_VARIABLE,
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WORKER_HEALTH_PORT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "OUTBOX_RETENTION_HOURS",
    "INBOX_RETENTION_DAYS",
    "SIGNUP_PIPELINE_FAILPOINTS",  # fault-injection tests only; see shared/messaging/failpoints.py
)


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """What one service process needs to know about the outside world."""

    service: str
    database_url: str
    bootstrap_servers: list[str]
    dev_mode: bool
    outbox_retention: dt.timedelta = dt.timedelta(hours=24)
    inbox_retention: dt.timedelta = dt.timedelta(days=14)

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings of `service` (auth, member or batch) from the environment."""
        env = os.environ if env is None else env
        variable = f"{service.upper()}_DATABASE_URL"
        database_url = env.get(variable) or default_sqlite_url(service)
        listed = env.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP
        servers = [s.strip() for s in listed.split(",") if s.strip()]
        if not servers:
            raise ConfigError(
                f"KAFKA_BOOTSTRAP_SERVERS={listed!r} names no server: use host:port[,host:port]"
            )
        return cls(
            service=service,
            database_url=database_url,
            bootstrap_servers=servers,
            dev_mode=env.get(DEV_MODE_VARIABLE, "") in ("1", "true", "yes"),
            outbox_retention=dt.timedelta(hours=_positive(env, "OUTBOX_RETENTION_HOURS", 24)),
            inbox_retention=dt.timedelta(days=_positive(env, "INBOX_RETENTION_DAYS", 14)),
        )


def _positive(env: Mapping[str, str], variable: str, default: float) -> float:
    value = env.get(variable)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise ConfigError(f"{variable}={value!r} must be a positive number")
    return number


def default_sqlite_url(service: str) -> str:
    """The embedded default: one SQLite file per service under ./var/."""
    path = Path.cwd() / "var" / f"{service}.db"
    return f"sqlite:///{path}"


@overload
def env_int(variable: str, default: int, env: Mapping[str, str] | None = None) -> int: ...


@overload
def env_int(variable: str, default: None, env: Mapping[str, str] | None = None) -> int | None: ...


def env_int(variable: str, default: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """An integer setting from `env` (the environment by default); a clear error if it is
    not one."""
    value = (os.environ if env is None else env).get(variable)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{variable}={value!r} is not a whole number") from None
