"""`signup-pipeline`: look into a running pipeline (status, trace, dead letters,
reconcile); with the dev extra installed, also run the whole pipeline locally (dev,
demo, bench) and feed it partners' activity (simulate)."""

from __future__ import annotations

import argparse
import signal
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


# What each operator command reads from its environment, for its --help.
_KAFKA_HELP = """\
  KAFKA_BOOTSTRAP_SERVERS   the broker, host:port[,host:port]; when unset, the address
                            `signup-pipeline dev` left in ./var/dev-broker (run from the
                            directory dev runs in), else localhost:9092
  KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD,
  KAFKA_SSL_CAFILE          how to log in to the broker, as the services do"""
_DATABASES_HELP = """\
  AUTH_DATABASE_URL, MEMBER_DATABASE_URL, BATCH_DATABASE_URL
                            the services' databases, read only (default: the SQLite files
                            ./var/auth.db, ./var/member.db, ./var/batch.db)"""
_RETENTION_HELP = """\
  OUTBOX_RETENTION_HOURS    how long the services keep published outbox rows (default 24)"""


def _epilog(*variables: str, exit_status: str) -> str:
    return "environment:\n" + "\n".join(variables) + "\n\nexit status:\n" + exit_status


def _developer_command(name: str) -> Callable[[argparse.Namespace], int]:
    """`dev` or `demo` from the developer tools, or a clear error when they are not installed."""
    try:
        from devtools import commands
    except ImportError as exc:
        print(f"error: signup-pipeline {name} {DEV_EXTRA_HINT} ({exc})", file=sys.stderr)
        sys.exit(2)
    command: Callable[[argparse.Namespace], int] = getattr(commands, name)
    return command


def _error(message: str, code: int) -> int:
    """One line on stderr, and the exit code to return: 2 for a mistake in the command
    or the configuration, 1 for something that failed outside."""
    print(f"error: {message}", file=sys.stderr)
    return code


def _kafka_reason(exc: BaseException) -> str:
    """kafka-python's errors print their class name first; the message alone reads better."""
    return str(exc.args[0]) if exc.args and exc.args[0] else type(exc).__name__


def dlt(args: argparse.Namespace) -> int:
    """`dlt list <topic>` and `dlt replay <topic> [--id CE_ID ...]`."""
    from kafka.errors import KafkaError

    from operations.dlt import UnknownTopic, check_topic, format_age, list_dead_letters, replay
    from operations.offsets import BrokerUnreachable
    from shared.config import ConfigError, operator_broker

    try:
        name = check_topic(args.topic)  # before anything touches the broker
        broker = operator_broker()
    except (UnknownTopic, ConfigError) as exc:
        return _error(str(exc), 2)
    servers = broker.servers
    address = ",".join(servers)
    _quiet_kafka()
    try:
        letters = list_dead_letters(servers, name)
    except BrokerUnreachable as exc:
        return _error(f"cannot reach Kafka at {exc.reasons} ({broker.origin})", 1)
    except KafkaError as exc:
        return _error(f"reading {name} from {address} failed: {_kafka_reason(exc)}", 1)
    if args.action == "list":
        print(f"{len(letters)} dead-lettered record(s) in {name}")
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
        return _error(f"no dead letter with ce_id {sorted(unknown)} in {name}", 2)
    # The same event dead-lettered twice is replayed once.
    unique = list({letter.event_id: letter for letter in chosen}.values())
    try:
        sent = replay(servers, unique)
    except KafkaError as exc:
        return _error(f"replaying to {address} failed: {_kafka_reason(exc)}", 1)
    print(f"replayed {len(sent)} record(s) to their original topics")
    return 0


def _quiet_kafka() -> None:
    """The command says in one line why Kafka cannot be read; kafka-python's own retry
    chatter would only scroll it away."""
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _endpoints() -> Endpoints | None:
    """Where the services keep their state, or None (after saying why) when misconfigured."""
    from operations.sources import Endpoints
    from shared.config import ConfigError

    _quiet_kafka()
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


