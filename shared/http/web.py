"""HTTP pieces every API shares: JSON errors, health routes, and serving with gunicorn."""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.storage.db import Database, check_connection
from shared.telemetry.metrics import exposition, metrics
from shared.telemetry.tracecontext import SpanKind, span

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024

# On every answer: a JSON API is never a page to render, frame, sniff or cache.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# A stable code for every status an API can answer with.
ERROR_CODES = {
    400: "bad_request",
    401: "invalid_credentials",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the API answers with `{"error": code, "message": text[, "fields": ...]}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, fields: dict[str, Any] | None = None
) -> tuple[Response, int]:
    """The contract's JSON error body."""
    body: dict[str, Any] = {"error": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return jsonify(body), status


def install_error_handlers(app: Flask) -> None:
    """Answer every error as JSON with a stable code: never an HTML page or a traceback."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        response, status = error_response(exc.status, exc.code, exc.message, exc.fields)
        response.headers.update(exc.headers)  # e.g. Retry-After on 429
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        response, _ = error_response(
            status, ERROR_CODES.get(status, "http_error"), exc.description or ""
        )
        for name, value in exc.get_headers():
            if name.lower() != "content-type":  # keeps Allow on 405, Retry-After on 503
                response.headers[name] = value
        return response, status

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeoutError)
    def _database_down(exc: Exception) -> tuple[Response, int]:
        log.warning("database unavailable: %s", getattr(exc, "orig", exc))
        return error_response(503, "unavailable", "The database is unavailable; retry later.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return error_response(503, "unavailable", "The database is unavailable; retry later.")
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")


def json_object_body() -> dict[str, Any]:
    """The request's JSON object body: 415 unless it is JSON, 400 unless it parses to an object."""
    if not request.is_json:
        raise ApiError(
            415, "unsupported_media_type", "Send the body as JSON (Content-Type: application/json)."
        )
    try:
        body = json.loads(_body_bytes())
    except (ValueError, RecursionError):
        raise ApiError(
            400,
            "validation_failed",
            "The body is not valid JSON.",
            {"_schema": ["Invalid JSON."]},
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "validation_failed",
            "The body must be a JSON object.",
            {"_schema": ["Expected a JSON object."]},
        )
    return body


def _body_bytes() -> bytes:
    """The request body: 413 past MAX_BODY_BYTES, whether its size was announced or not.

    Werkzeug refuses a Content-Length over the limit, but cuts a chunked body (no
    Content-Length; gunicorn sets `wsgi.input_terminated`) at the limit without a word,
    so JSON with 200 KB of padding after it would be read as if it were whole. Read one
    byte past the limit from the server's stream to tell.

    A body that ends before it is whole (the client went away inside a chunk announced
    as huge, or a malformed chunk size) is the client's fault: 400, not a 500 in the log.
    gunicorn's reader raises an IOError for each (NoMoreData, InvalidChunkSize...)."""
    environ = request.environ
    try:
        if request.content_length is not None or "wsgi.input_terminated" not in environ:
            return request.get_data(cache=False)
        stream, chunks, size = environ["wsgi.input"], [], 0
        while size <= MAX_BODY_BYTES:
            chunk = stream.read(MAX_BODY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        log.info("request body cut short: %s", type(exc).__name__)
        raise ApiError(
            400, "bad_request", "The request body ended before it was complete."
        ) from None
    if size > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def validation_error(messages: Any) -> ApiError:
    """A 400 listing every field's problems at once, each field a list of strings
    (a problem inside a list names its index: `"[2] Not a valid integer."`)."""
    if not isinstance(messages, dict):
        messages = {"_schema": messages}
    fields = {name: _flatten(problems) for name, problems in messages.items()}
    return ApiError(400, "validation_failed", "The request has invalid fields.", fields)


def _flatten(problems: Any, where: str = "") -> list[str]:
    if isinstance(problems, dict):
        return [
            line for key, inner in problems.items() for line in _flatten(inner, f"{where}[{key}]")
        ]
    if isinstance(problems, list | tuple):
        return [line for inner in problems for line in _flatten(inner, where)]
    return [f"{where} {problems}" if where else str(problems)]


def health_blueprint(database: Database) -> Blueprint:
    """`/health/live` (the process answers) and `/health/ready` (its database answers, and
    the outbox relay in `app.extensions["outbox_relay"]`, if any, is not stalled: rows
    waiting with nothing published for longer than its bound; and every callable in
    `app.extensions["readiness_checks"]` returns None, not a problem)."""
    health = Blueprint("health", __name__, url_prefix="/health")

    @health.get("/live")
    def live() -> Response:
        return jsonify(status="ok")

    @health.get("/ready")
    def ready() -> Response | tuple[Response, int]:
        try:
            check_connection(database.engine)
        except Exception as exc:
            log.warning("not ready: %s", exc)
            return error_response(503, "unavailable", "The database is unreachable.")
        relay = current_app.extensions.get("outbox_relay")
        stall = relay.stalled() if relay is not None else None
        if stall is not None:  # the relay logged the episode once; a probe adds no line
            return error_response(503, "unavailable", str(stall))
        for check in current_app.extensions.get("readiness_checks", ()):
            problem = check()
            if problem is not None:  # the check's owner logs its outage
                return error_response(503, "unavailable", problem)
        return jsonify(status="ok")

    return health


class JsonDefaultResponse(Response):
    """A response that is JSON unless it says otherwise: Flask's automatic answers
    (OPTIONS, HEAD) would otherwise call themselves text/html."""

    default_mimetype = "application/json"


def base_app(name: str, database: Database) -> Flask:
    """A Flask app with the shared error handling, body limit, health routes, `/metrics`
    (plus the collectors in `app.extensions["metrics_collectors"]`, read at scrape
    time), a span and an access-log line per request."""
    app = Flask(name)
    # No redirects: Werkzeug would answer `//members//x` with a 308 to `/members/x`, its
    # Location built from the request's Host header (any host a client names) and its
    # body HTML. A path that is not a route's is a JSON 404, as every error is.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.response_class = JsonDefaultResponse
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_error_handlers(app)
    instrument(app)
    app.register_blueprint(health_blueprint(database))

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = exposition(*app.extensions.get("metrics_collectors", ()))
        return Response(body, content_type=content_type)

    return app


# Any token is a method to Flask and gunicorn; only these become their own series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method() -> str:
    return request.method if request.method in KNOWN_METHODS else "OTHER"


def _route() -> str:
    # The rule, not the path: one series per route however many uuids are asked for.
    return request.url_rule.rule if request.url_rule is not None else "<unmatched>"


def instrument(app: Flask) -> None:
    """Per request: a server span (child of the caller's `traceparent`), the trace id
    on every log line, latency and status in the metrics, and one access-log line."""
    access = logging.getLogger("access")

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        scope = contextlib.ExitStack()
        g.request_scope = scope
        scope.enter_context(
            span(
                f"{_method()} {_route()}",
                SpanKind.SERVER,
                parent=request.headers.get("traceparent"),
                attributes={"http.request.method": _method(), "http.route": _route()},
            )
        )

    @app.after_request
    def _secure(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.pop("started", None)
        if started is None:  # the request failed before it began (e.g. bad body size)
            return response
        elapsed = time.perf_counter() - started
        route, method = _route(), _method()
        measured = metrics()
        measured.http_requests.labels(route, method, str(response.status_code)).inc()
        measured.http_duration.labels(route, method).observe(elapsed)
        current = trace.get_current_span()
        current.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            current.set_status(StatusCode.ERROR)
        if route not in QUIET_ROUTES:
            access.info(
                "%s %s %d %.1f ms",
                method,
                route,
                response.status_code,
                elapsed * 1000,
                extra={"fields": {"status": response.status_code}},
            )
        return response

    @app.teardown_request
    def _end(_exc: BaseException | None) -> None:
        scope = g.pop("request_scope", None)
        if scope is not None:
            scope.close()


# Probes and scrapes come every few seconds; a line each would drown the log.
QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})


