"""The batch service's figures of issue 18: how fast one batch worker drains a skewed
backlog of partner activity (batched, and one event per transaction), whether both ways
end with the same exact counters, and how fast `GET /partners/ranking` answers over a
million partners.

Everything real: the contract's processes (Stack), PostgreSQL, a Kafka-compatible
broker, and records exactly as the contract says other teams' services send them.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg2
from sqlalchemy import create_engine, func, insert, make_url, select, text

from batch_service.models import PartnerActivity, PartnerSummary, ProcessedEvent
from bench.stages import CpuMeter, percentiles
from devtools.stack import ManagedProcess, Stack
from shared.messaging.kafka import make_producer
from shared.messaging.outbox import cloudevent_headers, encode_event
from shared.messaging.pipeline import (
    COORDINATE_CLOSED,
    FOLLOW_CREATED,
    FOLLOW_DELETED,
    POST_CREATED,
    POST_DELETED,
    REVIEW_CREATED,
    Topic,
)
from shared.storage.db import utcnow

Progress = Callable[[str], None]

HOT_PARTNERS = 10
HOT_SHARE = 0.5  # of the events, for the HOT_PARTNERS
# The six topics' share of the backlog: posts and follows most, deletions fewer.
MIX: tuple[tuple[Topic[Any], float], ...] = (
    (POST_CREATED, 0.28),
    (POST_DELETED, 0.06),
    (FOLLOW_CREATED, 0.30),
    (FOLLOW_DELETED, 0.08),
    (COORDINATE_CLOSED, 0.12),
    (REVIEW_CREATED, 0.16),
)
# What each summary holds, in this order (the exactness check compares these).
COUNTERS = ("post_count", "follower_count", "coordinate_count", "review_count", "star_sum")

Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers


class _Row(NamedTuple):
    """What cloudevent_headers reads of an outbox row: the headers another team's
    producer sends are the same CloudEvents binding."""

    event_id: str
    source: str
    topic: str
    created_at: dt.datetime
    traceparent: str | None


@dataclass
class Backlog:
    """The records to drain, the partners they are for, and the counters they must leave
    (worked out here from what was generated, independently of the batch service)."""

    partners: list[str]
    records: list[Record]
    expected: dict[str, tuple[int, ...]]
    by_topic: Counter[str] = field(default_factory=Counter)


def make_backlog(events: int, partners: int, seed: int = 18) -> Backlog:
    """`events` activity records for `partners` partners (half of them for the first
    HOT_PARTNERS), in the MIX of the six topics, each with a unique ce_id; a deletion
    only ever deletes a post or a follow created earlier in the backlog (else a creation
    of the same kind is sent instead). Deterministic for a seed."""
    rng = random.Random(seed)

    def new_uuid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    ids = [new_uuid() for _ in range(partners)]
    hot = ids[:HOT_PARTNERS]
    now = utcnow()
    counters = {p: [0, 0, 0, 0, 0] for p in ids}
    live_posts: list[tuple[str, int]] = []
    live_follows: list[tuple[str, str]] = []
    topics = [topic for topic, _ in MIX]
    weights = [share for _, share in MIX]
    records: list[Record] = []
    by_topic: Counter[str] = Counter()
    next_post = next_request = next_review = 1

    def take(live: list[Any]) -> Any:
        at = rng.randrange(len(live))
        live[at], live[-1] = live[-1], live[at]
        return live.pop()

    for _ in range(events):
        partner = rng.choice(hot) if rng.random() < HOT_SHARE else rng.choice(ids)
        topic = rng.choices(topics, weights)[0]
        if topic is POST_DELETED and not live_posts:
            topic = POST_CREATED
        if topic is FOLLOW_DELETED and not live_follows:
            topic = FOLLOW_CREATED
        document: dict[str, Any]
        if topic is POST_CREATED:
            document = {"postId": next_post, "partnerId": partner}
            live_posts.append((partner, next_post))
            counters[partner][0] += 1
            next_post += 1
        elif topic is POST_DELETED:
            partner, post = take(live_posts)
            document = {"postId": post, "partnerId": partner}
            counters[partner][0] -= 1
        elif topic is FOLLOW_CREATED:
            follower = new_uuid()
            document = {"followerId": follower, "partnerId": partner}
            live_follows.append((partner, follower))
            counters[partner][1] += 1
        elif topic is FOLLOW_DELETED:
            partner, follower = take(live_follows)
            document = {"followerId": follower, "partnerId": partner}
            counters[partner][1] -= 1
        elif topic is COORDINATE_CLOSED:
            document = {"requestId": f"req-{next_request}", "partnerId": partner}
            counters[partner][2] += 1
            next_request += 1
        else:
            star = rng.randint(1, 5)
            document = {"reviewId": next_review, "partnerId": partner, "star": star}
            counters[partner][3] += 1
            counters[partner][4] += star
            next_review += 1
        if len(records) % 97 == 0:
            topic.load(document)  # a sample checked against the contract's schema
        row = _Row(
            event_id=new_uuid(),
            source=topic.producer,
            topic=topic.name,
            created_at=now,
            traceparent=f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01",
        )
        records.append(
            (
                topic.name,
                partner.encode(),
                encode_event(document).encode(),
                cloudevent_headers(row),
            )
        )
        by_topic[topic.name] += 1
    return Backlog(ids, records, {p: tuple(c) for p, c in counters.items()}, by_topic)


def open_summaries(database_url: str, partners: Sequence[str]) -> None:
    """An empty summary for each partner, inserted directly (as `partner-created` would
    have opened it): the drain then measures activity alone."""
    now = utcnow()
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(PartnerSummary),
                [{"partner_id": p, "created_at": now} for p in partners],
            )
    finally:
        engine.dispose()


def produce(servers: list[str], backlog: Backlog, progress: Progress) -> float:
    """Send every record of the backlog, acknowledged; the seconds it took."""
    producer = make_producer(servers, linger_ms=20, batch_size=256 * 1024)
    started = time.perf_counter()
    try:
        futures = []
        for n, (topic, key, value, headers) in enumerate(backlog.records):
            futures.append(producer.send(topic, value, key=key, headers=headers))
            if n % 10_000 == 0:
                progress(f"activity: {n}/{len(backlog.records)} events produced")
        producer.flush()
        for future in futures:
            future.get(timeout=0)
    finally:
        producer.close()
    return time.perf_counter() - started


def freshness(
    servers: list[str], database_url: str, partners: Sequence[str], samples: int = 30
) -> dict[str, Any]:
    """How soon an event shows in the ranking, with the worker caught up: one
    `follow-created` at a time for a partner, then the partner's score read every 2 ms
    until it moved. The ranking is read live from the same row (the score is a generated
    column, its index written in the same transaction), so this is also the ranking's
    freshness. Milliseconds from the send to the score read."""
    engine = create_engine(database_url)
    producer = make_producer(servers)
    seconds = []
    rng = random.Random(7)
    query = text("SELECT score FROM partner_summaries WHERE partner_id = :p")
    try:
        with engine.connect() as connection:
            for _ in range(samples):
                partner = rng.choice(list(partners))
                before = connection.execute(query, {"p": partner}).scalar()
                connection.commit()
                document = {"followerId": str(uuid.uuid4()), "partnerId": partner}
                headers = [("ce_id", str(uuid.uuid4()).encode())]
                started = time.perf_counter()
                producer.send(
                    FOLLOW_CREATED.name,
                    encode_event(document).encode(),
                    key=partner.encode(),
                    headers=headers,
                ).get(timeout=10)
                deadline = started + 10
                while time.perf_counter() < deadline:
                    score = connection.execute(query, {"p": partner}).scalar()
                    connection.commit()
                    if score != before:
                        seconds.append(time.perf_counter() - started)
                        break
                    time.sleep(0.002)
                else:
                    raise RuntimeError(f"a follow of {partner} did not show within 10 s")
    finally:
        producer.close()
        engine.dispose()
    return {"samples": samples, "latency_ms": percentiles(seconds)}


def _count(engine: Any, model: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar() or 0)


def drain(
    stack: Stack, mode: str, count: int, progress: Progress
) -> tuple[dict[str, Any], ManagedProcess]:
    """One batch worker (WORKER_TRANSACTION=`mode`) on topics already holding `count`
    activity events; timed from the moment it holds its partitions to the last event
    applied (its inbox holds one row per event)."""
    engine = create_engine(stack.database_urls["batch"])
    process = stack.spawn("batch-worker", extra_env={"WORKER_TRANSACTION": mode})
    try:
        progress(f"activity drain ({mode}): joining the group")
        stack.wait_ready(120, names=[process.name])
        cpu = CpuMeter([process]).start()
        started = time.perf_counter()
        first = done = _count(engine, ProcessedEvent)
        deadline = time.monotonic() + 120 + count / 100
        while done < count:
            stack.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"activity drain ({mode}) stalled at {done}/{count}")
            # A count of a growing table costs PostgreSQL time the worker would use:
            # every half second, and often only near the end, where it sets the clock.
            time.sleep(0.05 if done > 0.9 * count else 0.5)
            done = _count(engine, ProcessedEvent)
            progress(f"activity drain ({mode}): {done}/{count} applied")
        seconds = time.perf_counter() - started
        used = cpu.stop()
    finally:
        engine.dispose()
    return {
        "transaction": mode,
        "events": count,
        "applied_before_joined": first,
        "seconds": round(seconds, 2),
        "per_second": round((count - first) / seconds, 1),
        "cpu": used,
    }, process


def read_summaries(database_url: str) -> dict[str, tuple[int, ...]]:
    """Every partner's counters, as the batch database holds them."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    PartnerSummary.partner_id, *(PartnerSummary.__table__.c[c] for c in COUNTERS)
                )
            ).all()
    finally:
        engine.dispose()
    return {row[0]: tuple(int(v) for v in row[1:]) for row in rows}


