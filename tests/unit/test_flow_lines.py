"""The workers' flow lines: in text mode (what `signup-pipeline dev` runs), one readable
INFO line per event a worker applied, once its transaction committed; none for a
duplicate or a rolled-back batch; in JSON mode (production), nothing new at INFO."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.structs import TopicPartition
from sqlalchemy import create_engine, text

from member_service.consumer import PROFILE_INSERT_WORKER
from member_service.models import Base as MemberBase
from shared.config import LogSettings
from shared.messaging.kafka import Message
from shared.messaging.processor import EventProcessor, Outcome
from shared.storage.db import Database
from shared.telemetry import logs
from tests.fakes import FakeBroker
from tests.schema import create_tables

PARTITION = TopicPartition("profile-insert", 0)


def uuid_of(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


class Lines(logging.Handler):
    """Every line the process logs, formatted as configured, with whether the member's
    profile was visible to another connection (committed) when the line was logged."""

    def __init__(self, formatter: logging.Formatter, database_path: Path) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._engine = create_engine(f"sqlite:///{database_path}")
        self.lines: list[tuple[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        found = re.search(r"profile-insert (\S+) →", line)
        committed = False
        if found:
            with self._engine.connect() as connection:
                committed = bool(
                    connection.scalar(
                        text(
                            "SELECT count(*) FROM (SELECT uuid FROM users UNION ALL "
                            "SELECT uuid FROM partners) WHERE uuid = :uuid"
                        ),
                        {"uuid": found.group(1)},
                    )
                )
        self.lines.append((line, committed))

    def flow(self) -> list[tuple[str, bool]]:
        return [(line, ok) for line, ok in self.lines if "member-worker: profile-insert" in line]


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Any]:
    """configure_logging(member, worker, LOG_FORMAT=…) with the lines kept here, and the
    process's logging as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs.flow_level()
    saved_levels = {n: logging.getLogger(n).level for n in ("kafka", "sqlalchemy", "alembic")}

    def configure(form: str) -> Lines:
        logs.configure_logging("member", "worker", LogSettings(format=form))
        lines = Lines(root.handlers[0].formatter or logging.Formatter(), tmp_path / "member.db")
        root.handlers[:] = [lines]
        return lines

    yield configure
    root.handlers[:], root.level, logs._flow_level = saved
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def message(
    number: int, offset: int, event_id: str, role: str = "USER", styles: int = 3
) -> Message:
    value = {
        "uuid": uuid_of(number),
        "role": role,
        "nickname": f"nick-{number}",
        "favoriteStyles": list(range(1, styles + 1)),
    }
    return Message(
        topic="profile-insert",
        key=uuid_of(number).encode(),
        value=json.dumps(value).encode(),
        headers=[("ce_id", event_id.encode())],
        partition=0,
        offset=offset,
    )


def processor(tmp_path: Path) -> EventProcessor:
    database = Database.from_url(f"sqlite:///{tmp_path / 'member.db'}", MemberBase.metadata)
    create_tables(database)
    spec = PROFILE_INSERT_WORKER
    return EventProcessor(spec.routes, database, spec.inbox, FakeBroker().producer())


