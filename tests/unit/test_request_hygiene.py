"""Every answer of every API, success or error, carries the security headers and is
JSON (or the Prometheus text of /metrics): never HTML, never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from auth_service.api import create_app as create_auth_app
from auth_service.handlers import TokenIssuer
from auth_service.models import Base as AuthBase
from auth_service.ratelimit import Limit, MemoryCounter, RateLimiter
from batch_service.api import create_app as create_batch_app
from batch_service.models import Base as BatchBase
from member_service.api import create_app as create_member_app
from member_service.models import Base as MemberBase
from shared.http.web import SECURITY_HEADERS
from shared.storage.db import Database
from tests.schema import create_tables
from tests.unit.pipeline_harness import FAST_HASHER, signup_body

UUID = "00000000-0000-4000-8000-000000000000"


SECRET_IN_THE_ERROR = "a detail of the failure that must not reach the client"


def failing_route() -> None:
    """A route that fails the way a bug would: an exception nothing handles."""
    raise RuntimeError(SECRET_IN_THE_ERROR)


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[dict[str, Flask]]:
    databases = []

    def database(name: str, base: Any) -> Database:
        db = Database.from_url(f"sqlite:///{tmp_path / name}.db", base.metadata)
        create_tables(db)
        databases.append(db)
        return db

    def unreachable(name: str, base: Any) -> Database:
        directory = tmp_path / f"{name}-a-directory-not-a-database"  # SQLite cannot open it
        directory.mkdir()
        db = Database.from_url(f"sqlite:///{directory}", base.metadata)
        databases.append(db)
        return db

    tokens = TokenIssuer("k" * 32)
    built = {
        "auth": create_auth_app(database("auth", AuthBase), tokens, hasher=FAST_HASHER),
        "member": create_member_app(database("member", MemberBase)),
        "batch": create_batch_app(database("batch", BatchBase)),
        "auth, limited": create_auth_app(
            database("auth-limited", AuthBase),
            tokens,
            hasher=FAST_HASHER,
            limiter=RateLimiter({"signup-per-address": Limit(1, 3600)}, MemoryCounter()),
        ),
        "auth, no database": create_auth_app(
            unreachable("auth", AuthBase), tokens, hasher=FAST_HASHER
        ),
        "member, no database": create_member_app(unreachable("member", MemberBase)),
        "batch, no database": create_batch_app(unreachable("batch", BatchBase)),
    }
    for name in ("auth", "member", "batch"):
        built[name].add_url_rule("/test/fails", view_func=failing_route)
    # The one signup the limit allows from this address; the table's signup is the second.
    first = built["auth, limited"].test_client().post("/auth/signup", json=signup_body())
    assert first.status_code == 201, first.get_data(as_text=True)
    yield built
    for db in databases:
        db.engine.dispose()


REQUESTS = [
    ("auth", "POST", "/auth/signup", {"json": signup_body()}, 201),
    ("auth", "POST", "/auth/signup", {"json": {"email": "x"}}, 400),
    ("auth", "POST", "/auth/signup", {"data": "x=1", "content_type": "text/plain"}, 415),
    (
        "auth",
        "POST",
        "/auth/signup",
        {"data": "{" * 70_000, "content_type": "application/json"},
        413,
    ),
    ("auth", "POST", "/auth/login", {"json": {"email": "a@b.co", "password": "nope nope"}}, 401),
    ("auth", "GET", "/auth/me", {}, 401),
    ("auth", "GET", "/auth/signup", {}, 405),
    ("auth", "GET", "/no/such/route", {}, 404),
    ("auth", "GET", "/health/ready", {}, 200),
    ("auth", "GET", "/metrics", {}, 200),
    ("auth", "GET", "/openapi.json", {}, 200),
    ("member", "GET", f"/members/{UUID}", {}, 404),
    ("batch", "GET", f"/partners/{UUID}/summary", {}, 404),
    ("auth, limited", "POST", "/auth/signup", {"json": signup_body()}, 429),
    ("auth", "GET", "/test/fails", {}, 500),
    ("member", "GET", "/test/fails", {}, 500),
    ("batch", "GET", "/test/fails", {}, 500),
    ("auth, no database", "GET", "/health/ready", {}, 503),
    (
        "auth, no database",
        "POST",
        "/auth/login",
        {"json": {"email": "a@b.co", "password": "x"}},
        503,
    ),
    ("member, no database", "GET", "/health/ready", {}, 503),
    ("member, no database", "GET", f"/members/{UUID}", {}, 503),
    ("batch, no database", "GET", "/health/ready", {}, 503),
    ("batch, no database", "GET", f"/partners/{UUID}/summary", {}, 503),
]


@pytest.mark.parametrize(("app", "method", "path", "options", "status"), REQUESTS)
def test_every_answer_carries_the_security_headers(
    apps: dict[str, Flask], app: str, method: str, path: str, options: dict[str, Any], status: int
) -> None:
    response = apps[app].test_client().open(path, method=method, **options)
    assert response.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    if path != "/metrics":
        assert response.content_type == "application/json"
        assert response.json is not None
    if status >= 400:
        assert set(response.json or {}) >= {"error", "message"}
        assert "Traceback" not in response.get_data(as_text=True)
        assert SECRET_IN_THE_ERROR not in response.get_data(as_text=True)
    if status == 429:
        assert response.headers.get("Retry-After", "").isdigit()


@pytest.mark.parametrize(
    ("app", "path"),
    [
        ("member", f"//members//{UUID}"),
        ("member", f"/members/{UUID}/"),
        ("batch", f"//partners/{UUID}//summary"),
        ("auth", "//auth//me"),
        ("auth", "//health//live"),
    ],
)
def test_no_path_is_answered_with_a_redirect_built_from_the_host_header(
    apps: dict[str, Flask], app: str, path: str
) -> None:
    """Seen by an outside probe: `GET //members//x` with a foreign Host answered an HTML
    308 with `Location: http://<that host>/members/x`."""
    # Through the WSGI environ as a server passes it: the test client would read a
    # leading "//" as the start of a host name.
    response = apps[app].test_client().get(
        "/", headers={"Host": "evil.example"}, environ_overrides={"PATH_INFO": path}
    )
    assert response.status_code < 300 or response.status_code >= 400, response.status_code
    assert "Location" not in response.headers
    assert response.content_type == "application/json"
    assert "evil.example" not in response.get_data(as_text=True)


class CutShort:
    """A server's chunked body stream whose client went away inside a chunk announced as
    huge: gunicorn's reader raises NoMoreData (an IOError) on the next read."""

    def read(self, size: int = -1) -> bytes:
        from gunicorn.http.errors import NoMoreData

        raise NoMoreData(b"")


@pytest.mark.parametrize("path", ["/auth/signup", "/auth/login"])
def test_a_chunked_body_cut_short_is_the_clients_400_not_a_500(
    apps: dict[str, Flask], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen by an outside probe: an absurd chunk size, then a disconnect, logged a 500."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8001",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": CutShort(),
        "wsgi.input_terminated": True,
        "wsgi.url_scheme": "http",
        "wsgi.errors": None,
    }
    statuses: list[str] = []
    body = b"".join(apps["auth"].wsgi_app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["400 BAD REQUEST"], body
    assert b'"bad_request"' in body
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