def leftovers(database_url: str) -> dict[str, int]:
    """What the drain left that is not a counter: orphan deletions (net < 0) and
    activity still waiting; both 0 once the backlog is drained."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            orphans = connection.scalar(
                select(func.count()).select_from(PartnerActivity).where(PartnerActivity.net < 0)
            )
            waiting = connection.scalar(text("SELECT count(*) FROM waiting_activity"))
    finally:
        engine.dispose()
    return {"orphans": int(orphans or 0), "waiting_partners": int(waiting or 0)}


def exactness(backlog: Backlog, found: dict[str, dict[str, tuple[int, ...]]]) -> dict[str, Any]:
    """Whether each run's summaries equal the others' and what the backlog implies."""
    runs = list(found.values())
    wrong = {
        mode: sum(1 for p, c in backlog.expected.items() if summaries.get(p) != c)
        + len(set(summaries) - set(backlog.expected))
        for mode, summaries in found.items()
    }
    return {
        "identical": all(run == runs[0] for run in runs[1:]),
        "as_generated": not any(wrong.values()),
        "partners_wrong": wrong,
        "hot_partner_counters": dict(
            zip(COUNTERS, backlog.expected[backlog.partners[0]], strict=True)
        ),
    }


# --- ranking ------------------------------------------------------------------------

# Skewed counters, as a marketplace's are: most partners have little, a few a lot
# (random() to a power piles the values near 0). star_sum lies between 1 and 5 stars a
# review.
_FILL = """
INSERT INTO partner_summaries
    (partner_id, post_count, follower_count, coordinate_count, review_count, star_sum,
     created_at)
