"""HTTP pieces every API shares: JSON errors, health routes, and serving with gunicorn."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from shared.db import Database, check_connection

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024

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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


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
        return error_response(exc.status, exc.code, exc.message, exc.fields)

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
        body = json.loads(request.get_data(cache=False))
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
    """`/health/live` (the process answers) and `/health/ready` (its database answers)."""
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
        return jsonify(status="ok")

    return health


def base_app(name: str, database: Database) -> Flask:
    """A Flask app with the shared error handling, body limit and health routes."""
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install_error_handlers(app)
    app.register_blueprint(health_blueprint(database))
    return app


GUNICORN_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def _write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    from gunicorn.util import write_nonblock

    body = json.dumps(
        {"error": GUNICORN_ERROR_CODES.get(status, "bad_request"), "message": message or reason}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + body)


def serve(
    app_factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    workers: int = 2,
    threads: int = 4,
    on_worker_exit: Callable[[Flask], None] | None = None,
) -> None:
    """Serve the app with gunicorn; each worker builds its own app (and clients) after fork."""
    from gunicorn import util
    from gunicorn.app.base import BaseApplication

    # Requests gunicorn itself rejects (request line or headers too long, malformed)
    # would get its HTML page; the contract says errors are always JSON.
    util.write_error = _write_json_error

    class Server(BaseApplication):  # type: ignore[misc]
        def __init__(self) -> None:
            self.application: Flask | None = None
            super().__init__()

        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")
            if on_worker_exit is not None:
                self.cfg.set("worker_exit", lambda _server, _worker: self._exit())

        def _exit(self) -> None:
            if self.application is not None and on_worker_exit is not None:
                on_worker_exit(self.application)

        def load(self) -> Flask:
            self.application = app_factory()
            return self.application

    Server().run()
