"""reconcile's recomputation from records (orphans, duplicates, deletions, re-follows,
partners' lives), its comparison with stored summaries, and the command's exit codes."""

from __future__ import annotations

import io
import json
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.simulate import ActivitySimulator, cloudevent_headers, expected_totals
from operations.cli import main
from operations.reconcile import (
    SUMMARY,
    Counters,
    Difference,
    Report,
    compare,
    print_report,
    recompute,
)
from shared.messaging.kafka import Message

P1, P2, P3 = (str(uuid.UUID(int=n, version=4)) for n in (1, 2, 3))
FOLLOWER = str(uuid.UUID(int=99, version=4))
_offsets: dict[tuple[str, int], int] = {}


def record(
    topic: str, value: dict[str, Any] | bytes, ce_id: str | None = "", partition: int = 0
) -> Message:
    """A record of `topic` at the next offset of its partition; a fresh ce_id unless
    given (None: no ce_id header at all)."""
    offset = _offsets[(topic, partition)] = _offsets.get((topic, partition), -1) + 1
    headers = [] if ce_id is None else [("ce_id", (ce_id or uuid.uuid4().hex).encode())]
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Message(topic, None, body, headers, partition, offset)


def created(partner: str) -> Message:
    return record("partner-created", {"partnerId": partner})


def deleted(partner: str) -> Message:
    return record("partner-deleted", {"partnerId": partner})


def follow(partner: str, on: bool = True, follower: str = FOLLOWER) -> Message:
    topic = "follow-created" if on else "follow-deleted"
    return record(topic, {"followerId": follower, "partnerId": partner})


def post(partner: str, post_id: Any, on: bool = True, **kw: Any) -> Message:
    topic = "post-created" if on else "post-deleted"
    return record(topic, {"postId": post_id, "partnerId": partner}, **kw)


def review(partner: str, review_id: str, star: int) -> Message:
    return record("review-created", {"reviewId": review_id, "partnerId": partner, "star": star})


def test_a_thing_counts_iff_created_more_often_than_deleted_in_any_order() -> None:
    other = str(uuid.UUID(int=98, version=4))
    third = str(uuid.UUID(int=97, version=4))
    result = recompute(
        [
            created(P1),
            follow(P1, on=False),  # an orphan deletion, before its creation
            follow(P1),  # ... which brings it back to 0: not counted
            follow(P1, follower=other),
            follow(P1, on=False, follower=other),
            follow(P1, follower=other),  # a re-follow: counted
            follow(P1, on=False, follower=third),  # an orphan for good
            post(P1, 7),
            post(P1, "7", on=False),  # 7 and "7" are one post
            post(P1, "kept"),
        ]
    )
    assert result.counters == {P1: Counters(post_count=1, follower_count=1)}
    assert result.orphan_deletions == 1


def test_an_event_counts_once_by_ce_id_or_by_position() -> None:
    twice = post(P1, "a", ce_id="same")
    no_id = record("coordinate-closed", {"requestId": 1, "partnerId": P1}, ce_id=None)
    result = recompute(
        [
            created(P1),
            twice,
            post(P1, "a", on=False),
            twice,  # redelivered: its deletion stands
            record("coordinate-closed", {"requestId": 2, "partnerId": P1}, ce_id="same"),
            no_id,
            no_id,  # the same position twice
            record("coordinate-closed", {"requestId": 3, "partnerId": P1}, ce_id=None),
        ]
    )
    assert result.counters[P1] == Counters(post_count=0, coordinate_count=2)
    assert result.duplicates == 3


def test_only_partners_created_and_not_deleted_have_counters() -> None:
    result = recompute(
        [
            deleted(P2),  # a deletion read before its creation still wins
            created(P2),
            post(P2, "x"),
            created(P1),
            post(P3, "waits"),  # no partner-created: waiting, no summary expected
        ]
    )
    assert result.counters == {P1: Counters()}
    assert result.deleted == {P2}
    assert result.waiting == {P3}


