"""`signup-pipeline status` and `trace`: their arithmetic and what they print, from
readings made up here (no database, no broker)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest

from operations.cli import main
from operations.dlt import UnknownTopic, check_topic
from operations.formatting import format_duration, partition_lag_text
from operations.offsets import LogRange, PartitionLag, partition_lags
from operations.sources import Endpoints, Unavailable
from operations.status import (
    ActivityCounts,
    GroupLag,
    OutboxBacklog,
    PipelineStatus,
    StageCounts,
    TopicBacklog,
    render_status,
    status_json,
)
from operations.trace import (
    AuthRecord,
    BatchRecord,
    MemberRecord,
    OutboxRow,
    SignupTrace,
    Step,
    assemble_trace,
    render_trace,
    step_intervals,
    trace_json,
)
from shared.config import Settings, dev_broker_file, operator_broker
from shared.messaging.pipeline import ACTIVITY_TOPICS, TOPICS

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
MEMBER = "5f0c6d1e-8a51-4c1b-9d38-2f7c1b6a0e11"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def at(ms: float) -> dt.datetime:
    """`ms` milliseconds after NOW."""
    return NOW + dt.timedelta(milliseconds=ms)


# --- arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0 ms"),
        (0.35, "350 ms"),
        (12.34, "12.3 s"),
        (245, "4m 5s"),
        (7_380, "2h 3m"),
        (3 * 86_400 + 4 * 3_600 + 59, "3d 4h"),
    ],
)
def test_durations_read_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_lag_is_end_minus_committed_and_from_the_beginning_where_nothing_was_committed() -> None:
    ranges = [LogRange(1, 0, 10), LogRange(0, 5, 12), LogRange(2, 0, 4)]

    lags = partition_lags(ranges, {1: 7, 2: 4})

    assert [(p.partition, p.lag) for p in lags] == [(0, 7), (1, 3), (2, 0)]
    assert GroupLag("g", "t", tuple(lags)).total == 10


def test_a_committed_offset_past_the_end_counts_as_no_lag() -> None:
    assert PartitionLag(0, beginning=0, end=5, committed=9).lag == 0


def test_dead_letters_are_counted_from_the_log_start_not_from_zero() -> None:
    assert LogRange(0, beginning=40, end=43).records == 3


def lags(*values: int) -> list[PartitionLag]:
    return [PartitionLag(n, 0, lag, 0) for n, lag in enumerate(values)]


def test_every_partition_is_shown_when_it_fits() -> None:
    assert partition_lag_text(lags(0, 3, 0), 80) == "p0 0  p1 3  p2 0"


def test_only_lagging_partitions_are_shown_when_all_do_not_fit() -> None:
    partitions = lags(*([0] * 40 + [5, 0, 7]))

    assert partition_lag_text(partitions, 30) == "p40 5  p42 7"
    assert partition_lag_text(lags(*[0] * 40), 30) == "0 on every partition"


def test_lagging_partitions_that_do_not_fit_are_counted() -> None:
    text = partition_lag_text(lags(*[9] * 50), 40)

    assert text.endswith("more)")
    assert len(text) <= 40
    shown = text.count(" 9")
    assert f"(+{50 - shown} more)" in text


# --- the status screen and JSON ---------------------------------------------------------


def a_status(**changes: Any) -> PipelineStatus:
    def no_lag(group: str, topic: str) -> GroupLag:
        return GroupLag(group, topic, tuple(lags(0, 0, 0, 0, 0, 0)))

    lag = {
        topic.name: no_lag(topic.consumer_group, topic.name)
        for topic in TOPICS
        if topic.name != "profile-insert"
    }
    lag["profile-insert"] = GroupLag("member-service", "profile-insert", tuple(lags(0, 2, 0, 1)))
    quiet = TopicBacklog(0, None, 0)
    status = PipelineStatus(
        at=NOW,
        window=dt.timedelta(seconds=60),
        topics=TOPICS,
        sources={"auth": "sqlite:///a.db", "kafka": "k:9092"},
        stages={
            "auth": StageCounts(
                12,
                OutboxBacklog(
                    {
                        "profile-insert": TopicBacklog(3, NOW - dt.timedelta(seconds=125), 9),
                        "profile-delete": TopicBacklog(1, NOW - dt.timedelta(seconds=5), 2),
                    }
                ),
            ),
            "member": StageCounts(
                9,
                OutboxBacklog(
                    {
                        "partner-created": TopicBacklog(0, None, 4),
                        "profile-created": TopicBacklog(0, None, 8),
                        "profile-rejected": TopicBacklog(0, None, 1),
                        "partner-deleted": quiet,
                    }
                ),
            ),
            "batch": StageCounts(4, None, ActivityCounts(12, 3, 2, 5)),
        },
        lag=lag,
        dead_letters={t.dead_letter: 1 if t.name == "profile-insert" else 0 for t in TOPICS},
        took=0.042,
    )
    return dataclasses.replace(status, **changes)


def test_status_screen_shows_each_stage_in_flow_order() -> None:
    lines = render_status(a_status(), width=120).splitlines()

    stages = [line for line in lines if line[:1].isdigit()]
    assert [line.split("  ")[0] for line in stages] == [
        "1 auth: signup accepted",
        "2 auth outbox → profile-insert",
        "3 profile-insert → member-service",
        "4 member: profile created",
        "5 member outbox → partner-created",
        "6 partner-created → batch-service",
        "7 batch: summary created",
        "8 member outbox → profile-created",
        "9 profile-created → auth-service",
        "10 member outbox → profile-rejected",
        "11 profile-rejected → auth-service",
        "12 auth outbox → profile-delete",
        "13 profile-delete → member-service",
        "14 member outbox → partner-deleted",
        "15 partner-deleted → batch-service",
        "16 post-created → batch-service",
        "17 post-deleted → batch-service",
        "18 follow-created → batch-service",
        "19 follow-deleted → batch-service",
        "20 coordinate-closed → batch-service",
        "21 review-created → batch-service",
        "22 batch: partner activity not counted",
    ]
    dead = [line.split()[0] for line in lines if line.startswith("  ") and ".DLT" in line]
    assert dead == [t.dead_letter for t in TOPICS]
    text = "\n".join(lines)
    assert "12 accepted" in text
    assert "3 unpublished, oldest 2m 5s" in text
    assert "1 unpublished, oldest 5.0 s" in text
    assert "9 published" in text and "8 published" in text
    assert "lag 3: p0 0  p1 2  p2 0  p3 1" in text
    assert "1 dead letter" in text and "0 dead letters" in text
    assert "4 created" in text
    assert "last 60 s" in text


def test_the_batch_services_uncounted_activity_is_shown_under_its_own_line() -> None:
    lines = render_status(a_status(), width=120).splitlines()

    at = lines.index("22 batch: partner activity not counted")
    assert [" ".join(line.split()) for line in lines[at + 1 : at + 4]] == [
        "waiting for partner-created 12 events, 3 partners",
        "orphan deletions 2 (deletions of things never counted)",
        "dropped: partner deleted 5 events",
    ]


def test_no_uncounted_activity_reads_zero() -> None:
    quiet = StageCounts(0, None, ActivityCounts(0, 0, 0, 0))
    status = a_status(stages={**a_status().stages, "batch": quiet})

    text = render_status(status, width=120)

    assert (
        "waiting for partner-created 0 events, 0 partners orphan deletions 0 dropped: "
        "partner deleted 0 events" in " ".join(text.split())
    )


def test_an_unreadable_batch_database_leaves_its_activity_unknown() -> None:
    down = Unavailable("batch database", "connection refused")
    status = a_status(stages={**a_status().stages, "batch": down})

    text = render_status(status, width=120)
    document = status_json(status)

    [line] = [line for line in text.splitlines() if line.startswith("22 batch: partner activity")]
    assert line.endswith("unavailable: batch database (above)")  # said on its stage's line
    assert "orphan deletions" not in text
    assert document["partner_activity"] is None
    assert document["unavailable"] == {"batch database": "connection refused"}


def test_an_unreadable_part_shows_its_reason_and_the_rest_still_shows() -> None:
    down = Unavailable("member database", "connection refused")
    broker = Unavailable("kafka", "KafkaTimeoutError: Unable to bootstrap")
    status = a_status(
        stages={**a_status().stages, "member": down},
        lag={t.name: broker for t in TOPICS},
        dead_letters={t.dead_letter: broker for t in TOPICS},
    )

    text = render_status(status, width=120)
    document = status_json(status)

    assert "unavailable: member database: connection refused" in text
    assert text.count("KafkaTimeoutError") == 1  # said once, then "(above)"
    assert "unavailable: kafka (above)" in text
    assert "12 accepted" in text and "4 created" in text
    assert "Traceback" not in text
    assert document["unavailable"] == {
        "member database": "connection refused",
        "kafka": "KafkaTimeoutError: Unable to bootstrap",
    }
    assert document["outbox"]["member"] is None
    assert document["lag"] == {t.name: None for t in TOPICS}
    assert document["consumer_groups"]["auth-service"] == {
        "topics": ["profile-created", "profile-rejected"],
        "total": None,
    }
    assert document["dead_letters"] == {t.dead_letter: None for t in TOPICS}
    assert document["throughput"] == {
        "signups_accepted": 12,
        "events_published": {
            "profile-insert": 9,
            "partner-created": None,
            "profile-created": None,
            "profile-rejected": None,
            "profile-delete": 2,
            "partner-deleted": None,
            # Other teams' services publish these: no outbox of ours to read.
            **{t.name: None for t in ACTIVITY_TOPICS},
        },
        "profiles_created": None,
        "summaries_created": 4,
    }


def test_status_json_carries_every_figure() -> None:
    document = json.loads(json.dumps(status_json(a_status())))

    assert document["at"] == "2026-03-01T12:00:00Z"
    assert document["outbox"]["auth"] == {
        "unpublished": 4,
        "oldest_unpublished_at": "2026-03-01T11:57:55Z",
        "oldest_unpublished_age_seconds": 125.0,
        "topics": {
            "profile-insert": {
                "unpublished": 3,
                "oldest_unpublished_at": "2026-03-01T11:57:55Z",
                "oldest_unpublished_age_seconds": 125.0,
            },
            "profile-delete": {
                "unpublished": 1,
                "oldest_unpublished_at": "2026-03-01T11:59:55Z",
                "oldest_unpublished_age_seconds": 5.0,
            },
        },
    }
    assert set(document["outbox"]) == {"auth", "member"}
    assert document["consumer_groups"] == {
        "member-service": {"topics": ["profile-insert", "profile-delete"], "total": 3},
        "batch-service": {
            "topics": ["partner-created", "partner-deleted", *(t.name for t in ACTIVITY_TOPICS)],
            "total": 0,
        },
        "auth-service": {"topics": ["profile-created", "profile-rejected"], "total": 0},
    }
    assert set(document["lag"]) == {t.name for t in TOPICS}
    assert document["lag"]["profile-insert"]["group"] == "member-service"
    assert document["lag"]["profile-insert"]["total"] == 3
    assert document["lag"]["profile-insert"]["partitions"][1] == {
        "partition": 1,
        "beginning_offset": 0,
        "end_offset": 2,
        "committed_offset": 0,
        "lag": 2,
    }
    assert document["lag"]["profile-created"]["group"] == "auth-service"
    assert document["dead_letters"] == {
        "profile-insert.DLT": 1,
        "partner-created.DLT": 0,
        "profile-created.DLT": 0,
        "profile-rejected.DLT": 0,
        "profile-delete.DLT": 0,
        "partner-deleted.DLT": 0,
        "post-created.DLT": 0,
        "post-deleted.DLT": 0,
        "follow-created.DLT": 0,
        "follow-deleted.DLT": 0,
        "coordinate-closed.DLT": 0,
        "review-created.DLT": 0,
    }
    assert document["throughput"]["events_published"] == {
        "profile-insert": 9,
        "partner-created": 4,
        "profile-created": 8,
        "profile-rejected": 1,
        "profile-delete": 2,
        "partner-deleted": 0,
        "post-created": None,
        "post-deleted": None,
        "follow-created": None,
        "follow-deleted": None,
        "coordinate-closed": None,
        "review-created": None,
    }
    assert document["partner_activity"] == {
        "waiting": {"events": 12, "partners": 3},
        "orphan_deletions": 2,
        "dropped_events": 5,
    }
    assert document["unavailable"] == {}


# --- trace --------------------------------------------------------------------------


def partner_rows(**overrides: Any) -> dict[str, Any]:
    rows: dict[str, Any] = {
        "auth": AuthRecord(
            at(0), "PARTNER", OutboxRow("ce-1", at(0), at(7.5), TRACEPARENT), "ACTIVE", None, at(60)
        ),
        "member": MemberRecord(
            "PARTNER",
            at(30),
            OutboxRow("ce-2", at(30), at(42), None),
            created_answer=OutboxRow("ce-3", at(30), at(41), None),
        ),
        "batch": BatchRecord(at(70)),
    }
    rows.update(overrides)
    return rows


def trace_of(rows: dict[str, Any], now: dt.datetime = NOW) -> SignupTrace:
    return assemble_trace(MEMBER, rows["auth"], rows["member"], rows["batch"], now=now)


def test_an_active_partner_has_seven_steps_each_timed_from_the_one_that_caused_it() -> None:
    trace = trace_of(partner_rows())
    document = trace_json(trace)

    assert [s["step"] for s in document["steps"]] == [
        "accepted",
        "profile-insert published",
        "profile created",
        "profile-created published",
        "account active",
        "partner-created published",
        "summary created",
    ]
    # partner-created is caused by the profile, not by the account's activation.
    assert [s["ms_since_previous"] for s in document["steps"]] == [
        None,
        7.5,
        22.5,
        11.0,
        19.0,
        12.0,
        28.0,
    ]
    assert document["steps"][5]["since"] == "profile created"
    assert [s["ce_id"] for s in document["steps"]] == [
        None,
        "ce-1",
        None,
        "ce-3",
        None,
        "ce-2",
        None,
    ]
    assert document["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (document["complete"], document["total_ms"], document["role"]) == (
        True,
        70.0,
        "PARTNER",
    )
    text = render_trace(trace)
    assert "+22.5 ms" in text
    assert "+12.0 ms from 3" in text  # not from the line above it
    assert "complete: 70.0 ms from accepted to summary created" in text


def test_a_consumer_faster_than_the_relays_stamp_shows_a_negative_interval_explained() -> None:
    rows = partner_rows(
        auth=AuthRecord(at(0), "PARTNER", OutboxRow("ce-1", at(0), at(25), TRACEPARENT)),
        member=MemberRecord("PARTNER", at(20), OutboxRow("ce-2", at(20), at(42), None)),
    )

    trace = trace_of(rows)
    text = render_trace(trace)

    assert [s["ms_since_previous"] for s in trace_json(trace)["steps"]][:3] == [None, 25.0, -5.0]
    assert "-5.0 ms" in text
    assert "published_at is stamped after the broker's acknowledgement" in text


def test_an_active_user_has_five_steps() -> None:
    rows = partner_rows(
        auth=AuthRecord(
            at(0), "USER", OutboxRow("ce-1", at(0), at(5), TRACEPARENT), "ACTIVE", None, at(31)
        ),
        member=MemberRecord(
            "USER", at(20), None, created_answer=OutboxRow("ce-3", at(20), at(26), None)
        ),
        batch=BatchRecord(None),
    )

    document = trace_json(trace_of(rows))

    assert [s["step"] for s in document["steps"]] == [
        "accepted",
        "profile-insert published",
        "profile created",
        "profile-created published",
        "account active",
    ]
    assert document["complete"] is True
    assert document["total_ms"] == 31.0


def test_a_pending_account_waits_for_the_auth_worker_to_apply_profile_created() -> None:
    rows = partner_rows(
        auth=AuthRecord(
            at(0), "USER", OutboxRow("ce-1", at(0), at(5), TRACEPARENT), "PENDING", None, None
        ),
        member=MemberRecord(
            "USER", at(20), None, created_answer=OutboxRow("ce-3", at(20), at(26), None)
        ),
        batch=BatchRecord(None),
    )

    trace = trace_of(rows, now=at(5_026))
    text = render_trace(trace)

    assert [s.state for s in trace.steps][-1] == "pending"
    assert "account active not yet: auth-service has not applied it, profile-created " in text
    assert "signup-pipeline dlt list profile-created" in text
    assert text.endswith("not complete: next step account active")


def test_a_rejected_signup_shows_the_rejection_its_reason_and_when_auth_applied_it() -> None:
    rows = {
        "auth": AuthRecord(at(0), "PARTNER", None, "REJECTED", "nickname_taken", at(60)),
        "member": MemberRecord(
            None,
            None,
            None,
            rejected_answer=OutboxRow("ce-3", at(30), at(41), TRACEPARENT, "nickname_taken"),
        ),
        "batch": BatchRecord(None),
    }

    trace = trace_of(rows)
    document = trace_json(trace)
    text = render_trace(trace)

    assert [(s["step"], s["state"]) for s in document["steps"]] == [
        ("accepted", "done"),
        ("profile-insert published", "erased"),
        ("profile rejected", "done"),
        ("profile-rejected published", "done"),
        ("account rejected", "done"),
    ]
    assert [s["ms_since_previous"] for s in document["steps"]] == [None, None, 30.0, 11.0, 19.0]
    assert document["steps"][2]["note"] == "reason nickname_taken"
    assert document["steps"][4]["note"] == "reason nickname_taken"
    assert "purged when it is REJECTED" in document["steps"][1]["note"]
    assert (document["complete"], document["total_ms"]) == (True, 60.0)
    assert document["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "partner-created" not in text and "summary" not in text
    assert "profile rejected           2026-03-01T12:00:00.030000Z" in text
    assert "reason nickname_taken" in text
    assert "missing" not in text


def test_a_deleted_partner_shows_its_erasure_in_each_service_and_what_was_erased() -> None:
    rows = {
        "auth": AuthRecord(
            at(0),
            "PARTNER",
            None,
            "DELETED",
            None,
            at(1_000),
            OutboxRow("ce-4", at(1_000), at(1_010), TRACEPARENT),
        ),
        "member": MemberRecord(
            None,
            None,
            None,
            deleted_at=at(1_020),
            delete_event=OutboxRow("ce-5", at(1_020), at(1_030), None),
        ),
        "batch": BatchRecord(None, at(1_045)),
    }

    trace = trace_of(rows, now=at(5_000))
    document = trace_json(trace)
    text = render_trace(trace)

    assert [(s["step"], s["state"]) for s in document["steps"]] == [
        ("accepted", "done"),
        ("profile-insert published", "erased"),
        ("profile created", "erased"),
        ("profile-created published", "erased"),
        ("account active", "erased"),
        ("partner-created published", "erased"),
        ("summary created", "erased"),
        ("account deleted", "done"),
        ("profile-delete published", "done"),
        ("profile erased", "done"),
        ("partner-deleted published", "done"),
        ("summary erased", "done"),
    ]
    assert [s["ms_since_previous"] for s in document["steps"][7:]] == [
        1000.0,
        10.0,
        10.0,
        10.0,
        15.0,
    ]
    assert [s["ce_id"] for s in document["steps"][7:]] == [None, "ce-4", None, "ce-5", None]
    assert (document["role"], document["complete"], document["total_ms"]) == (
        "PARTNER",
        True,
        1045.0,
    )
    assert "missing" not in text
    assert "erased: status_changed_at now holds the deletion" in text
    assert text.endswith("complete: 1,045.0 ms from accepted to summary erased")


def test_a_deletion_not_yet_applied_by_batch_points_at_its_lag() -> None:
    rows = {
        "auth": AuthRecord(
            at(0),
            "PARTNER",
            None,
            "DELETED",
            None,
            at(1_000),
            OutboxRow("ce-4", at(1_000), at(1_010), None),
        ),
        "member": MemberRecord(
            None,
            None,
            None,
            deleted_at=at(1_020),
            delete_event=OutboxRow("ce-5", at(1_020), at(1_030), None),
        ),
        "batch": BatchRecord(at(70)),
    }

    trace = trace_of(rows, now=at(11_030))
    text = render_trace(trace)

    assert trace.steps[6].state == "done"  # the summary is still there
    assert trace.steps[-1].state == "pending"
    assert (
        "summary erased not yet: batch-service has not applied it, partner-deleted "
        "published 10.0 s ago" in text
    )
    assert text.endswith("not complete: next step summary erased")


def test_an_unpublished_event_says_since_when_it_waits_in_the_outbox() -> None:
    rows = partner_rows(
        auth=AuthRecord(at(0), "PARTNER", OutboxRow("ce-1", at(0), None, TRACEPARENT)),
        member=MemberRecord(None, None, None),
        batch=BatchRecord(None),
    )

    trace = trace_of(rows, now=at(3_200))
    text = render_trace(trace)

    assert (
        "profile-insert not yet published (in outbox since 2026-03-01T12:00:00Z, 3.2 s ago)" in text
    )
    assert "profile not yet: waits for profile-insert to be published" in text
    assert "not complete: next step profile-insert published" in text
    states = [s["state"] for s in trace_json(trace)["steps"]]
    assert states == ["done"] + ["pending"] * 6


def test_a_published_event_not_yet_applied_points_at_lag_and_dead_letters() -> None:
    rows = partner_rows(member=MemberRecord(None, None, None), batch=BatchRecord(None))

    text = render_trace(trace_of(rows, now=at(30_007.5)))

    assert "member-service has not applied it, profile-insert published 30.0 s ago" in text
    assert "signup-pipeline dlt list profile-insert" in text


def test_an_outbox_row_deleted_by_housekeeping_is_reported_as_cleaned_up() -> None:
    rows = partner_rows(
        auth=AuthRecord(at(0), "PARTNER", None, "ACTIVE", None, at(60)),
        member=MemberRecord("PARTNER", at(30), None),
    )

    trace = trace_of(rows, now=at(3 * 86_400_000))
    document = trace_json(trace)

    published = [document["steps"][n] for n in (1, 3, 5)]
    assert [s["state"] for s in published] == ["cleaned_up"] * 3
    assert all("outbox row already cleaned up" in s["note"] for s in published)
    assert document["complete"] is True
    assert document["steps"][2]["ms_since_previous"] == 30.0  # from the last known time
    assert document["trace_id"] is None


def test_an_unknown_uuid_is_not_found() -> None:
    trace = trace_of(
        {"auth": AuthRecord(None, None, None), "member": MemberRecord(None, None, None)}
        | {"batch": BatchRecord(None)}
    )

    assert trace.found is False
    assert render_trace(trace) == (
        f"no signup with uuid {MEMBER} in the auth, member or batch database"
    )


def test_an_unreadable_database_makes_its_steps_unknown_not_pending() -> None:
    down = Unavailable("member database", "connection refused")

    document = trace_json(trace_of(partner_rows(member=down)))

    states = {s["step"]: s["state"] for s in document["steps"]}
    assert states == {
        "accepted": "done",
        "profile-insert published": "done",
        "profile created": "unavailable",
        "profile-created published": "unavailable",
        "account active": "done",
        "partner-created published": "unavailable",
        "summary created": "done",
    }
    assert document["unavailable"] == {"member database": "connection refused"}
    assert document["complete"] is False


def test_intervals_skip_steps_without_a_time() -> None:
    steps = [Step("a", "done", at(0)), Step("b", "cleaned_up"), Step("c", "done", at(40))]

    assert step_intervals(steps) == [None, None, 40.0]


# --- the command line -----------------------------------------------------------------


def test_endpoints_default_to_the_services_sqlite_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    endpoints = Endpoints.from_env({"MEMBER_DATABASE_URL": "postgresql://u:secret@db/m"})

    assert endpoints.database_urls["auth"] == f"sqlite:///{tmp_path / 'var' / 'auth.db'}"
    assert endpoints.database_urls["member"] == "postgresql://u:secret@db/m"
    assert list(endpoints.bootstrap_servers) == ["localhost:9092"]
    assert "secret" not in json.dumps(endpoints.sources())


def nothing_there(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from an empty `directory`: no database URL set (the SQLite defaults under it
    do not exist) and Kafka on a closed port."""
    monkeypatch.chdir(directory)
    for service in ("AUTH", "MEMBER", "BATCH"):
        monkeypatch.delenv(f"{service}_DATABASE_URL", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")


def test_status_with_nothing_there_shows_why_and_creates_no_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nothing_there(tmp_path, monkeypatch)

    with pytest.raises(SystemExit) as exit_:
        main(["status", "--json"])

    assert exit_.value.code == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert captured.err.startswith("error: incomplete: could not read auth database")
    assert len(captured.err.splitlines()) == 1
    assert set(document["unavailable"]) == {
        "auth database",
        "member database",
        "batch database",
        "kafka",
    }
    assert document["unavailable"]["auth database"].startswith("no database file at")
    assert "Connection refused" in document["unavailable"]["kafka"]
    assert document["took_ms"] < 2000  # a refused connection is not waited on
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "not-a-uuid"], "is not a UUID"),
        (["status", "--watch", "0"], "is not a positive number"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)

    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_watch_stops_on_ctrl_c_with_exit_0(monkeypatch: pytest.MonkeyPatch) -> None:
    from operations import status as operations

    frames: list[int] = []

    def read(*_: Any, **__: Any) -> PipelineStatus:
        frames.append(1)
        return a_status()

    def ctrl_c(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(operations, "read_status", read)
    out = io.StringIO()

    code = operations.show_status(Endpoints({}, []), watch=1.0, out=out, as_json=True, sleep=ctrl_c)

    assert code == 0
    assert frames == [1]
    assert json.loads(out.getvalue().splitlines()[0])["lag"]["profile-insert"]["total"] == 3


# --- where the broker is, what the commands read, and an operator's mistakes ----------


def test_without_kafka_bootstrap_servers_the_operator_commands_use_the_dev_broker_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dev_broker_file() == tmp_path / "var" / "dev-broker"
    (tmp_path / "var").mkdir()
    dev_broker_file().write_text("127.0.0.1:36777\n")

    assert operator_broker({}).servers == ["127.0.0.1:36777"]
    assert str(dev_broker_file()) in operator_broker({}).origin
    assert list(Endpoints.from_env({}).bootstrap_servers) == ["127.0.0.1:36777"]
    # The variable wins; and a service never reads the file.
    assert operator_broker({"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}).servers == ["kafka:9092"]
    assert Settings.from_env("member", {}).bootstrap_servers == ["localhost:9092"]


def test_without_either_the_operator_commands_use_the_default_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    broker = operator_broker({})

    assert broker.servers == ["localhost:9092"]
    assert "KAFKA_BOOTSTRAP_SERVERS is not set" in broker.origin


@pytest.mark.parametrize(
    ("argv", "variables"),
    [
        (
            [],
            [
                "KAFKA_BOOTSTRAP_SERVERS",
                "./var/dev-broker",
                "KAFKA_SECURITY_PROTOCOL",
                "AUTH_DATABASE_URL",
                "MEMBER_DATABASE_URL",
                "BATCH_DATABASE_URL",
            ],
        ),
        (
            ["status"],
            [
                "KAFKA_BOOTSTRAP_SERVERS",
                "./var/dev-broker",
                "KAFKA_SASL_MECHANISM",
                "AUTH_DATABASE_URL",
                "MEMBER_DATABASE_URL",
                "BATCH_DATABASE_URL",
            ],
        ),
        (["trace"], ["AUTH_DATABASE_URL", "MEMBER_DATABASE_URL", "BATCH_DATABASE_URL"]),
        (["dlt", "list"], ["KAFKA_BOOTSTRAP_SERVERS", "./var/dev-broker", "KAFKA_SSL_CAFILE"]),
        (["dlt", "replay"], ["KAFKA_BOOTSTRAP_SERVERS", "./var/dev-broker", "KAFKA_SASL_USERNAME"]),
    ],
)
def test_help_names_the_environment_each_command_reads(
    argv: list[str], variables: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])

    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert [v for v in variables if v not in shown] == []
    assert "exit status" in shown


def no_connection(*_: Any, **__: Any) -> Any:
    raise AssertionError("connected to the broker")


@pytest.mark.parametrize("action", [["list"], ["replay", "--id", "x"]])
def test_dlt_on_an_unknown_topic_names_the_valid_ones_and_exits_2_before_connecting(
    action: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("socket.create_connection", no_connection)
    monkeypatch.setattr("kafka.KafkaConsumer.__init__", no_connection)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")

    with pytest.raises(SystemExit) as exit_:
        main(["dlt", action[0], "nosuch", *action[1:]])

    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line == (
        "error: unknown topic 'nosuch': use one of profile-insert, partner-created, "
        "profile-created, profile-rejected, profile-delete, partner-deleted, post-created, "
        "post-deleted, follow-created, follow-deleted, coordinate-closed, review-created "
        "(or its .DLT)"
    )


def test_dlt_takes_a_pipeline_topic_or_its_dead_letter_topic() -> None:
    assert check_topic("profile-insert") == "profile-insert.DLT"
    assert check_topic("partner-created.DLT") == "partner-created.DLT"
    with pytest.raises(UnknownTopic):
        check_topic("profile-insert.DLT.DLT")


def test_status_says_in_its_last_line_what_it_could_not_read_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nothing_there(tmp_path, monkeypatch)

    with pytest.raises(SystemExit) as exit_:
        main(["status"])

    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert "1 auth: signup accepted" in captured.out  # the screen is still shown
    assert captured.out.splitlines()[-1] == (
        "incomplete: could not read auth database, member database, batch database, kafka "
        "(exit status 1)"
    )
    assert captured.err == ""


def test_status_that_read_everything_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    from operations import status as operations

    monkeypatch.setattr(operations, "read_status", lambda *_, **__: a_status())
    out, err = io.StringIO(), io.StringIO()

    assert operations.show_status(Endpoints({}, []), out=out, err=err) == 0
    assert "incomplete" not in out.getvalue()
    assert operations.show_status(Endpoints({}, []), as_json=True, out=out, err=err) == 0
    assert err.getvalue() == ""


def test_trace_with_no_database_to_read_is_one_line_on_stderr_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for service in ("AUTH", "MEMBER", "BATCH"):
        monkeypatch.delenv(f"{service}_DATABASE_URL", raising=False)

    with pytest.raises(SystemExit) as exit_:
        main(["trace", MEMBER])

    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: no database could be read (auth database: no database file")
    assert not (tmp_path / "var").exists()
