"""The batch service's partner aggregates (issue 18): activity events become exact
counters, an exact average star and a score, through the real processor and handlers.

Every test runs on SQLite here, and again on PostgreSQL in
tests/integration/test_partner_aggregates_on_postgres.py (the two dialects take
different statements for the counter update).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import Any

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import event, func, select

from batch_service.api import create_app
from batch_service.models import (
    Base,
    DeletedPartner,
    PartnerActivity,
    PartnerSummary,
    WaitingActivity,
)
from shared.messaging.kafka import Message
from shared.messaging.processor import BatchReport, Outcome
from shared.storage.db import Database
from tests.fakes import FakeBroker
from tests.lifecycle import (
    batch_processor,
    partner_created_record,
    partner_deleted_record,
    record,
    uuid_of,
)
from tests.schema import create_tables

P1, P2, P3 = uuid_of(1001), uuid_of(1002), uuid_of(1003)
FAN1, FAN2 = uuid_of(2001), uuid_of(2002)


def post(partner: str, post_id: str | int, *, deleted: bool = False) -> Message:
    topic = "post-deleted" if deleted else "post-created"
    return record(topic, {"postId": post_id, "partnerId": partner})


def follow(partner: str, follower: str, *, deleted: bool = False) -> Message:
    topic = "follow-deleted" if deleted else "follow-created"
    return record(topic, {"followerId": follower, "partnerId": partner})


def closed(partner: str, request_id: str) -> Message:
    return record("coordinate-closed", {"requestId": request_id, "partnerId": partner})


def review(partner: str, review_id: str, star: int) -> Message:
    return record("review-created", {"reviewId": review_id, "partnerId": partner, "star": star})


def again(message: Message, offset: int) -> Message:
    """The same record (same ce_id) delivered again, at another offset."""
    return Message(
        message.topic,
        message.key,
        message.value,
        message.headers,
        partition=message.partition,
        offset=offset,
    )


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database.from_url(database_url, Base.metadata)
    create_tables(database)
    yield database
    database.engine.dispose()


def apply(database: Database, messages: Sequence[Message], **options: Any) -> BatchReport:
    """One poll of `messages` (in this order, by partition) through the batch worker's
    processor; every record must be committed."""
    processor = batch_processor(database, FakeBroker(), **options)
    batch: dict[TopicPartition, list[Message]] = {}
    for message in messages:
        batch.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
    report = processor.apply(batch)
    assert all(p.retry_at is None for p in report.partitions.values()), report.partitions
    return report


def summary(database: Database, partner: str) -> dict[str, Any] | None:
    with database.unit_of_work() as uow:
        row = uow.session.get(PartnerSummary, partner)
        if row is None:
            return None
        return {
            "posts": row.post_count,
            "followers": row.follower_count,
            "coordinates": row.coordinate_count,
            "reviews": row.review_count,
            "star_sum": row.star_sum,
            "average": row.average_star,
            "score": row.score,
        }


def counters(database: Database, partner: str) -> tuple[int, int, int, int, int] | None:
    found = summary(database, partner)
    if found is None:
        return None
    return (
        found["posts"],
        found["followers"],
        found["coordinates"],
        found["reviews"],
        found["star_sum"],
    )


def scalar(database: Database, query: Any) -> Any:
    with database.unit_of_work() as uow:
        return uow.session.scalar(query)


class TestCounters:
    def test_every_kind_of_activity_is_counted_and_the_average_star_is_exact(
        self, database: Database
    ) -> None:
        apply(database, [partner_created_record(P1)])
        apply(
            database,
            [
                post(P1, 1),
                post(P1, 2),
                post(P1, "p-3"),
                post(P1, 2, deleted=True),
                follow(P1, FAN1),
                follow(P1, FAN2),
                closed(P1, "r1"),
                review(P1, "v1", 5),
                review(P1, "v2", 4),
                review(P1, "v3", 4),
            ],
        )
        found = summary(database, P1)
        assert found is not None
        assert counters(database, P1) == (2, 2, 1, 3, 13)
        assert found["average"] == 13 / 3  # the mean itself, not a rounded copy
        assert Fraction(found["star_sum"], found["reviews"]) == Fraction(13, 3)
        assert found["score"] == pytest.approx(2 * 0.4 + 1 * 0.3 + (13 / 3) * 0.3)

    def test_a_record_delivered_three_times_counts_once(self, database: Database) -> None:
        apply(database, [partner_created_record(P1)])
        first = follow(P1, FAN1)
        rated = review(P1, "v1", 3)
        apply(database, [first, again(first, 10_001), rated, again(rated, 10_002)])
        report = apply(database, [again(first, 10_003), again(rated, 10_004)])
        assert report.outcomes == [Outcome.DUPLICATE, Outcome.DUPLICATE]
        assert counters(database, P1) == (0, 1, 0, 1, 3)

    def test_the_same_thing_created_under_two_event_ids_counts_once(
        self, database: Database
    ) -> None:
        """A producer that retried with a new ce_id: the post, the review, the closed
        request are one thing each (their ids), so counted once."""
        apply(database, [partner_created_record(P1)])
        apply(database, [post(P1, 7), review(P1, "v1", 5), closed(P1, "r1")])
        apply(database, [post(P1, "7"), review(P1, "v1", 1), closed(P1, "r1")])
        assert counters(database, P1) == (1, 0, 1, 1, 5)  # the first star is the one kept

    def test_an_unfollow_then_refollow_counts_the_follower_once(self, database: Database) -> None:
        apply(database, [partner_created_record(P1)])
        apply(database, [follow(P1, FAN1)])
        apply(database, [follow(P1, FAN1, deleted=True)])
        assert counters(database, P1) == (0, 0, 0, 0, 0)
        apply(database, [follow(P1, FAN1)])
        assert counters(database, P1) == (0, 1, 0, 0, 0)


class TestOrder:
    def test_a_deletion_before_its_creation_never_goes_below_zero_and_ends_right(
        self, database: Database
    ) -> None:
        apply(database, [partner_created_record(P1)])
        report = apply(database, [follow(P1, FAN1, deleted=True), post(P1, 9, deleted=True)])
        assert report.outcomes == [Outcome.APPLIED, Outcome.APPLIED]
        assert counters(database, P1) == (0, 0, 0, 0, 0)
        orphans = select(func.count()).where(PartnerActivity.net < 0)
        assert scalar(database, orphans) == 2  # recorded, to be reported
        apply(database, [follow(P1, FAN1), post(P1, 9)])  # the creations, late
        assert counters(database, P1) == (0, 0, 0, 0, 0)
        assert scalar(database, orphans) == 0

    def test_a_deletion_of_something_never_counted_is_not_subtracted(
        self, database: Database
    ) -> None:
        apply(database, [partner_created_record(P1)])
        apply(database, [post(P1, 1), post(P1, 2)])
        apply(database, [post(P1, 3, deleted=True)])  # post 3 was never counted
        assert counters(database, P1) == (2, 0, 0, 0, 0)

    @pytest.mark.parametrize("seed", range(6))
    def test_any_arrival_order_and_any_batching_ends_with_the_same_counters(
        self, database: Database, seed: int
    ) -> None:
        """One random stream (deletions, re-follows, records delivered twice) applied
        three ways, each to its own three partners: in its order in one batch; shuffled
        across topics in small batches; one event per transaction. All three end with
        the counters replayed by hand."""
        ways = ("one batch", "shuffled", "one per transaction")
        for number, way in enumerate(ways):
            partners = [uuid_of(10_000 * (number + 1) + n) for n in range(3)]
            messages, expected = _stream(random.Random(seed), partners, 400)
            apply(database, [partner_created_record(p) for p in partners])
            if way == "one batch":
                apply(database, messages)
            elif way == "shuffled":
                random.Random(seed).shuffle(messages)
                for start in range(0, len(messages), 37):
                    apply(database, messages[start : start + 37])
            else:
                apply(database, messages, one_event_per_transaction=True)
            found = {p: counters(database, p) for p in partners}
            assert found == expected, way


class TestPartnersLife:
    def test_activity_before_its_partner_waits_then_counts(self, database: Database) -> None:
        report = apply(database, [post(P1, 1), follow(P1, FAN1), review(P1, "v1", 2)])
        assert report.outcomes == [Outcome.APPLIED] * 3  # not lost, not dead-lettered
        assert summary(database, P1) is None
        assert scalar(database, select(WaitingActivity.events)) == 3
        apply(database, [partner_created_record(P1)])
        assert counters(database, P1) == (1, 1, 0, 1, 2)
        assert scalar(database, select(func.count()).select_from(WaitingActivity)) == 0

    @pytest.mark.parametrize("created_first", [True, False])
    def test_activity_and_its_partner_in_one_batch_count_in_either_order(
        self, database: Database, created_first: bool
    ) -> None:
        activity = [post(P1, 1), post(P1, 2), closed(P1, "r")]
        created = [partner_created_record(P1)]
        apply(database, created + activity if created_first else activity + created)
        assert counters(database, P1) == (2, 0, 1, 0, 0)
        assert scalar(database, select(func.count()).select_from(WaitingActivity)) == 0

    def test_activity_for_a_deleted_partner_is_dropped_and_counted(
        self, database: Database
    ) -> None:
        apply(database, [partner_created_record(P1), post(P1, 1)])
        apply(database, [partner_deleted_record(P1)])
        report = apply(database, [post(P1, 2), follow(P1, FAN1)])
        assert report.outcomes == [Outcome.APPLIED] * 2
        assert summary(database, P1) is None
        assert scalar(database, select(DeletedPartner.dropped_events)) == 2
        assert scalar(database, select(func.count()).select_from(PartnerActivity)) == 0
        assert scalar(database, select(func.count()).select_from(WaitingActivity)) == 0

    def test_waiting_activity_of_a_partner_deleted_before_it_opened_is_dropped(
        self, database: Database
    ) -> None:
        apply(database, [post(P1, 1), post(P1, 2), post(P1, 3)])
        apply(database, [partner_deleted_record(P1)])
        apply(database, [partner_created_record(P1)])  # late: the tombstone wins
        assert summary(database, P1) is None
        assert scalar(database, select(DeletedPartner.dropped_events)) == 3
        assert scalar(database, select(func.count()).select_from(PartnerActivity)) == 0

    def test_other_partners_are_untouched(self, database: Database) -> None:
        apply(database, [partner_created_record(P1), partner_created_record(P2)])
        apply(database, [post(P1, 1), follow(P2, FAN1), partner_deleted_record(P1)])
        assert summary(database, P1) is None
        assert counters(database, P2) == (0, 1, 0, 0, 0)


class TestBatching:
    def test_a_hot_partner_costs_one_row_update_per_batch(self, database: Database) -> None:
        """300 events for two partners in one poll: the summaries are written by one
        statement touching two rows, whatever the number of events."""
        apply(database, [partner_created_record(P1), partner_created_record(P2)])
        messages = [post(P1 if n % 3 else P2, n) for n in range(300)]
        with _statements(database) as seen:
            apply(database, messages)
        updates = [(sql, rows) for sql, rows in seen if sql.startswith("UPDATE partner_summaries")]
        assert len(updates) == 1, updates
        assert updates[0][1] in (1, 2)  # one statement for 2 partners, or 2 parameter sets
        assert counters(database, P1) == (200, 0, 0, 0, 0)
        assert counters(database, P2) == (100, 0, 0, 0, 0)

    def test_one_event_per_transaction_applies_each_alone(self, database: Database) -> None:
        """The benchmark's baseline really is one transaction per event."""
        apply(database, [partner_created_record(P1)])
        with _statements(database) as seen:
            apply(database, [post(P1, n) for n in range(20)], one_event_per_transaction=True)
        updates = [sql for sql, _ in seen if sql.startswith("UPDATE partner_summaries")]
        assert len(updates) == 20
        assert counters(database, P1) == (20, 0, 0, 0, 0)


