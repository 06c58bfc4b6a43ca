"""A tiny JSON-over-HTTP client (standard library only), for the demo, benchmarks and tests
that talk to real processes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


def request(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for_status(url: str, status: int = 200, timeout: float = 20.0) -> tuple[float, Any]:
    """Poll GET `url` until it answers `status`; (seconds waited, body)."""
    start = time.monotonic()
    while True:
        code, body = request("GET", url)
        if code == status:
            return time.monotonic() - start, body
        if time.monotonic() - start > timeout:
            raise AssertionError(f"GET {url} still {code} after {timeout}s: {body}")
        time.sleep(0.02)
