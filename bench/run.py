"""`signup-pipeline bench` (or `python -m bench`): every stage's speed beside the raw
limits of the same machine, measured in the same run.

    signup-pipeline bench [--quick] [--kafka tansu|apache] [--output bench-results.json]
                          [--postgres-url URL] [--proxy]

PostgreSQL: throwaway databases are created (and dropped) on the server at
--postgres-url (default: the local one). Kafka: a fresh bundled Tansu broker per phase
(`--kafka tansu`, the default); one local Apache Kafka node for the whole run, started
from the cached jars in a temporary directory with the pipeline's topics created
(`--kafka apache`, needs Java 17+); or the cluster in KAFKA_BOOTSTRAP_SERVERS. Writes
every figure, and which broker they were measured on, to a JSON file and prints a
Markdown table of each figure beside its ceiling and its target. It never fails on a
missed target: it reports. `--proxy` runs nginx in front of the APIs, as `dev` and
docker-compose do, and measures the signup load both ways on the same processes: to the
auth API directly and through nginx, one after the other, twice, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from auth_service.models import OutboxEvent as AuthOutbox
from bench import ceilings, stages
from devtools.apache_kafka import (
    BROKERS,
    ChoiceError,
    KafkaUnavailable,
    OneNodeKafka,
    chosen_broker,
    describe_broker,
    prepare_jars,
)
from devtools.broker import BrokerError, LocalBroker
from devtools.kafka_cluster import KAFKA_VERSION, KafkaClusterError
from devtools.postgres import LOCAL_POSTGRES_URL, PostgresServer
from devtools.proxy import nginx_binary
from devtools.stack import PROCESSES, Stack, StackError
from shared.config import SERVICES, kafka_security, tool_settings
from shared.messaging.kafka import create_topics, pipeline_topics, use_security
from shared.messaging.outbox import cloudevent_headers, encode_event
from shared.messaging.pipeline import PROFILE_INSERT
from shared.storage.db import utcnow


@dataclass(frozen=True)
class Scale:
    """How much work each phase does."""

    kafka_messages: int
    postgres_rows: int
    argon2_seconds: float
    signup_clients: int
    signup_seconds: float
    propagation_signups: int
    propagation_rate: float
    drain_events: int
    relay_rows: int


FULL = Scale(50_000, 100_000, 3.0, 8, 20.0, 500, 20.0, 50_000, 20_000)
QUICK = Scale(10_000, 10_000, 1.0, 8, 3.0, 40, 20.0, 10_000, 3_000)


class Progress:
    """One status line, rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._started = time.perf_counter()
        self._last = 0.0

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        line = f"[{now - self._started:6.1f} s] {message}"
        if self._tty:
            print(f"\r{line:<78}", end="", file=sys.stderr, flush=True)
        elif now - self._last > 5:
            print(line, file=sys.stderr, flush=True)
            self._last = now

    def phase(self, name: str) -> None:
        """Start a new phase on a line of its own."""
        if self._tty:
            print(file=sys.stderr)
        self._last = 0.0
        self(name)


@contextlib.contextmanager
def broker(external: list[str] | None, workdir: Path) -> Iterator[list[str]]:
    """A fresh bundled broker for one phase, or the given cluster."""
    if external:
        yield list(external)
        return
    with LocalBroker(log_path=workdir / f"broker-{uuid.uuid4().hex[:6]}.log") as local:
        yield [local.bootstrap_servers]


def skip_group_to_end(servers: list[str], group: str, topic: str) -> None:
    """On a cluster that already holds records, start `group` at the end of `topic`, so
    that a drain reads only the events it produced (real Kafka; the bundled broker is
    fresh for every phase instead, its end offsets being unreliable)."""
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_end()
        consumer.commit({tp: OffsetAndMetadata(consumer.position(tp), "", -1) for tp in partitions})
    finally:
        consumer.close()


def sample_records(count: int) -> list[ceilings.Record]:
    """`profile-insert` records exactly as the auth relay sends them."""
    records = []
    for n in range(count):
        payload = stages.profile_insert_payload(n)
        row = AuthOutbox(
            event_id=str(uuid.uuid4()),
            topic=PROFILE_INSERT.name,
            key=payload["uuid"],
            payload=encode_event(payload),
            source="auth-service",
            traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
            created_at=utcnow(),
        )
        records.append((row.key.encode(), row.payload.encode(), cloudevent_headers(row)))
    return records