GUNICORN_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def json_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP answer, for a request gunicorn refused before the app saw it: the
    contract's JSON error body and the security headers every answer carries."""
    body = json.dumps(
        {"error": GUNICORN_ERROR_CODES.get(status, "bad_request"), "message": message or reason}
    ).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items())
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _worker_class() -> type:
    """gunicorn's threaded worker, answering the requests gunicorn itself refuses
    (request line or headers too long, malformed) in JSON, where it would answer an
    HTML page.

    Through gunicorn's own extension point: a worker class (its `worker_class` setting
    takes a subclass of `gunicorn.workers.base.Worker`) whose `handle_error` lets
    gunicorn's own decide the status and the message and log as always, but answer into
    a socket pair; the client gets that status and message in JSON instead of the page.
    No gunicorn function is replaced."""
    import socket

    from gunicorn.util import write_nonblock
    from gunicorn.workers.gthread import ThreadWorker

    class JsonErrorWorker(ThreadWorker):  # type: ignore[misc]
        def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
            page, reader = socket.socketpair()
            answer = b""
            try:
                super().handle_error(req, page, addr, exc)
                page.close()
                reader.settimeout(1.0)
                answer = reader.makefile("rb").read(MAX_GUNICORN_PAGE)
            except OSError:
                pass
            finally:
                page.close()
                reader.close()
            status, reason, message = gunicorn_page_parts(answer)
            try:
                write_nonblock(client, json_error(status, reason, message))
            except Exception:
                self.log.debug("Failed to send error message.")

    return JsonErrorWorker


