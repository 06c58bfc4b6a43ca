"""`signup-pipeline`: look into a running pipeline (status, trace, dead letters); with
the dev extra installed, also run the whole pipeline locally (dev, demo, bench)."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operations.sources import Endpoints

DEV_EXTRA_HINT = (
    "is a developer tool: install the dev extra from a clone of the repository "
    "(pip install -e '.[dev]')"
)


def _developer_command(name: str) -> Callable[[argparse.Namespace], int]:
    """`dev` or `demo` from the developer tools, or a clear error when they are not installed."""
    try:
        from devtools import commands
    except ImportError as exc:
        print(f"error: signup-pipeline {name} {DEV_EXTRA_HINT} ({exc})", file=sys.stderr)
        sys.exit(2)
    command: Callable[[argparse.Namespace], int] = getattr(commands, name)
    return command


def dlt(args: argparse.Namespace) -> int:
    """`dlt list <topic>` and `dlt replay <topic> [--id CE_ID ...]`."""
    from operations.dlt import format_age, list_dead_letters, replay
    from shared.config import DEFAULT_BOOTSTRAP, ConfigError, bootstrap_servers

    try:
        servers = bootstrap_servers() or [DEFAULT_BOOTSTRAP]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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

    from operations.sources import Endpoints
    from shared.config import ConfigError

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
    from operations.status import show_status

    endpoints = _endpoints()
    if endpoints is None:
        return 2
    return show_status(endpoints, as_json=args.json, watch=args.watch)


def trace(args: argparse.Namespace) -> int:
    """`trace <uuid> [--json]`: each step of one signup, with its time."""
    from operations.trace import show_trace

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
        try:
            from bench.run import main as bench_main
        except ImportError as exc:
            print(f"error: signup-pipeline bench {DEV_EXTRA_HINT} ({exc})", file=sys.stderr)
            sys.exit(2)
        sys.exit(bench_main(argv[1:]))
    args = parser.parse_args(argv)
    commands = {"dlt": dlt, "status": status, "trace": trace}
    if args.command in ("dev", "demo"):
        sys.exit(_developer_command(args.command)(args))
    from shared.config import ConfigError, kafka_security
    from shared.messaging.kafka import use_security

    try:
        use_security(kafka_security())  # the services' own Kafka login, for every client here
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[args.command](args))


if __name__ == "__main__":
    main()