def reconcile(args: argparse.Namespace) -> int:
    """`reconcile batch [--json] [--wait SECONDS] [--limit N]`: the partners' counters
    recomputed from the topics, compared with the stored summaries."""
    import json

    from kafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from operations.offsets import BrokerUnreachable
    from operations.reconcile import print_report, reconcile_batch
    from shared.storage.db import failure_reason, redact_url

    endpoints = _endpoints()
    if endpoints is None:
        return 2
    database_url = endpoints.database_urls["batch"]
    try:
        report = reconcile_batch(
            endpoints.bootstrap_servers, database_url, wait=args.wait, timeout=args.timeout
        )
    except BrokerUnreachable as exc:
        return _error(f"cannot reach Kafka at {exc.reasons} ({endpoints.kafka_origin})", 3)
    except KafkaError as exc:
        return _error(f"reading the topics failed: {_kafka_reason(exc)}", 3)
    except (SQLAlchemyError, OSError) as exc:
        return _error(
            f"reading the batch database {redact_url(database_url)} failed: {failure_reason(exc)}",
            3,
        )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report, limit=args.limit)
    return 0 if report.ok else 1


def _member_uuid(text: str) -> str:
    """A UUID in the canonical form the services store (lower case, hyphenated)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


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
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="signup-pipeline",
        formatter_class=raw,
        epilog=_epilog(
            _KAFKA_HELP,
            _DATABASES_HELP,
            _RETENTION_HELP,
            exit_status="  0 done; 1 something outside failed (a broker or database could not\n"
            "  be read); 2 a usage error. Each command's --help says what it reads\n"
            "  (reconcile: 1 differences, 3 could not read).",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dev_parser = sub.add_parser(
        "dev", help="run the broker and all six processes locally until Ctrl-C"
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
    for developer, where in (
        (dev_parser, "its data kept in ./var/kafka from one run to the next"),
        (demo_parser, "in a temporary directory"),
    ):
        developer.add_argument(
            "--kafka",
            choices=("tansu", "apache"),
            default=None,
            help="the broker: tansu, the bundled one (in memory, needs no Java; the "
            "default), or apache, one local Apache Kafka node run from the jars "
            f"scripts/ensure-kafka-jars.sh caches (needs Java 17+), {where}. Leave it out "
            "when KAFKA_BOOTSTRAP_SERVERS names a running Kafka",
        )
    dlt_epilog = _epilog(
        _KAFKA_HELP,
        exit_status="  0 done; 1 the broker could not be reached or read; 2 an unknown topic\n"
        "  or ce_id, or another usage error",
    )
    dlt_parser = sub.add_parser(
        "dlt",
        help="list or replay dead-lettered records",
        formatter_class=raw,
        epilog=dlt_epilog,
    )
    dlt_actions = dlt_parser.add_subparsers(dest="action", required=True)
    dlt_list = dlt_actions.add_parser(
        "list", help="show each dead-lettered record", formatter_class=raw, epilog=dlt_epilog
    )
    dlt_list.add_argument("topic", help="profile-insert or partner-created (or its .DLT)")
    dlt_replay = dlt_actions.add_parser(
        "replay", help="republish to the original topic", formatter_class=raw, epilog=dlt_epilog
    )
    dlt_replay.add_argument("topic", help="profile-insert or partner-created (or its .DLT)")
    dlt_replay.add_argument("--id", action="append", metavar="CE_ID", help="only these")
    status_parser = sub.add_parser(
        "status",
        help="outbox backlog, consumer lag, dead letters and throughput, per stage",
        formatter_class=raw,
        epilog=_epilog(
            _KAFKA_HELP,
            _DATABASES_HELP,
            exit_status="  0 everything was read; 1 a part could not be read (the rest is shown,\n"
            "  the last line says which); 2 a usage error; with --watch, 0 at Ctrl-C",
        ),
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
    trace_parser = sub.add_parser(
        "trace",
        help="where one signup is, with each step's time",
        formatter_class=raw,
        epilog=_epilog(
            _DATABASES_HELP,
            _RETENTION_HELP,
            exit_status="  0 found, every database read; 1 no database knows the uuid, or one\n"
            "  could not be read; 2 a usage error",
        ),
    )
    trace_parser.add_argument("uuid", type=_member_uuid, help="the member uuid signup returned")
    trace_parser.add_argument("--json", action="store_true", help="machine-readable output")
    simulate_parser = sub.add_parser(
        "simulate",
        help="send partners' activity (posts, follows, coordinations, reviews) to the broker",
        formatter_class=raw,
        description="Send a realistic stream of the six activity topics, as the other "
        "teams' services would, for the partners that exist (their ids read from the "
        "batch database) or those given; at the end, what the summaries should have "
        "gained from these events. A developer tool (the dev extra).",
        epilog=_epilog(
            _KAFKA_HELP,
            """\
  BATCH_DATABASE_URL        where the partners are read from when --partners is not
                            given, read only (default: the SQLite file ./var/batch.db)""",
            exit_status="  0 every event sent and acknowledged; 1 the broker or the database\n"
            "  could not be reached, or a send failed; 2 a usage error, or no partner",
        ),
    )
    amount = simulate_parser.add_mutually_exclusive_group()
    amount.add_argument("--events", type=_count, metavar="N", help="send N events (default 1000)")
    amount.add_argument("--seconds", type=_seconds, help="send for this many seconds")
    simulate_parser.add_argument(
        "--rate",
        type=_not_negative,
        default=200.0,
        metavar="EVENTS_PER_S",
        help="events per second (default 200; 0: as fast as possible)",
    )
    simulate_parser.add_argument(
        "--skew",
        type=_not_negative,
        default=1.0,
        help="how unevenly partners are chosen: Zipf-like, weight 1/rank^skew "
        "(default 1; 0: uniform)",
    )
    simulate_parser.add_argument(
        "--partners",
        metavar="UUID[,UUID...]",
        help="these partners (default: every partner with a summary in the batch database)",
    )
    simulate_parser.add_argument(
        "--seed", type=int, default=None, help="the same seed, the same sequence of actions"
    )
    reconcile_epilog = _epilog(
        _KAFKA_HELP,
        """\
  BATCH_DATABASE_URL        the batch service's database, read only (default: the
                            SQLite file ./var/batch.db)""",
        exit_status="  0 no difference; 1 differences; 2 a usage or configuration error;\n"
        "  3 the broker or the database could not be read (nothing was proven)",
    )
    reconcile_parser = sub.add_parser(
        "reconcile",
        help="recompute a service's state from the topics and compare it with its database",
        formatter_class=raw,
        epilog=reconcile_epilog,
    )
    reconcile_targets = reconcile_parser.add_subparsers(dest="target", required=True)
    reconcile_batch_parser = reconcile_targets.add_parser(
        "batch",
        help="every partner's counters from the events, against partner_summaries",
        formatter_class=raw,
        description="Read every event still in partner-created, partner-deleted and the six "
        "activity topics, from the beginning up to the end offsets taken at the start "
        "(with no consumer group: the workers do not notice), count each event once (by "
        "ce_id, else by its position), recompute each live partner's counters (a thing "
        "counts iff its creations minus its deletions >= 1) and compare them with the "
        "stored summaries; also that every created partner has a summary and no deleted "
        "one has.\n\nEvents beyond the topics' retention cannot be recomputed: on a "
        "pipeline older than its retention, a partner whose early events the broker has "
        "deleted shows differences that are none. Exact on a quiet pipeline; while events "
        "arrive, the report says how many arrived and how many were not yet consumed.",
        epilog=reconcile_epilog,
    )
    reconcile_batch_parser.add_argument(
        "--json", action="store_true", help="machine-readable output (every difference)"
    )
    reconcile_batch_parser.add_argument(
        "--wait",
        type=_not_negative,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the batch service to consume every event read before "
        "reading the summaries (default 0: read them at once, and say how many were not "
        "consumed yet)",
    )
    reconcile_batch_parser.add_argument(
        "--limit",
        type=_count,
        default=20,
        metavar="N",
        help="show at most N differences (default 20)",
    )
    reconcile_batch_parser.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="give up reading the topics after this long (default 300)",
    )
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
    commands = {"dlt": dlt, "status": status, "trace": trace, "reconcile": reconcile}
    if args.command in ("dev", "demo", "simulate"):
        sys.exit(_developer_command(args.command)(args))
    from shared.config import ConfigError, kafka_security
    from shared.messaging.kafka import use_security

    try:
        use_security(kafka_security())  # the services' own Kafka login, for every client here
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if argv is None:
        # `signup-pipeline dlt list ... | head`: an operator command ends quietly when its
        # reader stops reading, as a shell command does, instead of a BrokenPipeError
        # traceback. (Not dev: it must outlive its reader long enough to stop its stack.)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(commands[args.command](args))


if __name__ == "__main__":
    main()
