"""`signup-pipeline bench` (or `python -m bench`): every stage's speed beside the raw
limits of the same machine, measured in the same run.

    signup-pipeline bench [--quick] [--kafka tansu|apache] [--output bench-results.json]
                          [--postgres-url URL] [--proxy] [--only PART[,PART]]

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
from batch_service.consumer import BATCH_WORKER
from bench import activity, ceilings, stages
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
from shared.storage.migrations import upgrade


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
    activity_events: int
    activity_partners: int
    ranking_partners: int
    ranking_requests: int


FULL = Scale(
    50_000, 100_000, 3.0, 8, 20.0, 500, 20.0, 50_000, 20_000, 200_000, 10_000, 1_000_000, 1000
)
QUICK = Scale(10_000, 10_000, 1.0, 8, 3.0, 40, 20.0, 10_000, 3_000, 20_000, 2_000, 100_000, 1000)

# What a run measures, in this order; `--only` picks some.
PARTS = ("ceilings", "pipeline", "activity", "ranking")


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


def measure_activity(
    scale: Scale,
    postgres: PostgresServer,
    external: list[str] | None,
    workdir: Path,
    progress: Progress,
) -> dict[str, Any]:
    """The same skewed activity backlog drained twice by one batch worker on PostgreSQL,
    each time into a fresh database with the same partners' summaries and from topics
    holding exactly that backlog: batched (the default) and one event per transaction
    (WORKER_TRANSACTION=event). Both rates, their ratio, and whether both runs left the
    counters the backlog implies."""
    progress.phase(
        f"activity: generating {scale.activity_events} events for "
        f"{scale.activity_partners} partners"
    )
    backlog = activity.make_backlog(scale.activity_events, scale.activity_partners)
    runs: dict[str, dict[str, Any]] = {}
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    rss: dict[str, float] = {}
    for mode in ("batch", "event"):
        progress.phase(f"activity drain, WORKER_TRANSACTION={mode}")
        with broker(external, workdir) as servers:
            url = postgres.create_database(f"sp_bench_activity_{mode}")
            stack = Stack(
                workdir / f"activity-{mode}",
                database_urls={"batch": url},
                bootstrap_servers=",".join(servers),
            )
            stack.migrate()
            activity.open_summaries(url, backlog.partners)
            create_topics(servers, pipeline_topics())
            if external:
                # Only this backlog: the batch group starts at the end of each of its topics.
                for topic in BATCH_WORKER.topics:
                    skip_group_to_end(servers, topic.consumer_group, topic.name)
            produced = activity.produce(servers, backlog, progress)
            try:
                result, process = activity.drain(stack, mode, len(backlog.records), progress)
                rss.update(
                    {f"{name} ({mode})": mb for name, mb in stages.peak_rss_mb(process).items()}
                )
                # Read before the freshness check, whose follows are not in the backlog.
                found[mode] = activity.read_summaries(url)
                if mode == "batch":
                    progress("activity: how soon one event shows in the ranking")
                    fresh = activity.freshness(servers, url, backlog.partners)
            finally:
                stack.stop()
            result["produced_in_seconds"] = round(produced, 1)
            result["left"] = activity.leftovers(url)
            runs[mode] = result
    return {
        "activity": {
            "events": len(backlog.records),
            "partners": len(backlog.partners),
            "hot_partners": activity.HOT_PARTNERS,
            "hot_share": activity.HOT_SHARE,
            "summaries": "inserted directly before the drain",
            "by_topic": dict(sorted(backlog.by_topic.items())),
            "batch": runs["batch"],
            "event": runs["event"],
            "speedup": ratio(runs["batch"]["per_second"], runs["event"]["per_second"]),
            "freshness": fresh,
            "exact": activity.exactness(backlog, found),
            "rss_mb": rss,
        }
    }


def measure_ranking(
    scale: Scale,
    postgres: PostgresServer,
    external: list[str] | None,
    workdir: Path,
    progress: Progress,
) -> dict[str, Any]:
    """`GET /partners/ranking?limit=30` over `ranking_partners` summaries: the batch API
    process on PostgreSQL, and its query alone."""
    progress.phase(f"ranking: filling {scale.ranking_partners} partner summaries")
    url = postgres.create_database("sp_bench_ranking")
    upgrade("batch", url)
    fill = activity.fill_summaries(url, scale.ranking_partners, progress)
    progress.phase("ranking: the query alone")
    sql = activity.ranking_sql(url, scale.ranking_requests)
    progress.phase("ranking: GET /partners/ranking against the batch API")
    with broker(external, workdir) as servers:
        stack = Stack(
            workdir / "ranking", database_urls={"batch": url}, bootstrap_servers=",".join(servers)
        )
        process = stack.spawn("batch-api")
        try:
            stack.wait_ready(60, names=[process.name])
            api = activity.ranking_api(stack.api_url("batch"), scale.ranking_requests)
        finally:
            stack.stop()
    return {
        "ranking": {
            "fill": fill,
            "sql": sql,
            "api": api,
            "same_top_as_sql": api["top"] == sql["top"],
        }
    }


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


def row(name: str, value: Any, ceiling: str, target: str, met: bool) -> dict[str, Any]:
    """One line of the assessment: a figure, what it is set against, its target."""
    return {"figure": name, "measured": value, "ceiling": ceiling, "target": target, "met": met}


def assess(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure the run measured beside its ceiling and its target."""
    rows = pipeline_rows(figures) if "signup" in figures else []
    if "activity" in figures:
        rows += activity_rows(figures)
    if "ranking" in figures:
        rows += ranking_rows(figures["ranking"])
    rss = dict(figures.get("rss_mb", {}))
    rss.update(figures.get("activity", {}).get("rss_mb", {}))
    if rss:
        heaviest = max(rss, key=rss.__getitem__)
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


