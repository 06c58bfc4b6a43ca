"""Configuration from the environment: the contract's variables and their defaults.

This is the only module that reads the process environment (a test checks it): every
other module receives what it needs as values, built here by one function per concern
(`Settings.from_env`, `kafka_security`, `log_settings`, `web_settings`,
`worker_health_port`, `auth_settings`, `failpoint_spec`, `tool_settings`,
`operator_broker`). A value that is only a shape here (an ATTEMPTS/SECONDS limit, an
argon2 cost, a Kafka protocol) is checked by the module that uses it, with the same
one-line ConfigError.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    "AUTH_RATE_LIMIT_LOGIN_FAILURES_PER_EMAIL_AND_ADDRESS",
    "AUTH_RATE_LIMIT_LOGIN_FAILURES_PER_EMAIL",
    "TRUSTED_PROXY_HOPS",
    DEV_MODE_VARIABLE,
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WORKER_HEALTH_PORT",
    "WORKER_JOIN_TIMEOUT_SECONDS",
    "WORKER_TRANSACTION",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "OUTBOX_RETENTION_HOURS",
    "INBOX_RETENTION_DAYS",
    "SIGNUP_PIPELINE_FAILPOINTS",  # fault-injection tests only; see shared/messaging/failpoints.py
)
# Read by the developer tools only (`signup-pipeline bench`), never by a pipeline process.
BENCH_POSTGRES_VARIABLE = "BENCH_POSTGRES_URL"
# Read by the developer tools' local Apache Kafka (devtools/kafka_cluster.py) only: where
# scripts/ensure-kafka-jars.sh keeps Kafka's jars, and the XDG cache it defaults under.
KAFKA_JARS_VARIABLE = "KAFKA_JARS_DIR"
XDG_CACHE_VARIABLE = "XDG_CACHE_HOME"

SERVICES = ("auth", "member", "batch")


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
    kafka_security: KafkaSecurity = field(default_factory=lambda: KafkaSecurity())

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings of `service` (auth, member or batch) from the environment."""
        env = _environment(env)
        return cls(
            service=service,
            database_url=env.get(f"{service.upper()}_DATABASE_URL") or default_sqlite_url(service),
            bootstrap_servers=bootstrap_servers(env) or [DEFAULT_BOOTSTRAP],
            dev_mode=env.get(DEV_MODE_VARIABLE, "") in ("1", "true", "yes"),
            outbox_retention=dt.timedelta(hours=_positive(env, "OUTBOX_RETENTION_HOURS", 24)),
            inbox_retention=dt.timedelta(days=_positive(env, "INBOX_RETENTION_DAYS", 14)),
            kafka_security=kafka_security(env),
        )


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """`env`, or this process's environment: the one place it is read."""
    return os.environ if env is None else env


def bootstrap_servers(env: Mapping[str, str] | None = None) -> list[str] | None:
    """KAFKA_BOOTSTRAP_SERVERS as a list of host:port, or None when it is not set (each
    caller says what stands in: the services localhost:9092, the developer tools a
    bundled broker). The one place the variable is parsed."""
    env = _environment(env)
    listed = env.get("KAFKA_BOOTSTRAP_SERVERS")
    if not listed:
        return None
    servers = [s.strip() for s in listed.split(",") if s.strip()]
    if not servers:
        raise ConfigError(
            f"KAFKA_BOOTSTRAP_SERVERS={listed!r} names no server: use host:port[,host:port]"
        )
    return servers


@dataclass(frozen=True)
class KafkaSecurity:
    """KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE as set (None: unset);
    shared/messaging/kafka.py checks them and turns them into client settings."""

    protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None