def measure_ceilings(
    scale: Scale,
    postgres: PostgresServer,
    external: list[str] | None,
    workdir: Path,
    progress: Progress,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    progress.phase("ceilings: kafka-python produce and consume")
    with broker(external, workdir) as servers:
        topic = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
        create_topics(servers, [topic], partitions={topic: PROFILE_INSERT.partitions})
        figures["kafka_produce"] = ceilings.kafka_produce(
            servers, topic, sample_records(scale.kafka_messages)
        )
        figures["kafka_consume"] = ceilings.kafka_consume(
            servers, topic, scale.kafka_messages, f"bench-{uuid.uuid4().hex[:8]}"
        )
    progress.phase("ceilings: PostgreSQL rows per second")
    figures["postgres_rows"] = ceilings.postgres_rows(postgres.admin_url, scale.postgres_rows)
    progress.phase("ceilings: argon2id hashes per second")
    cores = os.cpu_count() or 1
    figures["argon2_one_core"] = ceilings.argon2_hashes(1, scale.argon2_seconds)
    figures["argon2_all_cores"] = ceilings.argon2_hashes(cores, scale.argon2_seconds)
    return figures


def measure_pipeline(
    scale: Scale,
    postgres: PostgresServer,
    external: list[str] | None,
    workdir: Path,
    progress: Progress,
    proxy: bool = False,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    progress.phase("relay: outbox rows committed -> acknowledged")
    with broker(external, workdir) as servers:
        figures["relay"] = stages.relay_throughput(
            postgres.create_database("sp_bench_relay"), servers, scale.relay_rows, progress
        )
    progress.phase(f"starting the pipeline ({len(PROCESSES)} processes) on PostgreSQL")
    stack = Stack(
        workdir / "stack",
        database_urls={
            service: postgres.create_database(f"sp_bench_{service}") for service in SERVICES
        },
        bootstrap_servers=",".join(external) if external else None,
        api_workers=os.cpu_count() or 1,
        proxy=proxy,
    ).start()
    try:
        progress.phase("signup API under load")
        # Always the auth API process itself, so runs with and without --proxy compare.
        figures["signup"] = stages.signup_load(
            stack, scale.signup_clients, scale.signup_seconds, progress, stack.api_url("auth")
        )
        if proxy:
            figures["signup_proxy"] = proxy_cost(stack, scale, progress, figures["signup"])
        time.sleep(2)  # let the pipeline absorb the burst before timing single signups
        progress.phase("propagation: signup -> profile -> partner summary")
        figures["propagation"] = stages.propagation(
            stack, scale.propagation_signups, scale.propagation_rate, progress
        )
        figures["rss_mb"] = {}
        for process in stack.processes.values():
            figures["rss_mb"].update(stages.peak_rss_mb(process))
    finally:
        stack.stop()
    for workers in (1, 2):
        progress.phase(f"backlog drain: {scale.drain_events} events, {workers} member worker(s)")
        with broker(external, workdir) as servers:
            drain_stack = Stack(
                workdir / f"drain-{workers}",
                database_urls={"member": postgres.create_database(f"sp_bench_drain{workers}")},
                bootstrap_servers=",".join(servers),
            )
            drain_stack.migrate()
            if external:
                skip_group_to_end(servers, PROFILE_INSERT.consumer_group, PROFILE_INSERT.name)
            stages.produce_profile_inserts(servers, scale.drain_events, progress)
            try:
                result, processes = stages.drain(drain_stack, workers, scale.drain_events, progress)
                for process in processes:
                    figures["rss_mb"].update(stages.peak_rss_mb(process))
            finally:
                drain_stack.stop()
            figures[f"drain_{workers}"] = result
    return figures


def proxy_cost(
    stack: Stack, scale: Scale, progress: Progress, first_direct: dict[str, Any]
) -> dict[str, Any]:
    """The signup load through nginx beside the same load sent to the API directly:
    direct (already measured), nginx, direct, nginx, each `signup_seconds`, so that a
    drift of the machine's load falls on both. Requests/s and latency of each way, both
    rounds pooled, and what nginx costs."""
    runs: dict[str, list[dict[str, Any]]] = {"direct": [first_direct], "nginx": []}
    for way in ("nginx", "direct", "nginx"):
        progress.phase(f"signup API under load, {way}")
        url = stack.url("auth") if way == "nginx" else stack.api_url("auth")
        runs[way].append(
            stages.signup_load(stack, scale.signup_clients, scale.signup_seconds, progress, url)
        )

    def pooled(way: str) -> dict[str, Any]:
        accepted = sum(run["accepted"] for run in runs[way])
        seconds = sum(run["seconds"] for run in runs[way])
        return {
            "per_second": round(accepted / seconds, 2),
            "runs_per_second": [run["per_second"] for run in runs[way]],
            "latency_ms": {
                q: round(sum(run["latency_ms"][q] for run in runs[way]) / len(runs[way]), 2)
                for q in ("p50", "p99")
            },
            # nginx's master and its workers ("proxy", "proxy worker N").
            "nginx_cores": [
                round(
                    sum(
                        cores
                        for name, cores in run["cpu"]["cores_used_by_process"].items()
                        if name.startswith("proxy")
                    ),
                    3,
                )
                for run in runs[way]
            ],
        }

    direct, nginx = pooled("direct"), pooled("nginx")
    return {
        "direct": direct,
        "nginx": nginx,
        "throughput_change": round(nginx["per_second"] / direct["per_second"] - 1, 4),
        "p50_added_ms": round(nginx["latency_ms"]["p50"] - direct["latency_ms"]["p50"], 2),
        "p99_added_ms": round(nginx["latency_ms"]["p99"] - direct["latency_ms"]["p99"], 2),
    }


def ratio(value: float | None, ceiling: float | None) -> float | None:
    if not value or not ceiling:
        return None
    return round(value / ceiling, 3)


def assess(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure beside its ceiling and its target."""
    hashing = figures["argon2_all_cores"]["per_second"]
    produce = figures["kafka_produce"]["per_second"]
    consume = figures["kafka_consume"]["per_second"]
    rows_per_event = figures["drain_1"]["rows_per_event"]
    database = figures["postgres_rows"]["batched"]["per_second"] / rows_per_event
    drain_ceiling = min(consume, database)
    signup = figures["signup"]["per_second"]
    member = figures["propagation"]["to_member_profile_ms"]
    summary = figures["propagation"]["to_partner_summary_ms"]
    one = figures["drain_1"]["per_second"]
    two = figures["drain_2"]["per_second"]
    relay = figures["relay"]["per_second"]
    rss = figures["rss_mb"]

    def row(name: str, value: Any, ceiling: str, target: str, met: bool) -> dict[str, Any]:
        return {"figure": name, "measured": value, "ceiling": ceiling, "target": target, "met": met}

    fraction = ratio(signup, hashing) or 0
    rows = [
        row(
            "signup API, requests/s",
            f"{signup:.1f} (p50 {figures['signup']['latency_ms']['p50']} ms, "
            f"p99 {figures['signup']['latency_ms']['p99']} ms)",
            f"argon2id {hashing:.1f}/s on {figures['argon2_all_cores']['processes']} cores "
            f"→ {fraction:.0%}",
            "≥ 80% of hashing",
            fraction >= 0.8,
        ),
        row(
            "signup → member profile, p50",
            f"{member['p50']} ms",
            "",
            "≤ 20 ms",
            member["p50"] <= 20,
        ),
        row(
            "signup → member profile, p99",
            f"{member['p99']} ms",
            "",
            "≤ 100 ms",
            member["p99"] <= 100,
        ),
        row(
            "signup → partner summary, p50",
            f"{summary['p50']} ms",
            "",
            "≤ 40 ms",
            summary["p50"] <= 40,
        ),
        row(
            "signup → partner summary, p99",
            f"{summary['p99']} ms",
            "",
            "≤ 150 ms",
            summary["p99"] <= 150,
        ),
    ]
    fraction = ratio(one, drain_ceiling) or 0
    rows.append(
        row(
            "backlog drain, 1 member worker, events/s",
            f"{one:.0f}",
            f"min(consume {consume:.0f}/s, PostgreSQL {database:.0f} events/s) → {fraction:.0%}",
            "≥ 6,000/s and ≥ 50%",
            one >= 6000 and fraction >= 0.5,
        )
    )
    scaling = ratio(two, one) or 0
    rows.append(
        row(
            "backlog drain, 2 member workers, events/s",
            f"{two:.0f} ({scaling:.2f}× one)",
            "",
            "≥ 1.6× one",
            scaling >= 1.6,
        )
    )
    fraction = ratio(relay, produce) or 0
    rows.append(
        row(
            "outbox relay, rows/s",
            f"{relay:.0f}",
            f"kafka-python produce {produce:.0f}/s → {fraction:.0%}",
            "≥ 65% of produce",
            fraction >= 0.65,
        )
    )
    heaviest = max(rss, key=rss.get)
    rows.append(
        row(
            "peak RSS, largest process",
            f"{rss[heaviest]} MB ({heaviest})",
            "",
            "every process < 150 MB",
            all(value < 150 for value in rss.values()),
        )
    )
    return rows


def markdown(figures: dict[str, Any]) -> str:
    """The run as a Markdown table, with the machine and the ceilings underneath."""
    lines = [
        "| figure | measured | against | target | met |",
        "|---|---|---|---|---|",
    ]
    for item in figures["assessment"]:
        mark = "yes" if item["met"] else "**no**"
        lines.append(
            f"| {item['figure']} | {item['measured']} | {item['ceiling']} "
            f"| {item['target']} | {mark} |"
        )
    pg = figures["postgres_rows"]
    propagation = figures["propagation"]
    if "signup_proxy" in figures:
        cost = figures["signup_proxy"]
        direct, nginx = cost["direct"], cost["nginx"]
        lines += [
            "",
            "| signup load, same processes | requests/s (each run) | p50 ms | p99 ms |",
            "|---|---|---|---|",
            *(
                f"| {way} | {run['per_second']:.1f} "
                f"({', '.join(f'{r:.1f}' for r in run['runs_per_second'])}) "
                f"| {run['latency_ms']['p50']} | {run['latency_ms']['p99']} |"
                for way, run in (("to the auth API", direct), ("through nginx", nginx))
            ),
            "",
            f"nginx's cost: {cost['throughput_change']:+.1%} requests/s, "
            f"{cost['p50_added_ms']:+.2f} ms at p50, {cost['p99_added_ms']:+.2f} ms at p99; "
            f"nginx used {max(nginx['nginx_cores']):.3f} cores at most.",
        ]
    lines += [
        "",
        f"Ceilings: kafka-python produce {figures['kafka_produce']['per_second']:.0f}/s, "
        f"consume {figures['kafka_consume']['per_second']:.0f}/s "
        f"({figures['kafka_produce']['mean_value_bytes']:.0f} B values, "
        f"{figures['kafka_produce']['mean_headers_bytes']:.0f} B of headers); PostgreSQL "
        f"{pg['per_commit']['per_second']:.0f} rows/s one INSERT+COMMIT per row, "
        f"{pg['batched']['per_second']:.0f} rows/s batched by {pg['batched']['batch']}; "
        f"argon2id {figures['argon2_one_core']['per_second']:.1f} hashes/s on one core.",
        f"Propagation: {propagation['signups']} signups ({propagation['partners']} partners) "
        f"at {propagation['rate_per_second']}/s, databases polled every "
        f"{propagation['poll_interval_ms']} ms. Peak RSS (MB): "
        + ", ".join(f"{name} {mb}" for name, mb in sorted(figures["rss_mb"].items()))
        + ".",
        "CPU: the machine was "
        + "; ".join(
            f"{figures[phase]['cpu']['machine_busy']:.0%} busy during {label}"
            for phase, label in (
                ("signup", "the signup load"),
                ("drain_1", "the 1-worker drain"),
                ("drain_2", "the 2-worker drain"),
            )
        )
        + "; cores used during the signup load: "
        + ", ".join(
            f"{name} {cores:.2f}"
            for name, cores in sorted(figures["signup"]["cpu"]["cores_used_by_process"].items())
        )
        + " (the rest: PostgreSQL, the broker, the load generator).",
        f"Machine: {figures['machine']['cpus']} CPUs, {figures['machine']['platform']}, "
        f"Python {figures['machine']['python']}; broker {figures['machine']['broker']}; "
        f"{figures['mode']} run of {figures['wall_seconds']:.0f} s on {figures['date']}.",
    ]
    return "\n".join(lines)


def machine(broker: dict[str, Any]) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "broker": broker["summary"],
    }


@contextlib.contextmanager
def run_broker(kind: str, external: list[str] | None, workdir: Path) -> Iterator[list[str] | None]:
    """The cluster every phase uses (None: a fresh bundled broker per phase): the one in
    KAFKA_BOOTSTRAP_SERVERS, or for `apache` one local Apache Kafka node started here,
    with the pipeline's topics, and stopped at the end."""
    if kind != "apache":
        yield external
        return
    kafka = OneNodeKafka(workdir / "kafka", prepare_jars())
    try:
        kafka.start()
        create_topics(kafka.bootstrap_list, pipeline_topics())
        yield kafka.bootstrap_list
    finally:
        kafka.stop()


def main(argv: list[str] | None = None) -> int:
    shell = tool_settings()
    parser = argparse.ArgumentParser(
        prog="signup-pipeline bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    parser.add_argument("--output", default="bench-results.json", help="where to write the JSON")
    parser.add_argument(
        "--postgres-url",
        default=shell.bench_postgres_url or LOCAL_POSTGRES_URL,
        help="a PostgreSQL server where throwaway databases may be created",
    )
    parser.add_argument(
        "--kafka",
        choices=BROKERS,
        default=None,
        help="the broker: tansu, the bundled one, fresh for each phase (the default), or "
        f"apache, one local Apache Kafka {KAFKA_VERSION} node for the whole run, from the "
        "jars scripts/ensure-kafka-jars.sh caches (needs Java 17+). Leave it out when "
        "KAFKA_BOOTSTRAP_SERVERS names a running Kafka",
    )
    parser.add_argument(
        "--proxy",
        action="store_true",
        help="nginx in front of the APIs, as dev and docker-compose run it; the signup "
        "load is measured directly and through nginx, side by side (needs nginx: "
        "scripts/ensure-nginx.sh)",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.proxy and nginx_binary() is None:
        print("error: --proxy needs nginx: run scripts/ensure-nginx.sh", file=sys.stderr)
        return 2
    try:
        kind = chosen_broker(args.kafka, shell.bootstrap_servers)
        if kind == "apache":
            prepare_jars()  # here, so that what is missing is one line before any work
    except (ChoiceError, KafkaUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    use_security(kafka_security())  # an external cluster's login, as the services use it
    progress = Progress()
    started = time.perf_counter()
    figures: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": utcnow().strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale.__dict__,
    }
    postgres = PostgresServer(args.postgres_url)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        try:
            if kind == "apache":
                progress.phase(f"starting Apache Kafka {KAFKA_VERSION} (one node)")
            with run_broker(kind, shell.bootstrap_servers, Path(workdir)) as external:
                servers = ",".join(external or [])
                nodes = None if kind == "external" else 1
                figures["broker"] = describe_broker(kind, servers, nodes)
                figures["machine"] = machine(figures["broker"])
                progress.phase(f"broker: {figures['broker']['summary']}")
                figures.update(measure_ceilings(scale, postgres, external, Path(workdir), progress))
                figures.update(
                    measure_pipeline(
                        scale, postgres, external, Path(workdir), progress, proxy=args.proxy
                    )
                )
        except (BrokerError, StackError, KafkaClusterError, KafkaUnavailable) as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 2
        finally:
            postgres.drop_all()
    figures["wall_seconds"] = round(time.perf_counter() - started, 1)
    figures["assessment"] = assess(figures)
    progress.phase("done")
    print(file=sys.stderr)
    Path(args.output).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    print(markdown(figures))
    print(f"\nevery figure: {args.output}", file=sys.stderr)
    return 0