# Issue 18's targets for the batch worker and the ranking.
ACTIVITY_TARGET = 20_000  # events/s, batched, one worker
ACTIVITY_SPEEDUP = 3.0  # batched over one event per transaction
RANKING_P99_MS = 50.0
FRESHNESS_MS = 1_000  # an event shows in the ranking within 1 s


def activity_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The activity drain, batched and per event, and its exactness."""
    drained = figures["activity"]
    batched = drained["batch"]["per_second"]
    single = drained["event"]["per_second"]
    speedup = drained["speedup"] or 0
    consume = figures.get("kafka_consume", {}).get("per_second")
    fraction = ratio(batched, consume)
    exact = drained["exact"]
    return [
        row(
            "activity drain, 1 batch worker, events/s",
            f"{batched:.0f}",
            f"kafka-python consume {consume:.0f}/s → {fraction:.0%}" if fraction else "",
            f"≥ {ACTIVITY_TARGET:,}/s",
            batched >= ACTIVITY_TARGET,
        ),
        row(
            "activity drain, batched vs one event per transaction",
            f"{speedup:.1f}× ({single:.0f}/s per event)",
            "",
            f"≥ {ACTIVITY_SPEEDUP:g}×",
            speedup >= ACTIVITY_SPEEDUP,
        ),
        row(
            "activity drain, counters exact",
            "same in both runs, as generated"
            if exact["identical"] and exact["as_generated"]
            else f"partners wrong: {exact['partners_wrong']}",
            "",
            "every summary as the backlog implies, both ways",
            bool(exact["identical"] and exact["as_generated"]),
        ),
        *freshness_rows(drained.get("freshness")),
    ]


def freshness_rows(fresh: dict[str, Any] | None) -> list[dict[str, Any]]:
    """How soon one event shows in the ranking (older reports have no such figure)."""
    if not fresh:
        return []
    latency = fresh["latency_ms"]
    return [
        row(
            "one event → the ranking, worker caught up, p99",
            f"{latency['p99']} ms (p50 {latency['p50']} ms, {fresh['samples']} events)",
            "",
            f"< {FRESHNESS_MS:,} ms",
            latency["p99"] < FRESHNESS_MS,
        )
    ]


def ranking_rows(ranking: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranking's latency through the API, set beside its query alone."""
    api, sql = ranking["api"]["latency_ms"], ranking["sql"]["latency_ms"]
    partners = ranking["fill"]["partners"]
    return [
        row(
            f"GET /partners/ranking?limit=30, {partners:,} partners, p99",
            f"{api['p99']} ms (p50 {api['p50']} ms)",
            f"the query alone: p50 {sql['p50']} ms, p99 {sql['p99']} ms",
            f"< {RANKING_P99_MS:g} ms",
            api["p99"] < RANKING_P99_MS,
        )
    ]