def kafka_security(env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """How every Kafka client of the process authenticates and encrypts."""
    env = _environment(env)
    return KafkaSecurity(
        protocol=env.get("KAFKA_SECURITY_PROTOCOL") or None,
        sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or None,
        sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
        sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
        ssl_cafile=env.get("KAFKA_SSL_CAFILE") or None,
    )


@dataclass(frozen=True)
class LogSettings:
    """LOG_LEVEL and LOG_FORMAT as set (None: unset; shared/telemetry/logs.py checks them
    and supplies INFO and json)."""

    level: str | None = None
    format: str | None = None


def log_settings(env: Mapping[str, str] | None = None) -> LogSettings:
    """How the process logs."""
    env = _environment(env)
    return LogSettings(level=env.get("LOG_LEVEL") or None, format=env.get("LOG_FORMAT") or None)


@dataclass(frozen=True)
class WebSettings:
    """An API process: gunicorn workers and threads, and where the workers' metrics go."""

    workers: int = 2
    threads: int = 4
    metrics_directory: str | None = None  # PROMETHEUS_MULTIPROC_DIR: a parent directory


def web_settings(env: Mapping[str, str] | None = None) -> WebSettings:
    """WEB_CONCURRENCY, WEB_THREADS, PROMETHEUS_MULTIPROC_DIR."""
    env = _environment(env)
    default = WebSettings()
    return WebSettings(
        workers=env_int("WEB_CONCURRENCY", default.workers, env),
        threads=env_int("WEB_THREADS", default.threads, env),
        metrics_directory=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
    )


def worker_health_port(env: Mapping[str, str] | None = None) -> int | None:
    """WORKER_HEALTH_PORT: a worker's health port when --health-port is not given."""
    return env_int("WORKER_HEALTH_PORT", None, env)


WORKER_JOIN_TIMEOUT_VARIABLE = "WORKER_JOIN_TIMEOUT_SECONDS"


def worker_join_timeout(env: Mapping[str, str] | None = None) -> float:
    """WORKER_JOIN_TIMEOUT_SECONDS (default 120): how long a worker may stay outside its
    consumer group (joining, or rebalancing) with the broker reachable before its
    `/health/live` fails, so that an orchestrator replaces it."""
    return _positive(_environment(env), WORKER_JOIN_TIMEOUT_VARIABLE, 120.0)


WORKER_TRANSACTION_VARIABLE = "WORKER_TRANSACTION"


def one_event_per_transaction(env: Mapping[str, str] | None = None) -> bool:
    """WORKER_TRANSACTION: `batch` (the default) applies each poll's records in one
    transaction; `event` gives every record its own, the way a worker without batching
    works (the benchmark's baseline; slower, never needed for correctness)."""
    value = _environment(env).get(WORKER_TRANSACTION_VARIABLE, "batch").strip() or "batch"
    if value not in ("batch", "event"):
        raise ConfigError(f"{WORKER_TRANSACTION_VARIABLE} is batch or event, not {value!r}")
    return value == "event"


# The auth API's rate limits, each overridable by its own variable.
RATE_LIMIT_KINDS = (
    "signup-per-address",
    "signup-per-email",
    "login-per-address",
    "login-failures-per-email-and-address",
    "login-failures-per-email",
)
# Gone, and refused when set: a per-email login limit let anyone lock its owner out.
RETIRED_RATE_LIMIT_VARIABLE = "AUTH_RATE_LIMIT_LOGIN_PER_EMAIL"
RATE_LIMIT_VARIABLES = {
    kind: "AUTH_RATE_LIMIT_" + kind.upper().replace("-", "_") for kind in RATE_LIMIT_KINDS
}


@dataclass(frozen=True)
class RateLimitSettings:
    """AUTH_RATE_LIMITS, AUTH_RATE_LIMIT_REDIS_URL and AUTH_RATE_LIMIT_<KIND> as set
    (auth_service/ratelimit.py checks them and supplies the defaults)."""

    switch: str | None = None
    redis_url: str | None = None
    limits: Mapping[str, str] = field(default_factory=dict)  # kind -> ATTEMPTS/SECONDS


def rate_limit_settings(env: Mapping[str, str] | None = None) -> RateLimitSettings:
    """The auth API's rate-limit variables."""
    env = _environment(env)
    if env.get(RETIRED_RATE_LIMIT_VARIABLE):
        raise ConfigError(
            f"{RETIRED_RATE_LIMIT_VARIABLE} is no longer read: refusing an email's logins "
            "let anyone lock its owner out. Failed logins are now limited per email and "
            "client address (AUTH_RATE_LIMIT_LOGIN_FAILURES_PER_EMAIL_AND_ADDRESS) and, per "
            "email, slow logins down instead (AUTH_RATE_LIMIT_LOGIN_FAILURES_PER_EMAIL)"
        )
    return RateLimitSettings(
        switch=env.get("AUTH_RATE_LIMITS") or None,
        redis_url=env.get("AUTH_RATE_LIMIT_REDIS_URL") or None,
        limits={
            kind: value
            for kind, variable in RATE_LIMIT_VARIABLES.items()
            if (value := env.get(variable))
        },
    )


@dataclass(frozen=True)
class AuthSettings:
    """What the auth API reads besides `Settings`: its JWT key (empty when unset), the
    argon2 costs (None: the service's default), rate limits and trusted proxies."""

    jwt_secret: str = field(default="", repr=False)
    argon2_time_cost: int | None = None
    argon2_memory_kib: int | None = None
    argon2_parallelism: int | None = None
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    trusted_proxy_hops: int = 0


def auth_settings(env: Mapping[str, str] | None = None) -> AuthSettings:
    """AUTH_JWT_SECRET, ARGON2_*, AUTH_RATE_LIMIT*, TRUSTED_PROXY_HOPS."""
    env = _environment(env)
    return AuthSettings(
        jwt_secret=env.get("AUTH_JWT_SECRET", ""),
        argon2_time_cost=env_int("ARGON2_TIME_COST", None, env),
        argon2_memory_kib=env_int("ARGON2_MEMORY_KIB", None, env),
        argon2_parallelism=env_int("ARGON2_PARALLELISM", None, env),
        rate_limits=rate_limit_settings(env),
        trusted_proxy_hops=env_int("TRUSTED_PROXY_HOPS", 0, env),
    )


def failpoint_spec(env: Mapping[str, str] | None = None) -> str:
    """SIGNUP_PIPELINE_FAILPOINTS (fault-injection tests only); empty when unset."""
    env = _environment(env)
    return env.get("SIGNUP_PIPELINE_FAILPOINTS", "")


@dataclass(frozen=True)
class ToolSettings:
    """What the developer tools (`signup-pipeline dev`, `demo`, `bench`) take from the
    shell: an external broker and databases instead of the bundled ones, the log format
    for the processes they start, the benchmark's PostgreSQL server."""

    database_urls: Mapping[str, str] = field(default_factory=dict)  # service -> URL, if set
    bootstrap_servers: list[str] | None = None
    log_format: str | None = None
    bench_postgres_url: str | None = None


def tool_settings(env: Mapping[str, str] | None = None) -> ToolSettings:
    """The developer tools' view of the environment (see ToolSettings)."""
    env = _environment(env)
    return ToolSettings(
        database_urls={
            service: url
            for service in SERVICES
            if (url := env.get(f"{service.upper()}_DATABASE_URL"))
        },
        bootstrap_servers=bootstrap_servers(env),
        log_format=env.get("LOG_FORMAT") or None,
        bench_postgres_url=env.get(BENCH_POSTGRES_VARIABLE) or None,
    )


def kafka_jars_dir(default_name: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the local Apache Kafka's jars are kept: KAFKA_JARS_DIR, or
    `signup-pipeline/<default_name>` under the XDG cache (~/.cache)."""
    env = _environment(env)
    if override := env.get(KAFKA_JARS_VARIABLE):
        return Path(override)
    cache = env.get(XDG_CACHE_VARIABLE) or str(Path.home() / ".cache")
    return Path(cache) / "signup-pipeline" / default_name


def child_environment() -> dict[str, str]:
    """A copy of this process's environment, for a child process the developer tools
    start (which then reads its settings through this module, as every process does)."""
    return dict(os.environ)


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


def dev_broker_file() -> Path:
    """Where `signup-pipeline dev` writes the address of the broker it started
    (./var/dev-broker, beside the SQLite files), for the operator commands run in another
    terminal of the same directory without KAFKA_BOOTSTRAP_SERVERS."""
    return Path.cwd() / "var" / "dev-broker"


@dataclass(frozen=True)
class OperatorBroker:
    """The broker the operator commands (status, trace, dlt) read, and where its address
    came from (for their messages): KAFKA_BOOTSTRAP_SERVERS, the file `signup-pipeline
    dev` left (`dev_broker_file()`), or the services' default."""

    servers: list[str]
    origin: str  # for a message: "from KAFKA_BOOTSTRAP_SERVERS", "from …/var/dev-broker, …"


def operator_broker(env: Mapping[str, str] | None = None) -> OperatorBroker:
    """KAFKA_BOOTSTRAP_SERVERS when set; else the address in ./var/dev-broker when a
    `signup-pipeline dev` of this directory left one; else localhost:9092. The operator
    commands only: a service never reads the file (a stale one must not redirect it)."""
    servers = bootstrap_servers(env)
    if servers:
        return OperatorBroker(servers, "from KAFKA_BOOTSTRAP_SERVERS")
    path = dev_broker_file()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    listed = [s.strip() for s in (lines[0] if lines else "").split(",") if s.strip()]
    if listed:
        origin = f"from {path}, left by signup-pipeline dev: is it still running?"
        return OperatorBroker(listed, origin)
    return OperatorBroker(
        [DEFAULT_BOOTSTRAP],
        "the default: KAFKA_BOOTSTRAP_SERVERS is not set and no signup-pipeline dev "
        "left ./var/dev-broker",
    )


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
    env = _environment(env)
    value = env.get(variable)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{variable}={value!r} is not a whole number") from None