MAX_GUNICORN_PAGE = 64 * 1024
_GUNICORN_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.DOTALL)


def gunicorn_page_parts(answer: bytes) -> tuple[int, str, str]:
    """(status, reason, message) of the HTML answer gunicorn's `handle_error` writes
    (`gunicorn.util.write_error`: the message, HTML-escaped, after the `<h1>`); a 500
    when there is none to read."""
    status_line, _, _ = answer.partition(b"\r\n")
    _, status, reason = (status_line.decode("latin-1").strip().split(" ", 2) + ["", ""])[:3]
    if not status.isdigit():
        return 500, "Internal Server Error", ""
    found = _GUNICORN_MESSAGE.search(answer)
    message = html.unescape(found.group(1).decode("latin-1")) if found else ""
    return int(status), reason, message


def _logger_class() -> type:
    """gunicorn's logger, writing through the process's own handler (JSON lines)
    instead of its own format."""
    from gunicorn.glogging import Logger

    class ThroughRoot(Logger):  # type: ignore[misc]
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                logger.handlers.clear()
                logger.propagate = True

    return ThroughRoot


def serve(
    app_factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    workers: int = 2,
    threads: int = 4,
    on_worker_exit: Callable[[Flask], None] | None = None,
    on_child_exit: Callable[[int], None] | None = None,
) -> None:
    """Serve the app with gunicorn; each worker builds its own app (and clients) after fork."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def __init__(self) -> None:
            self.application: Flask | None = None
            super().__init__()

        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            # gthread, answering what gunicorn itself refuses in JSON (the contract says
            # errors are always JSON) instead of its HTML page.
            self.cfg.set("worker_class", _worker_class())
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")
            self.cfg.set("logger_class", _logger_class())
            if on_worker_exit is not None:
                self.cfg.set("worker_exit", lambda _server, _worker: self._exit())
            if on_child_exit is not None:  # runs in the master
                self.cfg.set("child_exit", lambda _server, worker: on_child_exit(worker.pid))

        def _exit(self) -> None:
            if self.application is not None and on_worker_exit is not None:
                on_worker_exit(self.application)

        def load(self) -> Flask:
            self.application = app_factory()
            return self.application

    Server().run()
