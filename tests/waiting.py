"""Waiting on a condition instead of sleeping a fixed time and hoping it happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "", interval: float = 0.2
) -> T:
    """Poll `predicate` until it returns something truthy, and return that. After
    `timeout` seconds fail with `what` (or the predicate's docstring) and the last value
    it returned, so the failure says what never happened and how far it got."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            described = what or (predicate.__doc__ or repr(predicate)).strip()
            raise AssertionError(f"not true within {timeout:g} s: {described} (last: {result!r})")
        time.sleep(interval)
