"""Failpoints: named places in the code where a fault-injection test can make a real
process die or fail, exactly there. Inert unless SIGNUP_PIPELINE_FAILPOINTS is set:

    SIGNUP_PIPELINE_FAILPOINTS="after-db-commit=kill@3"       SIGKILL on the 3rd pass
    SIGNUP_PIPELINE_FAILPOINTS="handle=raise~poison-nickname"  raise when the subject matches

The process's entry point arms them once at start (`arm`, with the variable as
shared.config read it). Points: `after-db-commit` (consumer: effects committed, offset not yet),
`relay-before-send` (relay: rows claimed, nothing sent), `handle` (consumer: before the
handler, subject = the record's value).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from functools import cache

VARIABLE = "SIGNUP_PIPELINE_FAILPOINTS"
_passes: Counter[str] = Counter()
_armed: list[str] = [""]  # the specification in force: none until `arm`


class InjectedFault(RuntimeError):
    """Raised by a `raise` failpoint: stands in for a bug in a handler."""


@cache
def _points(spec: str) -> dict[str, tuple[str, str]]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        kind, arg = (action.split("@", 1) + [""])[:2] if "@" in action else (action, "")
        if "~" in kind:
            kind, arg = kind.split("~", 1)
        points[name] = (kind, arg)
    return points


def arm(spec: str) -> None:
    """Make the failpoints do what `spec` (SIGNUP_PIPELINE_FAILPOINTS) says, counting
    passes from zero (entry points arm them, once, at start)."""
    _armed[0] = spec
    _passes.clear()


def armed() -> bool:
    """Whether any failpoint is armed (a caller may skip preparing a subject)."""
    return bool(_armed[0])


def failpoint(name: str, subject: str = "") -> None:
    """Do what SIGNUP_PIPELINE_FAILPOINTS says for `name`, if anything."""
    spec = _armed[0]
    if not spec or name not in _points(spec):
        return
    kind, arg = _points(spec)[name]
    _passes[name] += 1
    if kind == "kill" and _passes[name] == int(arg or 1):
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "raise" and arg in subject:
        raise InjectedFault(f"failpoint {name} raised")
