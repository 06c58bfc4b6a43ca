"""What a real run's 'applied once' tests check besides the rows: nothing went to a
dead-letter topic, each redelivery was counted as a duplicate by the worker, the inbox
holds one row per event, and the consumer groups have caught up with their topics.

Primary keys alone already prevent doubled rows, so a broken inbox shows up only here:
its duplicates fail on the keys and are dead-lettered instead of being skipped."""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import Collection

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from shared.messaging.kafka import Message, read_topic
from tests.kafka_tools import committed_offsets
from tests.waiting import wait_until


def worker_counter(health_port: int, name: str, topic: str) -> float:
    """A worker's counter sample (e.g. signup_events_duplicate_total) for `topic`, from
    its /metrics on `health_port`; 0 when it has not counted any yet."""
    url = f"http://127.0.0.1:{health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        metrics = response.read().decode()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("topic") == topic:
                return float(sample.value)
    return 0.0


def duplicates(health_port: int, topic: str) -> float:
    """How many records of `topic` the worker skipped because its inbox had them."""
    return worker_counter(health_port, "signup_events_duplicate_total", topic)


def dead_letters(bootstrap: str, topic: str, keys: Collection[str] | None = None) -> list[Message]:
    """The records in `topic`'s dead-letter topic; only those keyed by one of `keys` when
    given (the broker may be shared with other tests' poison records)."""
    records = read_topic(bootstrap.split(","), f"{topic}.DLT", timeout=10)
    if keys is None:
        return records
    wanted = {key.encode() for key in keys}
    return [record for record in records if record.key in wanted]


def event_ids(bootstrap: str, topic: str, keys: Collection[str]) -> set[str]:
    """The ce_id of every record of `topic` keyed by one of `keys`."""
    wanted = {key.encode() for key in keys}
    return {
        str(record.header("ce_id"))
        for record in read_topic(bootstrap.split(","), topic, expect=len(wanted))
        if record.key in wanted
    }


def inbox_rows(database_url: str, topic: str, ids: Collection[str]) -> int:
    """How many inbox (processed_events) rows the service's database holds for `ids`."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            count = connection.scalar(
                text(
                    "SELECT count(*) FROM processed_events"
                    " WHERE topic = :topic AND event_id = ANY(:ids)"
                ),
                {"topic": topic, "ids": list(ids)},
            )
    finally:
        engine.dispose()
    return int(count or 0)


def caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether `group` has committed every record of `topic` (nothing left to redeliver).
    Compared with the records read, not end offsets: the bundled Tansu reports a batch's
    end offset as its base offset + 1."""
    ends: dict[int, int] = {}
    for record in read_topic(bootstrap.split(","), topic, timeout=10):
        ends[record.partition] = record.offset + 1
    committed = committed_offsets(bootstrap, group, topic)
    return all(committed.get(partition) == end for partition, end in ends.items())


def wait_caught_up(bootstrap: str, groups: dict[str, str], timeout: float = 60.0) -> None:
    """Wait until each consumer group (group: topic) has committed all of its topic, so
    every redelivery has been handled and anything doubled would show."""
    for group, topic in groups.items():
        wait_until(
            functools.partial(caught_up, bootstrap, group, topic),
            timeout,
            f"consumer group {group} commits every record of {topic}",
        )
