"""Helpers for tests that run `signup-pipeline dev` or `demo` as a process: free API
ports, the processes below a pid, and an environment without the project's settings."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from devtools.broker import free_port


def three_free_ports() -> int:
    """A port with the next two free too: the auth, member and batch APIs'."""
    while True:
        base = free_port()
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def clean_env() -> dict[str, str]:
    """This environment without the project's database and broker settings."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env