class TestApi:
    def test_the_ranking_orders_by_score_then_partner_id(self, database: Database) -> None:
        partners = [uuid_of(3000 + n) for n in range(5)]
        apply(database, [partner_created_record(p) for p in partners])
        a, b, c, d, e = partners
        apply(
            database,
            [
                follow(c, FAN1),
                follow(c, FAN2),  # c: 0.8
                follow(a, FAN1),
                review(a, "ra", 4),  # a: 0.4 + 1.2 = 1.6
                follow(e, FAN1),
                review(e, "re", 4),  # e: 1.6, ties with a: a first (smaller id)
                closed(b, "rb"),  # b: 0.3
            ],
        )
        client = create_app(database).test_client()
        answer = client.get("/partners/ranking?limit=4")
        assert answer.status_code == 200
        ranked = answer.get_json()["partners"]
        assert [r["partnerId"] for r in ranked] == [a, e, c, b]
        assert ranked[0] == {
            "partnerId": a,
            "postCount": 0,
            "followerCount": 1,
            "coordinateCount": 0,
            "reviewCount": 1,
            "averageStar": 4.0,
            "score": pytest.approx(1.6),
        }
        assert len(client.get("/partners/ranking").get_json()["partners"]) == 5
        assert d not in [r["partnerId"] for r in ranked]
        summary_answer = client.get(f"/partners/{a}/summary").get_json()
        assert summary_answer == ranked[0]

    @pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5", "", "٣"])
    def test_a_bad_limit_is_a_clear_400(self, database: Database, limit: str) -> None:
        answer = create_app(database).test_client().get(f"/partners/ranking?limit={limit}")
        assert answer.status_code == 400
        body = answer.get_json()
        assert body["error"] == "validation_failed"
        assert "limit" in body["fields"]

    def test_a_limit_of_100_is_allowed(self, database: Database) -> None:
        answer = create_app(database).test_client().get("/partners/ranking?limit=100")
        assert answer.status_code == 200
        assert answer.get_json() == {"partners": []}


