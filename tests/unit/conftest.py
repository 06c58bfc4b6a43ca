"""The unit tier is hermetic: no PostgreSQL, broker, Redis, Java or other external tool.

A test here that reaches for one fails loudly, naming what it tried, instead of passing
on a machine that happens to run the server. Such a test belongs in tests/integration
(servers) or tests/deployment (docker-compose, shellcheck, keytool, java).

Allowed: SQLite files, Flask test clients, loopback servers a test starts itself, and
connections to a loopback port nothing listens on (to prove 'unreachable' handling).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

# PostgreSQL, Redis and the usual Kafka ports: nothing in the unit tier may dial them,
# even on loopback, where the developer's or CI's real servers listen.
SERVER_PORTS = {5432: "PostgreSQL", 6379: "Redis", 9092: "Kafka", 9093: "Kafka", 29092: "Kafka"}
# Programs whose presence would make a unit test depend on the machine.
FORBIDDEN_PROGRAMS = {
    "java",
    "javac",
    "keytool",
    "docker",
    "docker-compose",
    "shellcheck",
    "redis-server",
    "redis-cli",
    "postgres",
    "pg_ctl",
    "psql",
    "initdb",
    "tansu",
}
WHERE_INSTEAD = "unit tests are hermetic: move this test to tests/integration or tests/deployment"


class NotHermetic(AssertionError):
    """A unit test reached outside its process for a server or an external tool."""


def _refuse(what: str) -> NoReturn:
    raise NotHermetic(f"{what}: {WHERE_INSTEAD}")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _check_address(family: int, address: Any) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # AF_UNIX socketpairs and the like stay in the machine and the test
    host, port = str(address[0]), int(address[1])
    if not _is_loopback(host):
        _refuse(f"connection to {host}:{port}")
    if port in SERVER_PORTS:
        _refuse(f"connection to {SERVER_PORTS[port]} at {host}:{port}")


def _program(args: Any) -> str:
    if isinstance(args, (str, bytes, os.PathLike)):
        first = os.fsdecode(args).split()[0] if os.fsdecode(args).split() else ""
    else:
        first = os.fsdecode(list(args)[0]) if args else ""
    return Path(first).name


@pytest.fixture(autouse=True, scope="module")
def hermetic() -> Iterator[None]:
    """Forbids, for every module of the unit tier, sockets to non-loopback hosts or to
    server ports, PostgreSQL connections through psycopg2, and running the tools above.
    Module-scoped (not session) so that a run of several tiers in one pytest gets the
    guard only while unit modules run."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_popen_init = subprocess.Popen.__init__

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self.family, address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self.family, address)
        return original_connect_ex(self, address)

    def popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        program = _program(kwargs.get("executable") or args)
        if program in FORBIDDEN_PROGRAMS:
            _refuse(f"running {program}")
        original_popen_init(self, args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(subprocess.Popen, "__init__", popen_init)
        try:
            import psycopg2
        except ImportError:  # pragma: no cover - the dev install has it
            pass
        else:
            # libpq opens its own sockets, out of Python's sight: check its target here.
            original_pg_connect = psycopg2.connect

            def pg_connect(dsn: str | None = None, *args: Any, **kwargs: Any) -> Any:
                params = psycopg2.extensions.parse_dsn(dsn) if dsn else {}
                params.update({k: v for k, v in kwargs.items() if v is not None})
                host = str(params.get("host") or "a local socket")
                port = int(params.get("port") or 5432)
                if port in SERVER_PORTS or not _is_loopback(host):
                    _refuse(f"PostgreSQL connection to {host}:{port}")
                return original_pg_connect(dsn, *args, **kwargs)

            patch.setattr(psycopg2, "connect", pg_connect)
        yield


# The servers the other tiers get from tests/conftest.py are refused here by name.


@pytest.fixture(scope="session")
def postgres() -> NoReturn:
    _refuse("the postgres fixture (a real PostgreSQL)")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> NoReturn:
    _refuse("the kafka_bootstrap fixture (a real broker)")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh SQLite database. tests/integration/test_auth_api_on_postgres.py runs the
    unit classes that take `database_url` again on PostgreSQL."""
    return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
