"""Requests gunicorn refuses before the app sees them are answered in JSON, with the
security headers, by the worker class shared/http/web.py gives gunicorn (its documented
`worker_class` extension point), and gunicorn's own functions stay gunicorn's."""

from __future__ import annotations

import inspect
import json
import logging
import socket
from typing import Any

import gunicorn.util
import pytest
from gunicorn.http.errors import (
    ForbiddenProxyRequest,
    InvalidHeader,
    InvalidHTTPVersion,
    InvalidRequestLine,
    InvalidRequestMethod,
    LimitRequestHeaders,
    LimitRequestLine,
)
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker

from shared.http.web import SECURITY_HEADERS, _worker_class

GUNICORN_WRITE_ERROR = gunicorn.util.write_error


def answer_to(exc: BaseException) -> tuple[int, dict[str, str], dict[str, Any]]:
    """What a client gets when gunicorn's worker handles `exc` for its request."""
    worker_class: Any = _worker_class()
    worker = object.__new__(worker_class)  # handle_error needs no running worker
    worker.log = logging.getLogger("test.gunicorn")
    client, peer = socket.socketpair()
    try:
        worker.handle_error(None, client, ("127.0.0.1", 5000), exc)
        client.close()
        raw = peer.makefile("rb").read()
    finally:
        client.close()
        peer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body)
    return int(status_line.split(" ")[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (LimitRequestLine(5000, 4094), 414, "uri_too_long"),
        (InvalidRequestLine("GET /a b c"), 400, "bad_request"),
        (InvalidHeader("X-Bad"), 400, "bad_request"),
        (LimitRequestHeaders("too many headers"), 431, "headers_too_large"),
    ],
)
def test_a_request_gunicorn_refuses_gets_json_and_the_security_headers(
    exc: BaseException, status: int, code: str
) -> None:
    got, headers, body = answer_to(exc)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    assert body["error"] == code and body["message"]


REFUSALS = [
    LimitRequestLine(5000, 4094),
    InvalidRequestLine("GET /a b c"),
    InvalidRequestMethod("G<T"),
    InvalidHTTPVersion("HTTP/9.9"),
    InvalidHeader("X-Bad"),
    LimitRequestHeaders("too many headers"),
    ForbiddenProxyRequest("10.1.2.3"),
    RuntimeError("secret detail"),
]


def gunicorns_own_words(exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(status, message) that gunicorn's own handle_error gives its HTML page for `exc`."""
    said: list[tuple[int, str, str]] = []
    monkeypatch.setattr(gunicorn.util, "write_error", lambda _s, *args: said.append(args))
    worker = object.__new__(ThreadWorker)
    worker.log = logging.getLogger("test.gunicorn")
    client, peer = socket.socketpair()
    try:
        ThreadWorker.handle_error(worker, None, client, ("127.0.0.1", 5000), exc)
    finally:
        client.close()
        peer.close()
        monkeypatch.undo()
    [(status, reason, message)] = said
    return status, message or reason


@pytest.mark.parametrize("exc", REFUSALS, ids=lambda exc: type(exc).__name__)
def test_the_json_answer_carries_gunicorns_own_status_and_message(
    exc: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, message = gunicorns_own_words(exc, monkeypatch)
    got, _, body = answer_to(exc)
    assert (got, body["message"]) == (status, message)


def test_an_unexpected_error_is_a_500_without_its_text() -> None:
    status, _, body = answer_to(RuntimeError("secret detail"))
    assert status == 500
    assert body == {"error": "internal_error", "message": "Internal Server Error"}


def test_the_worker_extends_gunicorns_threaded_worker_without_replacing_its_functions() -> None:
    assert issubclass(_worker_class(), ThreadWorker)
    assert gunicorn.util.write_error is GUNICORN_WRITE_ERROR
    # The hook this relies on: if gunicorn renames or reshapes it, fail here, not in
    # production with an HTML page.
    assert list(inspect.signature(Worker.handle_error).parameters) == [
        "self",
        "req",
        "client",
        "addr",
        "exc",
    ]
