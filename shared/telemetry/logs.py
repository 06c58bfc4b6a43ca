"""Structured logs: one JSON object per line (LOG_FORMAT=json, the default) or one
readable line (LOG_FORMAT=text, for a terminal), each tagged with the service, the
process role and, where there is one, the member uuid, the event's `ce_id` and the
trace id.

The ids come from a context (`log_context`) set where the work starts: an HTTP request,
a consumed event.

The flow lines (logger `FLOW_LOGGER`: what a worker did with each event, once committed)
are for watching the pipeline work in a terminal: at INFO in text mode, where a text
line shows them as `... INFO member-worker: profile-insert <uuid> → ...`; at DEBUG in
JSON mode, so production logs keep their content (and volume) unless LOG_LEVEL=DEBUG.

Personal data never belongs in a log line; as a last line of defence
every line is scrubbed of anything shaped like an email address or a password hash.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

from shared.config import ConfigError, LogSettings

FORMATS = ("json", "text")

# What the workers did with each event, one line per event (see `flow_level`).
FLOW_LOGGER = "signup.flow"
_flow_level = logging.DEBUG  # until configure_logging says the format is text

# The ids a line may carry, in the order a text line shows them.
CONTEXT_FIELDS = ("member_uuid", "ce_id", "trace_id")

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "log_context", default=types.MappingProxyType({})
)

_EMAIL = re.compile(r"[^\s@\"'<>(),;:\[\]]+@[^\s@\"'<>(),;:\[\]]+\.[A-Za-z]{2,}")
_PASSWORD_HASH = re.compile(r"\$argon2(?:id|i|d)\$[^\s\"',)]*")


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Tag every line logged inside the block (on this thread) with `fields`."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str | None) -> None:
    """Add `fields` to the enclosing `log_context` block, until it ends."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


def scrub(text: str) -> str:
    """`text` with anything shaped like an email address or an argon2 hash masked."""
    return _PASSWORD_HASH.sub("<password-hash>", _EMAIL.sub("<email>", text))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, role, logger, message, the ids."""

    def __init__(self, service: str, role: str) -> None:
        super().__init__()
        self._service = service
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": self._service,
            "role": self._role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(_context.get())
        document.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        # The whole line, ids and extra fields too. Neither pattern can match a quote,
        # so a replacement stays inside its JSON string.
        return scrub(json.dumps(document, ensure_ascii=False, default=str))


def flow_level() -> int:
    """The level of the flow lines: INFO when the process logs text, DEBUG in JSON."""
    return _flow_level


# What a text line must not carry raw: control characters (a newline forges a second line,
# a NUL or an escape sequence garbles a terminal) and Unicode's line separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with each control character shown as an escape (`\\n`, `\\x00`)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


class _PrintableFormatter(logging.Formatter):
    """A Formatter whose message (what a request can put in it: a path, a header) is
    printable; the traceback it appends keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        return super().formatMessage(record)


class TextFormatter(_PrintableFormatter):
    """`time LEVEL service-role logger: message [member_uuid=… ce_id=… trace_id=…]`; a
    flow line short, as a person reads it: `time INFO member-worker: message` (it names
    the event's key itself; JSON lines keep every id)."""

    def __init__(self, service: str, role: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service}-{role} %(name)s: %(message)s")
        self._flow = _PrintableFormatter(f"%(asctime)s %(levelname)s {service}-{role}: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == FLOW_LOGGER:
            return scrub(self._flow.format(record))
        line = super().format(record)
        tags = {**_context.get(), **(getattr(record, "fields", None) or {})}
        if tags:
            line += " [" + " ".join(f"{k}={printable(str(v))}" for k, v in tags.items()) + "]"
        return scrub(line)


def configure_logging(service: str, role: str, settings: LogSettings) -> None:
    """Send every logger's records to stderr in LOG_FORMAT at LOG_LEVEL."""
    level = (settings.level or "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"LOG_LEVEL={level!r} is not a level: use DEBUG, INFO, WARNING or ERROR")
    form = (settings.format or "json").lower()
    if form not in FORMATS:
        raise ConfigError(f"LOG_FORMAT={form!r} is not a format: use json or text")
    global _flow_level
    _flow_level = logging.INFO if form == "text" else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter if form == "json" else TextFormatter
    handler.setFormatter(formatter(service, role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every failed connection attempt; the pipeline reports what matters.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # SQLAlchemy's statement log is a debugging tool of its own (echo=True), not ours.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    if role != "migrate":
        logging.getLogger("alembic").setLevel(logging.WARNING)