def test_a_review_keeps_its_first_star_and_bad_records_count_nothing() -> None:
    result = recompute(
        [
            created(P1),
            record("review-created", b"not json", ce_id="r1"),
            review(P1, "r", 5),
            review(P1, "r", 1),  # the same review under another ce_id
            review(P1, "s", 2),
            record("review-created", {"reviewId": "t", "partnerId": P1, "star": 6}),
        ]
    )
    assert result.counters[P1] == Counters(review_count=2, star_sum=7)
    assert result.undecodable == 2


def test_an_undecodable_record_does_not_take_its_ce_id() -> None:
    # The worker dead-letters a record before its inbox claims the id.
    result = recompute(
        [created(P1), post(P1, "", ce_id="e1"), post(P1, "ok", ce_id="e1")]  # "" is no id
    )
    assert result.counters[P1].post_count == 1
    assert (result.undecodable, result.duplicates) == (1, 0)


def test_compare_names_each_field_and_each_summary_that_should_or_should_not_exist() -> None:
    result = recompute([created(P1), created(P2), deleted(P3), follow(P1)])
    never = "no partner-created for it in the topics"
    stored = {
        P1: Counters(follower_count=2),  # one too many
        P3: Counters(),  # a deleted partner's summary
        "extra": Counters(),  # never created in the topics
    }
    assert compare(result, stored) == [
        Difference(P1, "follower_count", 1, 2),
        Difference(P2, SUMMARY, "present", "absent", "partner-created read, no partner-deleted"),
        Difference(P3, SUMMARY, "absent", "present", "partner deleted"),
        Difference("extra", SUMMARY, "absent", "present", never),
    ]
    assert compare(result, {P1: Counters(follower_count=1), P2: Counters()}) == []


def as_records(events: list[Any], partners: list[str]) -> list[Message]:
    records = [created(p) for p in partners]
    for event in events:
        headers = cloudevent_headers(event)
        records.append(
            Message(event.topic, event.key.encode(), json.dumps(event.value).encode(), headers)
        )
    return records


def test_the_simulators_totals_and_reconciles_agree_in_any_order() -> None:
    partners = [P1, P2, P3]
    events = ActivitySimulator(partners, seed=11).events(4000)
    records = as_records(events, partners)
    random.Random(1).shuffle(records)  # topics are not ordered between them
    result = recompute(records)
    want = expected_totals(events, partners)
    assert {p: Counters(**t.as_dict()) for p, t in want.items()} == result.counters
    assert result.duplicates == result.undecodable == result.orphan_deletions == 0


# --- the command ----------------------------------------------------------------------


def test_reconcile_exits_3_when_the_broker_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(SystemExit) as exit_:
        main(["reconcile", "batch"])
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Kafka at 127.0.0.1:1") and err[-1] == "\n"


@pytest.mark.parametrize(
    "argv", [["reconcile"], ["reconcile", "member"], ["reconcile", "batch", "--wait", "x"]]
)
def test_reconcile_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_reconcile_help_says_what_retention_takes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["reconcile", "batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "beyond the topics' retention cannot be recomputed" in text
    assert "1 differences" in text


def test_simulate_without_partners_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "batch.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE partner_summaries (partner_id TEXT PRIMARY KEY)")
    monkeypatch.setenv("BATCH_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--events", "10"])
    assert exit_.value.code == 2
    assert "no partners in the batch database" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--partners", "nope"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:  # a partner given, but no broker
        main(["simulate", "--partners", P1])
    assert exit_.value.code == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in capsys.readouterr().err


def test_the_report_says_when_its_differences_may_be_in_flight() -> None:
    report = Report(
        partners_checked=2,
        events_read=30,
        duplicates=1,
        undecodable=0,
        orphan_deletions=0,
        deleted_partners=0,
        waiting_partners=0,
        lag=4,
        arrived=7,
        dead_letters=0,
        missing_topics=[],
        differences=[Difference(P1, "post_count", 3, 2), Difference(P2, "star_sum", 9, 8)],
    )
    out = io.StringIO()
    print_report(report, out, limit=1)
    text = out.getvalue()
    assert "not yet consumed 4 of these events" in text
    assert "7 events arrived while checking" in text
    assert f"{P1}  post_count       events say 3, stored 2" in text
    assert P2 not in text and "... and 1 more" in text
    document = report.as_json()
    assert document["ok"] is False and len(document["differences"]) == 2
