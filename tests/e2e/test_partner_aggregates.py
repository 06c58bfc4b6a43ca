"""Partner aggregates end to end (issue 18): 100,000 simulated activity events through a
real broker into the batch worker process on PostgreSQL, with every tenth record sent
three times, deletions, and a fifth of the partners created only after all their
activity; every summary must then equal the replayed totals exactly, the average star
the exact mean, and the ranking the order of those totals."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from batch_service.models import PartnerSummary, WaitingActivity
from devtools.simulate import ActivitySimulator, SimulatedEvent, expected_totals, produce
from devtools.stack import Stack
from shared.messaging.kafka import make_producer
from shared.messaging.pipeline import ACTIVITY_TOPICS, PARTNER_CREATED
from tests.e2e.conftest import running_stack
from tests.pipeline_checks import wait_caught_up

pytestmark = pytest.mark.e2e

EVENTS = 100_000
PARTNERS = 400
LATE = PARTNERS // 5  # created only after all of their activity was sent
REPEAT_EVERY = 10  # every tenth record is sent three times (same ce_id)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres: Any, kafka_bootstrap: str
) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, postgres, kafka_bootstrap, "aggregates")


def send_partner_created(servers: list[str], partners: list[str]) -> None:
    """`partner-created` for each partner, as the member service's relay sends it."""
    producer = make_producer(servers)
    try:
        for partner in partners:
            producer.send(
                PARTNER_CREATED.name,
                value=json.dumps({"partnerId": partner}).encode(),
                key=partner.encode(),
                headers=[("ce_id", str(uuid.uuid4()).encode())],
            )
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)


def with_repeats(events: list[SimulatedEvent]) -> Iterator[SimulatedEvent]:
    """Every REPEAT_EVERY-th event three times in a row: a producer that retried."""
    for number, event in enumerate(events):
        yield event
        if number % REPEAT_EVERY == 0:
            yield event
            yield event


def test_100000_activity_events_end_in_exact_summaries(stack: Stack) -> None:
    servers = stack.bootstrap_servers.split(",")  # type: ignore[union-attr]
    partners = [str(uuid.uuid4()) for _ in range(PARTNERS)]
    on_time, late = partners[LATE:], partners[:LATE]  # the busiest (skew) come late
    events = ActivitySimulator(partners, seed=18, skew=1.0).events(EVENTS)
    expected = expected_totals(events, partners)
    assert sum(1 for e in events if e.topic.endswith("-deleted")) > EVENTS // 20

    send_partner_created(servers, on_time)
    sent = produce(servers, with_repeats(events), keep_events=False)
    assert sent.count == EVENTS + 2 * len(range(0, EVENTS, REPEAT_EVERY))
    engine = create_engine(stack.database_urls["batch"])
    try:
        # Some activity of the late partners has been applied by now, and waits.
        for topic in ACTIVITY_TOPICS:
            wait_caught_up(stack.bootstrap_servers or "", {"batch-service": topic.name}, 180)
        with engine.connect() as connection:
            waiting = connection.scalar(select(func.count()).select_from(WaitingActivity))
        assert waiting == LATE
        send_partner_created(servers, late)
        started = time.monotonic()
        for topic in (PARTNER_CREATED, *ACTIVITY_TOPICS):
            wait_caught_up(stack.bootstrap_servers or "", {"batch-service": topic.name}, 180)
        print(f"caught up {time.monotonic() - started:.1f} s after the late partners")

        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    PartnerSummary.partner_id,
                    PartnerSummary.post_count,
                    PartnerSummary.follower_count,
                    PartnerSummary.coordinate_count,
                    PartnerSummary.review_count,
                    PartnerSummary.star_sum,
                ).where(PartnerSummary.partner_id.in_(partners))
            ).all()
            assert connection.scalar(select(func.count()).select_from(WaitingActivity)) == 0
    finally:
        engine.dispose()
    stored = {row[0]: tuple(row[1:]) for row in rows}
    assert len(stored) == PARTNERS
    wrong = {
        partner: (stored[partner], expected[partner].as_dict())
        for partner in partners
        if stored[partner] != tuple(expected[partner].as_dict().values())
    }
    assert not wrong, f"{len(wrong)} summaries differ, e.g. {next(iter(wrong.items()))}"

    # The API's average star is the exact mean, and its ranking the totals' order.
    busiest = late[0]
    summary = get(stack, f"/partners/{busiest}/summary")
    totals = expected[busiest]
    assert totals.review_count > 0
    assert Fraction(summary["averageStar"]) == Fraction(totals.star_sum / totals.review_count)
    assert summary["averageStar"] == totals.star_sum / totals.review_count
    ranked = get(stack, "/partners/ranking?limit=30")["partners"]
    # (Other modules' partners on this broker have no activity: a score of 0.)
    ours = sorted(partners, key=lambda p: (-expected[p].score, p))
    assert [r["partnerId"] for r in ranked] == ours[:30]
    for row in ranked:
        assert row["score"] == pytest.approx(expected[row["partnerId"]].score)


def get(stack: Stack, path: str) -> Any:
    with urllib.request.urlopen(f"{stack.url('batch')}{path}", timeout=10) as response:
        return json.loads(response.read())
