"""Logs, traces and metrics: what an operator reads to see whether signups flow."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

import shared.telemetry.tracecontext
from auth_service.models import OutboxEvent as AuthOutbox
from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.models import Base as MemberBase
from shared.config import ConfigError, log_settings
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.outbox import OutboxBacklogCollector
from shared.messaging.processor import EventProcessor
from shared.storage.db import Database
from shared.telemetry.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_context,
    scrub,
)
from shared.telemetry.metrics import exposition
from shared.telemetry.tracecontext import current_traceparent, parse_traceparent, span, trace_id_of
from tests.fakes import FakeBroker, FakeConsumer
from tests.schema import create_tables
from tests.unit.pipeline_harness import InMemoryPipeline, signup_body

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def log_lines(formatter: logging.Formatter, emit: Any) -> list[str]:
    """What `emit(logger)` logs, formatted by `formatter`, one string per line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


# --- structured logs ---------------------------------------------------------------


def test_a_log_line_is_one_json_object_with_service_role_and_the_ids_in_context() -> None:
    def emit(logger: logging.Logger) -> None:
        with log_context(member_uuid="m-1", ce_id="e-1", trace_id="t" * 32):
            logger.info("applied %s", "profile-insert[0]@7")
        logger.warning("outside")

    inside, outside = log_lines(JsonFormatter("member", "worker"), emit)

    document = json.loads(inside)
    assert document["service"] == "member"
    assert document["role"] == "worker"
    assert document["level"] == "INFO"
    assert document["message"] == "applied profile-insert[0]@7"
    assert (document["member_uuid"], document["ce_id"], document["trace_id"]) == (
        "m-1",
        "e-1",
        "t" * 32,
    )
    assert "member_uuid" not in json.loads(outside)


