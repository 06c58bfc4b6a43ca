"""nginx in front of the APIs, as `dev` runs it (deploy/nginx/): the auth API's rate
limits see each client's own address, not the proxy's, whatever X-Forwarded-For a client
sends; what nginx itself refuses is answered in the contract's JSON error body."""

from __future__ import annotations

import http.client
import json
import random
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from devtools.stack import Stack
from shared.http.web import SECURITY_HEADERS
from tests.e2e.conftest import running_stack
from tests.unit.pipeline_harness import signup_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> Iterator[Stack]:
    window = random.randint(20_000, 30_000)
    yield from running_stack(
        tmp_path_factory,
        postgres,
        kafka_bootstrap,
        "proxy",
        proxy=True,
        rate_limits=True,
        extra_env={"AUTH_RATE_LIMIT_SIGNUP_PER_ADDRESS": f"3/{window}"},
    )


def post_signup(url: str, source: str, headers: dict[str, str] | None = None) -> int:
    """The status of one signup sent from loopback address `source`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(
            "POST",
            "/auth/signup",
            json.dumps(signup_body()),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_rate_limits_count_each_clients_own_address_through_the_proxy(stack: Stack) -> None:
    url = stack.url("auth")
    # Two clients on two loopback addresses, 3 signups allowed each: had the API counted
    # the proxy's address, the second client would have none left.
    first = [post_signup(url, "127.0.0.2") for _ in range(4)]
    second = [post_signup(url, "127.0.0.3") for _ in range(4)]
    assert first == [201, 201, 201, 429], first
    assert second == [201, 201, 201, 429], second
    # A client naming other addresses in X-Forwarded-For is still itself: nginx sets the
    # header to the address it saw, and the API trusts that one hop only.
    spoofed = [
        post_signup(url, "127.0.0.2", {"X-Forwarded-For": f"203.0.113.{n}"}) for n in range(3)
    ]
    assert spoofed == [429, 429, 429], spoofed


def raw_answer(url: str, request: bytes) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of a raw request written to the socket as it is."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        # Read the answer only as far as it goes: nginx then closes the connection, with
        # a reset when the client never sent the body it announced.
        lines = [reader.readline().decode("latin-1").rstrip("\r\n")]
        while lines[-1]:
            lines.append(reader.readline().decode("latin-1").rstrip("\r\n"))
        headers = dict(line.split(": ", 1) for line in lines[1:-1])
        body = reader.read(int(headers["Content-Length"]))
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"POST /auth/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 70000\r\nConnection: close\r\n\r\n",
            413,
            "payload_too_large",
        ),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"BAD REQUEST LINE\r\n\r\n", 400, "bad_request"),
        (
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
    ],
    ids=["body-over-64k", "uri-too-long", "malformed", "header-too-large"],
)
def test_what_nginx_refuses_is_a_json_error_with_the_security_headers(
    stack: Stack, request_bytes: bytes, status: int, code: str
) -> None:
    answered, headers, body = raw_answer(stack.url("auth"), request_bytes)
    assert (answered, body["error"]) == (status, code), body
    assert headers["Content-Type"].startswith("application/json")
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, name
    assert "nginx/" not in headers.get("Server", "")  # no version (server_tokens off)