def pipeline_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The signup pipeline's figures (they need the ceilings of the same run)."""
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
    lines.append("")
    if "kafka_produce" in figures:
        lines.append(ceilings_line(figures))
    if "signup" in figures:
        lines += pipeline_lines(figures)
    if "activity" in figures:
        lines.append(activity_line(figures["activity"]))
    if "ranking" in figures:
        lines.append(ranking_line(figures["ranking"]))
    lines.append(
        f"Machine: {figures['machine']['cpus']} CPUs, {figures['machine']['platform']}, "
        f"Python {figures['machine']['python']}; broker {figures['machine']['broker']}; "
        f"{figures['mode']} run of {figures['wall_seconds']:.0f} s on {figures['date']}"
        + (f" (only {', '.join(figures['parts'])})" if "parts" in figures else "")
        + "."
    )
    return "\n".join(lines)


def ceilings_line(figures: dict[str, Any]) -> str:
    pg = figures["postgres_rows"]
    return (
        f"Ceilings: kafka-python produce {figures['kafka_produce']['per_second']:.0f}/s, "
        f"consume {figures['kafka_consume']['per_second']:.0f}/s "
        f"({figures['kafka_produce']['mean_value_bytes']:.0f} B values, "
        f"{figures['kafka_produce']['mean_headers_bytes']:.0f} B of headers); PostgreSQL "
        f"{pg['per_commit']['per_second']:.0f} rows/s one INSERT+COMMIT per row, "
        f"{pg['batched']['per_second']:.0f} rows/s batched by {pg['batched']['batch']}; "
        f"argon2id {figures['argon2_one_core']['per_second']:.1f} hashes/s on one core."
    )


def pipeline_lines(figures: dict[str, Any]) -> list[str]:
    propagation = figures["propagation"]
    return [
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
    ]


def activity_line(drained: dict[str, Any]) -> str:
    batched, single = drained["batch"], drained["event"]
    mix = ", ".join(f"{topic} {count}" for topic, count in drained["by_topic"].items())
    return (
        f"Activity: {drained['events']} events ({mix}) for {drained['partners']} partners "
        f"whose summaries were {drained['summaries']}, {drained['hot_share']:.0%} of them "
        f"for {drained['hot_partners']} hot partners; one batch worker drained them in "
        f"{batched['seconds']} s batched ({batched['per_second']:.0f}/s, the machine "
        f"{batched['cpu']['machine_busy']:.0%} busy) and in {single['seconds']} s one event "
        f"per transaction ({single['per_second']:.0f}/s, "
        f"{single['cpu']['machine_busy']:.0%} busy); summaries identical in both runs: "
        f"{'yes' if drained['exact']['identical'] else 'NO'}, as the backlog implies: "
        f"{'yes' if drained['exact']['as_generated'] else 'NO'}."
    )


def ranking_line(ranking: dict[str, Any]) -> str:
    api, sql = ranking["api"], ranking["sql"]
    return (
        f"Ranking: {ranking['fill']['partners']} summaries with skewed counters loaded in "
        f"{ranking['fill']['seconds']} s; {api['requests']} GET /partners/ranking?limit="
        f"{api['limit']} one after another on one connection to one API worker: p50 "
        f"{api['latency_ms']['p50']} ms, p90 {api['latency_ms']['p90']} ms, p99 "
        f"{api['latency_ms']['p99']} ms, max {api['latency_ms']['max']} ms "
        f"({api['response_bytes']} B answers); the query alone p50 {sql['latency_ms']['p50']} "
        f"ms, p99 {sql['latency_ms']['p99']} ms, plan {sql['plan']}; same top 30 both ways: "
        f"{'yes' if ranking['same_top_as_sql'] else 'NO'}."
    )


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


def parts_list(text: str) -> list[str]:
    """`--only activity,ranking`: known parts, at least one."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in PARTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"not a part: {', '.join(unknown) or repr(text)} (parts: {', '.join(PARTS)})"
        )
    return chosen


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
    parser.add_argument(
        "--only",
        type=parts_list,
        default=None,
        metavar="PART[,PART]",
        help=f"measure only these parts of {', '.join(PARTS)} (pipeline brings the "
        "ceilings its figures are set against); by default all of them",
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    parts = set(args.only or PARTS)
    if "pipeline" in parts:
        parts.add("ceilings")
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
    if args.only:
        figures["parts"] = [part for part in PARTS if part in parts]
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
                work = Path(workdir)
                if "ceilings" in parts:
                    figures.update(measure_ceilings(scale, postgres, external, work, progress))
                if "pipeline" in parts:
                    figures.update(
                        measure_pipeline(
                            scale, postgres, external, work, progress, proxy=args.proxy
                        )
                    )
                if "activity" in parts:
                    figures.update(measure_activity(scale, postgres, external, work, progress))
                if "ranking" in parts:
                    figures.update(measure_ranking(scale, postgres, external, work, progress))
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