# --- helpers ---------------------------------------------------------------------------


def _stream(
    rng: random.Random, partners: list[str], count: int
) -> tuple[list[Message], dict[str, tuple[int, int, int, int, int]]]:
    """A random activity stream for `partners` that a real world could produce (a post
    deleted once, after its creation; a follower unfollowing and following again; a
    few records delivered twice), and the counters it must end with, replayed by hand."""
    messages: list[Message] = []
    posts: dict[str, set[int]] = {p: set() for p in partners}
    following: dict[str, set[str]] = {p: set() for p in partners}
    closed_requests: dict[str, int] = dict.fromkeys(partners, 0)
    stars: dict[str, list[int]] = {p: [] for p in partners}
    fans = [uuid_of(5000 + n) for n in range(12)]
    next_id = iter(range(1, 10**9))
    for _ in range(count):
        partner = rng.choice(partners)
        kind = rng.random()
        if kind < 0.3:
            number = next(next_id)
            posts[partner].add(number)
            messages.append(post(partner, number))
        elif kind < 0.4 and posts[partner]:
            number = rng.choice(sorted(posts[partner]))
            posts[partner].discard(number)
            messages.append(post(partner, number, deleted=True))
        elif kind < 0.7:
            fan = rng.choice(fans)
            if fan in following[partner]:
                following[partner].discard(fan)
                messages.append(follow(partner, fan, deleted=True))
            else:
                following[partner].add(fan)
                messages.append(follow(partner, fan))
        elif kind < 0.85:
            closed_requests[partner] += 1
            messages.append(closed(partner, f"r{next(next_id)}"))
        else:
            star = rng.randint(1, 5)
            stars[partner].append(star)
            messages.append(review(partner, f"v{next(next_id)}", star))
        if rng.random() < 0.05:
            messages.append(again(messages[-1], 900_000 + len(messages)))
    expected = {
        p: (len(posts[p]), len(following[p]), closed_requests[p], len(stars[p]), sum(stars[p]))
        for p in partners
    }
    return messages, expected


@contextmanager
def _statements(database: Database) -> Iterator[list[tuple[str, int]]]:
    """(statement, parameter sets) of every statement run on `database` in the block."""
    seen: list[tuple[str, int]] = []

    def before(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((" ".join(sql.split()), len(params) if many else 1))

    event.listen(database.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", before)
