"""`signup-pipeline`: run the whole pipeline locally, and look into a running one."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.broker import BrokerError
from shared.devstack import SERVICES, Stack, StackError, write_line
from shared.http_client import request

if TYPE_CHECKING:
    from shared.operations import Endpoints


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


def dev(args: argparse.Namespace) -> int:
    """Run broker + five processes until Ctrl-C; non-zero if a process dies."""
    emit = write_line(sys.stdout)
    stack = Stack(
        Path.cwd(),
        database_urls={s: os.environ.get(f"{s.upper()}_DATABASE_URL", "") for s in SERVICES},
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        ports={s: args.base_port + n for n, s in enumerate(SERVICES)},
        echo=emit,
        api_workers=args.workers,
        # A terminal reads text lines better than JSON; LOG_FORMAT=json still wins.
        extra_env={"LOG_FORMAT": os.environ.get("LOG_FORMAT") or "text"},
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
    workdir = Path(tempfile.mkdtemp(prefix="signup-demo-"))
    stack = Stack(
        workdir,
        database_urls={s: os.environ.get(f"{s.upper()}_DATABASE_URL", "") for s in SERVICES},
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
    )
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


def dlt(args: argparse.Namespace) -> int:
    """`dlt list <topic>` and `dlt replay <topic> [--id CE_ID ...]`."""
    from shared.config import DEFAULT_BOOTSTRAP
    from shared.dlt import format_age, list_dead_letters, replay

    listed = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP
    servers = [s.strip() for s in listed.split(",") if s.strip()]
    letters = list_dead_letters(servers, args.topic)
    if args.action == "list":
        print(f"{len(letters)} dead-lettered record(s) in {args.topic.removesuffix('.DLT')}.DLT")
        for letter in letters:
            key = (letter.message.key or b"").decode("utf-8", errors="replace")
            print(
                f"- ce_id={letter.event_id} key={key} attempts={letter.attempts} "
                f"original={letter.original.topic}[{letter.original.partition}]"
                f"@{letter.original.offset} age={format_age(letter.age())}\n"
                f"  error: {letter.error}"
            )
        return 0
    wanted = set(args.id or [])
    chosen = [letter for letter in letters if not wanted or letter.event_id in wanted]
    unknown = wanted - {letter.event_id for letter in letters}
    if unknown:
        print(f"error: no dead letter with ce_id {sorted(unknown)}", file=sys.stderr)
        return 2
    # The same event dead-lettered twice is replayed once.
    unique = list({letter.event_id: letter for letter in chosen}.values())
    sent = replay(servers, unique)
    print(f"replayed {len(sent)} record(s) to their original topics")
    return 0


def _endpoints() -> Endpoints | None:
    """Where the services keep their state, or None (after saying why) when misconfigured."""
    import logging

    from shared.config import ConfigError
    from shared.operations import Endpoints

    # The screen says why Kafka cannot be read; kafka-python's own retry chatter would
    # only scroll it away.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return Endpoints.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def status(args: argparse.Namespace) -> int:
    """`status [--watch [SECONDS]] [--json]`: backlog, lag, dead letters, throughput."""
    from shared.operations import show_status

    endpoints = _endpoints()
    if endpoints is None:
        return 2
    return show_status(endpoints, as_json=args.json, watch=args.watch)


def trace(args: argparse.Namespace) -> int:
    """`trace <uuid> [--json]`: each step of one signup, with its time."""
    from shared.operations import show_trace

    endpoints = _endpoints()
    if endpoints is None:
        return 2
    return show_trace(endpoints, args.uuid, as_json=args.json)


def _member_uuid(text: str) -> str:
    """A UUID in the canonical form the services store (lower case, hyphenated)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `signup-pipeline`."""
    parser = argparse.ArgumentParser(prog="signup-pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    dev_parser = sub.add_parser(
        "dev", help="run the broker and all five processes locally until Ctrl-C"
    )
    dev_parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per API")
    dev_parser.add_argument(
        "--base-port",
        type=int,
        default=8001,
        help="auth API port; member and batch take the next two (default 8001)",
    )
    demo_parser = sub.add_parser(
        "demo", help="start everything, sign up a few members, show each step, stop"
    )
    demo_parser.add_argument("--count", type=int, default=6, help="how many signups")
    dlt_parser = sub.add_parser("dlt", help="list or replay dead-lettered records")
    dlt_actions = dlt_parser.add_subparsers(dest="action", required=True)
    dlt_list = dlt_actions.add_parser("list", help="show each dead-lettered record")
    dlt_list.add_argument("topic", help="profile-insert or partner-created (or its .DLT)")
    dlt_replay = dlt_actions.add_parser("replay", help="republish to the original topic")
    dlt_replay.add_argument("topic", help="profile-insert or partner-created (or its .DLT)")
    dlt_replay.add_argument("--id", action="append", metavar="CE_ID", help="only these")
    status_parser = sub.add_parser(
        "status", help="outbox backlog, consumer lag, dead letters and throughput, per stage"
    )
    status_parser.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_seconds,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2) until Ctrl-C",
    )
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    trace_parser = sub.add_parser("trace", help="where one signup is, with each step's time")
    trace_parser.add_argument("uuid", type=_member_uuid, help="the member uuid signup returned")
    trace_parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser(
        "bench",
        help="measure every stage beside this machine's raw limits (see --help)",
        add_help=False,
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from bench.run import main as bench_main

        sys.exit(bench_main(argv[1:]))
    args = parser.parse_args(argv)
    commands = {"dev": dev, "demo": demo, "dlt": dlt, "status": status, "trace": trace}
    sys.exit(commands[args.command](args))


if __name__ == "__main__":
    main()