SELECT md5('bench-ranking-' || n::text)::uuid::text, posts, followers, coordinations,
       reviews, reviews + floor(stars * (4 * reviews + 1))::bigint, created_at
FROM (
    SELECT n,
           floor(power(random(), 4) * 400)::int AS posts,
           floor(power(random(), 8) * 50000)::int AS followers,
           floor(power(random(), 6) * 3000)::int AS coordinations,
           floor(power(random(), 6) * 5000)::int AS reviews,
           random() AS stars,
           now() - random() * interval '730 days' AS created_at
    FROM generate_series(%(first)s, %(last)s) AS n
) AS drawn
"""


def fill_summaries(database_url: str, partners: int, progress: Progress) -> dict[str, Any]:
    """`partners` summaries with skewed counters, in one migrated batch database (one
    INSERT ... SELECT generate_series per 100,000 rows, the ranking's index kept up as
    it goes), then VACUUM ANALYZE as autovacuum would; the seconds it took."""
    started = time.perf_counter()
    connection = _connect(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT setseed(0.18)")
            for first in range(1, partners + 1, 100_000):
                last = min(partners, first + 99_999)
                cursor.execute(_FILL, {"first": first, "last": last})
                connection.commit()
                progress(f"ranking: {last}/{partners} partner summaries")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE partner_summaries")
    finally:
        connection.close()
    return {"partners": partners, "seconds": round(time.perf_counter() - started, 1)}


def _connect(database_url: str) -> Any:
    """A raw psycopg2 connection to the database of a SQLAlchemy URL."""
    url = make_url(database_url)
    return psycopg2.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
    )


RANKING_SQL = "SELECT * FROM partner_summaries ORDER BY score DESC, partner_id LIMIT %(limit)s"


def ranking_sql(database_url: str, requests: int, limit: int = 30) -> dict[str, Any]:
    """The ranking's query alone, `requests` times on one connection (after 50 not
    timed): its latency, and the plan PostgreSQL chose."""
    connection = _connect(database_url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + RANKING_SQL, {"limit": limit})
            plan = cursor.fetchone()[0][0]
            seconds = []
            for n in range(requests + 50):
                started = time.perf_counter()
                cursor.execute(RANKING_SQL, {"limit": limit})
                rows = cursor.fetchall()
                if n >= 50:
                    seconds.append(time.perf_counter() - started)
            top = [row[0] for row in rows]
    finally:
        connection.close()
    return {
        "requests": requests,
        "latency_ms": percentiles(seconds),
        "plan": _plan_text(plan["Plan"]),
        "top": top,
    }


def _plan_text(node: dict[str, Any]) -> str:
    """`Limit > Index Scan using ix_partner_summaries_ranking`: the plan's nodes."""
    name = node["Node Type"]
    if "Index Name" in node:
        name += f" using {node['Index Name']}"
    children = node.get("Plans") or []
    return " > ".join([name, *(_plan_text(child) for child in children)])


def ranking_api(base_url: str, requests: int, limit: int = 30) -> dict[str, Any]:
    """`GET /partners/ranking?limit=<limit>`, `requests` times one after the other on
    one keep-alive connection (after 50 not timed), against the batch API process;
    every answer checked (200, `limit` partners, highest score first)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    seconds = []
    path = f"/partners/ranking?limit={limit}"
    try:
        for n in range(requests + 50):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"GET {path} answered {response.status}: {body[:200]!r}")
            if n >= 50:
                seconds.append(elapsed)
        partners = json.loads(body)["partners"]
    finally:
        connection.close()
    scores = [p["score"] for p in partners]
    if len(partners) != limit or scores != sorted(scores, reverse=True):
        raise RuntimeError(f"GET {path}: not the {limit} highest scores in order: {scores}")
    return {
        "requests": requests,
        "limit": limit,
        "latency_ms": percentiles(seconds),
        "top": [p["partnerId"] for p in partners],
        "top_score": scores[0],
        "response_bytes": len(body),
    }