def test_text_mode_logs_one_line_per_applied_event_after_its_commit(
    tmp_path: Path, configured: Any
) -> None:
    lines = configured("text")
    worker = processor(tmp_path)

    report = worker.apply(
        {PARTITION: [message(1, 0, "e1"), message(2, 1, "e2", role="PARTNER", styles=1)]}
    )

    assert report.outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    flow = lines.flow()
    assert [ok for _, ok in flow] == [True, True]  # each logged once committed
    line_pattern = (
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO member-worker: "
        r"profile-insert %s → %s in \d+\.\d ms \(batch of 2\)$"
    )
    assert re.match(line_pattern % (uuid_of(1), r"USER profile created \(3 styles\)"), flow[0][0])
    assert re.match(
        line_pattern % (uuid_of(2), r"PARTNER profile created \(1 style\), partner-created queued"),
        flow[1][0],
    )
    assert all("nick-" not in line for line, _ in lines.lines)  # a nickname is personal data

    # A redelivery changes nothing and says nothing.
    assert worker.apply({PARTITION: [message(1, 0, "e1")]}).outcomes == [Outcome.DUPLICATE]
    assert len(lines.flow()) == 2

    # A batch rolled back (its second event conflicts with member 1's profile) prints
    # nothing; applied again record by record, its first event gets its one line.
    conflicting = message(1, 3, "e4")
    report = worker.apply({PARTITION: [message(3, 2, "e3"), conflicting]})

    assert report.outcomes == [Outcome.APPLIED, Outcome.DEAD_LETTERED]
    new = lines.flow()[2:]
    assert [ok for _, ok in new] == [True]
    user = r"USER profile created \(3 styles\)"
    assert re.search(
        rf"member-worker: profile-insert {uuid_of(3)} → {user} in [\d.]+ ms$", new[0][0]
    )


def test_json_mode_logs_nothing_new_at_info(tmp_path: Path, configured: Any) -> None:
    lines = configured("json")
    worker = processor(tmp_path)

    assert worker.apply({PARTITION: [message(1, 0, "e1")]}).outcomes == [Outcome.APPLIED]

    assert lines.lines == []


def test_json_mode_at_debug_carries_the_flow_line_as_json(tmp_path: Path, configured: Any) -> None:
    lines = configured("json")
    logging.getLogger().setLevel(logging.DEBUG)
    worker = processor(tmp_path)

    worker.apply({PARTITION: [message(1, 0, "e1")]})

    [document] = [
        json.loads(line) for line, _ in lines.lines if json.loads(line)["logger"] == "signup.flow"
    ]
    assert document["level"] == "DEBUG"
    assert document["message"].startswith(f"profile-insert {uuid_of(1)} → USER profile created")


def test_a_batch_handlers_events_are_told_together_per_topic_and_outcome(
    tmp_path: Path, configured: Any
) -> None:
    """The batch worker folds a poll's activity: one line per topic and outcome (with how
    many), and the usual per-event line for an event alone in its group."""
    from batch_service.consumer import BATCH_WORKER
    from batch_service.models import Base as BatchBase

    lines = configured("text")
    database = Database.from_url(f"sqlite:///{tmp_path / 'batch.db'}", BatchBase.metadata)
    create_tables(database)
    worker = EventProcessor(
        BATCH_WORKER.routes, database, BATCH_WORKER.inbox, FakeBroker().producer()
    )
    partner, waiting = uuid_of(7), uuid_of(8)

    def record(topic: str, document: dict[str, Any], offset: int) -> Message:
        key = document["partnerId"].encode()
        headers = [("ce_id", f"{topic}-{offset}".encode())]
        return Message(topic, key, json.dumps(document).encode(), headers, 0, offset)

    created = record("partner-created", {"partnerId": partner}, 0)
    posts = [record("post-created", {"postId": n, "partnerId": partner}, n) for n in range(5)]
    early = record("post-created", {"postId": 99, "partnerId": waiting}, 9)
    worker.apply(
        {
            TopicPartition("partner-created", 0): [created],
            TopicPartition("post-created", 0): [*posts, early],
        }
    )

    flow = [line for line, _ in lines.lines if "→" in line]
    assert len(flow) == 3, flow
    opened = rf"partner-created {partner} → partner summary opened in [\d.]+ ms \(batch of 7\)$"
    folded = r"post-created ×5 → counted in [\d.]+ ms \(batch of 7\)$"
    alone = rf"post-created {waiting} → waiting for partner-created in [\d.]+ ms"
    for pattern in (opened, folded, alone):
        assert sum(bool(re.search(pattern, line)) for line in flow) == 1, (pattern, flow)