def test_an_exception_stays_inside_its_json_line() -> None:
    def emit(logger: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    [line] = log_lines(JsonFormatter("auth", "api"), emit)
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_format_is_one_readable_line_with_the_ids() -> None:
    def emit(logger: logging.Logger) -> None:
        with log_context(ce_id="e-9"):
            logger.error("dead-lettered")

    [line] = log_lines(TextFormatter("batch", "worker"), emit)
    assert "ERROR batch-worker test.observability: dead-lettered [ce_id=e-9]" in line


@pytest.mark.parametrize("formatter", [JsonFormatter("auth", "api"), TextFormatter("auth", "api")])
def test_emails_and_password_hashes_never_reach_a_log_line(formatter: logging.Formatter) -> None:
    secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"

    def emit(logger: logging.Logger) -> None:
        logger.error("duplicate key (email)=(Kim.Minji+x@Example.co.kr) hash %s", secret_hash)

    [line] = log_lines(formatter, emit)
    assert "Example.co.kr" not in line and "argon2id" not in line
    assert "<email>" in line and "<password-hash>" in line


def test_scrub_leaves_ordinary_text_alone() -> None:
    text = "profile-insert[3]@41 applied in 2.5 ms; member 5d0c…; 10:15:03"
    assert scrub(text) == text


@pytest.mark.parametrize(
    ("env", "problem"),
    [({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml'"), ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD'")],
)
def test_a_wrong_log_setting_is_a_clear_config_error(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        configure_logging("auth", "api", log_settings(env))


# --- traces --------------------------------------------------------------------------


def test_without_an_sdk_a_span_continues_the_callers_trace_with_its_own_span_id() -> None:
    with span("work", SpanKind.CONSUMER, parent=CALLER):
        mine = current_traceparent()
    assert mine is not None and parse_traceparent(mine) == mine
    assert trace_id_of(mine) == trace_id_of(CALLER)
    assert mine.split("-")[2] != CALLER.split("-")[2]


@pytest.mark.parametrize("parent", [None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"])
def test_without_a_valid_parent_a_span_starts_a_new_trace(parent: str | None) -> None:
    with span("work", SpanKind.SERVER, parent=parent):
        first = current_traceparent()
    with span("work", SpanKind.SERVER, parent=parent):
        second = current_traceparent()
    assert first and second and trace_id_of(first) != trace_id_of(second)
    assert current_traceparent() is None  # nothing left behind once the block ends


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """An OpenTelemetry SDK recording every span, as an operator's exporter would."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(shared.telemetry.tracecontext, "_tracer", provider.get_tracer("test"))
    return exporter


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[InMemoryPipeline]:
    pipeline = InMemoryPipeline(tmp_path)
    yield pipeline
    pipeline.close()


def test_with_an_sdk_one_partner_signup_is_one_trace_across_the_three_services(
    exported: InMemorySpanExporter, pipeline: InMemoryPipeline
) -> None:
    response = pipeline.client.post(
        "/auth/signup", json=signup_body(role="PARTNER"), headers={"traceparent": CALLER}
    )
    assert response.status_code == 201
    pipeline.run()

    spans = {s.name: s for s in exported.get_finished_spans()}
    request = spans["POST /auth/signup"]
    member = spans["profile-insert process"]
    batch = spans["partner-created process"]
    trace_id = int(CALLER.split("-")[1], 16)
    assert {s.context.trace_id for s in (request, member, batch)} == {trace_id}
    assert request.parent is not None and request.parent.span_id == int(CALLER.split("-")[2], 16)
    assert member.parent is not None and member.parent.span_id == request.context.span_id
    assert batch.parent is not None and batch.parent.span_id == member.context.span_id
    assert request.kind is SpanKind.SERVER and member.kind is SpanKind.CONSUMER
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    assert member.attributes is not None
    assert member.attributes["messaging.destination.name"] == "profile-insert"
    [record] = pipeline.broker.topics["profile-insert"]
    assert member.attributes["messaging.message.id"] == record.header("ce_id")


# --- metrics -------------------------------------------------------------------------


def scrape(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_the_requests_and_the_events_of_the_in_memory_pipeline(
    pipeline: InMemoryPipeline,
) -> None:
    before = scrape(pipeline.client.get("/metrics").data)
    for role in ("USER", "PARTNER", "PARTNER"):
        assert pipeline.client.post("/auth/signup", json=signup_body(role=role)).status_code == 201
    assert pipeline.client.post("/auth/signup", json={"email": "x"}).status_code == 400
    pipeline.run()
    response = pipeline.client.get("/metrics")
    after = scrape(response.data)

    assert response.content_type.startswith("text/plain")

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    route = {"route": "/auth/signup", "method": "POST"}
    assert grew("signup_http_requests_total", status="201", **route) == 3
    assert grew("signup_http_requests_total", status="400", **route) == 1
    assert grew("signup_http_request_duration_seconds_count", **route) == 4
    assert grew("signup_events_published_total", topic="profile-insert") == 3
    assert grew("signup_events_published_total", topic="partner-created") == 2


def member_database(tmp_path: Path) -> Database:
    database = Database.from_url(f"sqlite:///{tmp_path / 'member.db'}", MemberBase.metadata)
    create_tables(database)
    return database


def profile_insert(number: int) -> bytes:
    return json.dumps(
        {
            "uuid": f"00000000-0000-4000-8000-{number:012d}",
            "role": "USER",
            "nickname": f"user{number}",
            "favoriteStyles": [1],
        }
    ).encode()


def test_the_consumer_loop_counts_consumed_applied_duplicate_and_dead_lettered_events(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    for number, event_id in [(1, b"e1"), (2, b"e2"), (1, b"e1")]:  # the third is a redelivery
        broker.append("profile-insert", profile_insert(number), b"k", [("ce_id", event_id)])
    broker.append("profile-insert", b"not json", b"k", [("ce_id", b"e3")])
    database = member_database(tmp_path)
    spec = PROFILE_INSERT_WORKER
    processor = EventProcessor(spec.routes, database, spec.inbox, broker.producer())
    consumer = FakeConsumer(broker, "profile-insert")
    before = scrape(exposition()[0])

    ConsumerLoop(consumer, processor).poll_once()

    after = scrape(exposition()[0])
    topic = {"topic": "profile-insert"}
    counts = {
        name: sample(after, f"signup_events_{name}_total", **topic)
        - sample(before, f"signup_events_{name}_total", **topic)
        for name in ("consumed", "applied", "duplicate", "dead_lettered", "retried")
    }
    assert counts == {"consumed": 4, "applied": 2, "duplicate": 1, "dead_lettered": 1, "retried": 0}
    lag = ("signup_consumer_lag", (("partition", "0"), ("topic", "profile-insert")))
    assert after[lag] == 0  # reported (a missing series would not be 0)
    handled = "signup_event_handler_duration_seconds_count"
    assert sample(after, handled, **topic) - sample(before, handled, **topic) == 2
    database.engine.dispose()


def test_consumer_lag_is_the_records_behind_the_high_watermark(tmp_path: Path) -> None:
    broker = FakeBroker()
    for number in range(5):
        broker.append("profile-insert", profile_insert(number), b"k", [("ce_id", b"l%d" % number)])
    database = member_database(tmp_path)
    spec = PROFILE_INSERT_WORKER
    processor = EventProcessor(spec.routes, database, spec.inbox, broker.producer())
    consumer = FakeConsumer(broker, "profile-insert", max_records=2)

    ConsumerLoop(consumer, processor).poll_once()

    lag = sample(
        scrape(exposition()[0]), "signup_consumer_lag", topic="profile-insert", partition="0"
    )
    assert lag == 3
    database.engine.dispose()


def test_the_outbox_backlog_and_its_oldest_row_are_read_when_scraped(
    pipeline: InMemoryPipeline,
) -> None:
    backlog = OutboxBacklogCollector(pipeline.auth_db, AuthOutbox, ["profile-insert"])
    empty = scrape(exposition(backlog)[0])
    assert sample(empty, "signup_outbox_backlog", topic="profile-insert") == 0
    assert (
        sample(empty, "signup_outbox_oldest_unpublished_age_seconds", topic="profile-insert") == 0
    )

    for _ in range(2):
        assert pipeline.client.post("/auth/signup", json=signup_body()).status_code == 201
    waiting = scrape(exposition(backlog)[0])
    pipeline.auth_relay.publish_pending()
    sent = scrape(exposition(backlog)[0])

    assert sample(waiting, "signup_outbox_backlog", topic="profile-insert") == 2
    age = sample(waiting, "signup_outbox_oldest_unpublished_age_seconds", topic="profile-insert")
    assert 0 < age < 60
    assert sample(sent, "signup_outbox_backlog", topic="profile-insert") == 0


def counted(before: dict[Any, float], after: dict[Any, float], topic: str) -> dict[str, float]:
    names = ("consumed", "applied", "duplicate", "dead_lettered", "retried")
    series = {name: f"signup_events_{name}_total" for name in names}
    series["handled"] = "signup_event_handler_duration_seconds_count"
    return {
        name: sample(after, metric, topic=topic) - sample(before, metric, topic=topic)
        for name, metric in series.items()
    }


def test_a_committed_batch_counts_even_when_its_poison_record_cannot_be_dead_lettered_yet(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    broker.append("profile-insert", profile_insert(11), b"k", [("ce_id", b"good-1")])
    broker.append("profile-insert", b"poison", b"k", [("ce_id", b"poison")])
    broker.append("profile-insert", profile_insert(12), b"k", [("ce_id", b"good-2")])
    database = member_database(tmp_path)
    spec = PROFILE_INSERT_WORKER
    processor = EventProcessor(spec.routes, database, spec.inbox, broker.producer())
    consumer = FakeConsumer(broker, "profile-insert")
    loop = ConsumerLoop(consumer, processor)
    start = scrape(exposition()[0])

    broker.down = True  # the dead-letter topic cannot be written
    loop.poll_once()
    first = scrape(exposition()[0])
    broker.down = False
    for _ in range(100):  # until the paused partition is resumed (backoff) and drained
        loop.poll_once(timeout_ms=20)
        if consumer.committed == 3:
            break
        time.sleep(0.02)
    end = scrape(exposition()[0])

    assert counted(start, first, "profile-insert") == {
        "consumed": 3,
        "applied": 2,  # both good records committed in the batch
        "duplicate": 0,
        "dead_lettered": 0,
        "retried": 2,  # the poison record and the one after it come again
        "handled": 2,
    }
    assert consumer.commits[0] == 1  # committed up to the poison record only
    assert counted(first, end, "profile-insert") == {
        "consumed": 2,
        "applied": 0,
        "duplicate": 1,
        "dead_lettered": 1,
        "retried": 0,
        "handled": 0,
    }
    assert [m.header("ce_id") for m in broker.topics["profile-insert.DLT"]] == ["poison"]
    database.engine.dispose()


def test_a_batch_redone_record_by_record_counts_each_handler_once(tmp_path: Path) -> None:
    broker = FakeBroker()
    # Two different events creating the same member: the second conflicts with the first.
    broker.append("profile-insert", profile_insert(21), b"k", [("ce_id", b"first")])
    broker.append("profile-insert", profile_insert(21), b"k", [("ce_id", b"second")])
    database = member_database(tmp_path)
    spec = PROFILE_INSERT_WORKER
    processor = EventProcessor(spec.routes, database, spec.inbox, broker.producer())
    before = scrape(exposition()[0])

    ConsumerLoop(FakeConsumer(broker, "profile-insert"), processor).poll_once()

    counts = counted(before, scrape(exposition()[0]), "profile-insert")
    assert (counts["applied"], counts["dead_lettered"], counts["handled"]) == (1, 1, 1)
    database.engine.dispose()


def test_an_sdk_that_records_nothing_still_gives_each_span_its_own_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.trace import NoOpTracer

    monkeypatch.setattr(shared.telemetry.tracecontext, "_tracer", NoOpTracer())  # OTEL_SDK_DISABLED
    with span("work", SpanKind.CONSUMER, parent=CALLER):
        child = current_traceparent()
    with span("work", SpanKind.SERVER):
        root = current_traceparent()
    assert child and trace_id_of(child) == trace_id_of(CALLER) and child != CALLER
    assert root and trace_id_of(root) not in (None, "0" * 32)


def test_a_text_line_cannot_be_split_or_garbled_by_what_a_request_puts_in_it() -> None:
    """Seen by an outside probe: a path with %0a wrote a forged line in text format, %00
    a raw NUL."""

    def emit(logger: logging.Logger) -> None:
        with log_context(trace_id="t\nFORGED"):
            logger.info("GET %s 404", "/x\n2026-12-02 INFO auth-api access: FORGED\x00\x1b[2J")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed on %s", "/y\r\n")

    lines = log_lines(TextFormatter("auth", "api"), emit)
    first = lines[0]
    assert "\\n2026-12-02 INFO auth-api access: FORGED\\x00\\x1b[2J" in first
    assert "[trace_id=t\\nFORGED]" in first
    assert not any(line.startswith("2026-12-02 INFO auth-api access: FORGED") for line in lines)
    assert not any(c in "".join(lines) for c in "\x00\x1b\r")
    assert "failed on /y\\r\\n" in lines[1]
    assert lines[-1] == "ValueError: boom"  # a traceback keeps its own lines
