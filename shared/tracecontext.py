"""W3C Trace Context: the `traceparent` that follows one signup through every service."""

from __future__ import annotations

import re
import secrets

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None) -> str | None:
    """`value` if it is a valid version-00 traceparent with non-zero ids, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(0)


def new_traceparent() -> str:
    """A traceparent that starts a new, sampled trace."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """The same trace with a new span id, or a new trace when there is no valid parent."""
    valid = parse_traceparent(parent)
    if valid is None:
        return new_traceparent()
    _, trace_id, _, flags = valid.split("-")
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id part of a traceparent."""
    valid = parse_traceparent(traceparent)
    return valid.split("-")[1] if valid else None
