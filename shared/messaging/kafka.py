"""Kafka clients configured for this pipeline, and the message shape the code passes around."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from shared.config import ConfigError, KafkaSecurity, kafka_security
from shared.messaging.pipeline import TOPICS

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Message:
    """One Kafka record, as received from or sent to a topic."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = -1

    def header(self, name: str) -> str | None:
        """The value of header `name` as text, or None when absent."""
        for key, value in self.headers:
            if key == name and value is not None:
                return value.decode("utf-8", errors="replace")
        return None


class Delivery(Protocol):
    """What a send returns: resolves to the broker's acknowledgement or raises."""

    def get(self, timeout: float | None = None) -> Any: ...


class Producer(Protocol):
    """The part of KafkaProducer the pipeline uses (a fake implements it in unit tests)."""

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Headers | None = None
    ) -> Delivery: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


# Timeouts short enough that a failure surfaces while the caller can still act on it.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 300_000,
    "max_poll_records": 500,
    # How long the broker may hold a fetch when it has nothing new. Apache Kafka answers
    # a waiting fetch as soon as data arrives, so this only bounds idle round trips; the
    # bundled Tansu broker answers late, so it is also its delivery latency. Measured
    # here (send -> consumed p50; idle CPU of one worker): 100 ms: 16.4 ms, 2.4%;
    # 25 ms: 6.4 ms, 7%; 5 ms: 7.0 ms, 18.5% (and the broker 15% busy while idle).
    "fetch_max_wait_ms": 25,
    # Topics are the operator's (partitions, replication): asking about one never creates
    # it, even on a broker that would (the bundled Tansu does, with its own partition
    # count, which then stood in for the pipeline's after it restarted empty).
    "allow_auto_create_topics": False,
    # kafka-python backs off reconnecting (and so refreshing metadata) up to 30 s by
    # default; the Java client's ceiling is 1 s. With 30 s a consumer and a relay came
    # back up to 42 s after every broker had returned (a whole cluster stopped 20 s).
    "reconnect_backoff_max_ms": 1_000,
}

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "max_in_flight_requests_per_connection": 5,
    "linger_ms": 2,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 30_000,
    "allow_auto_create_topics": False,
    "reconnect_backoff_max_ms": 1_000,
}


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


def client_security(security: KafkaSecurity) -> dict[str, Any]:
    """kafka-python settings for an authenticated, encrypted broker connection, from
    KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME,
    KAFKA_SASL_PASSWORD and KAFKA_SSL_CAFILE as shared.config read them; every client of
    the pipeline uses them. Empty when none is set (PLAINTEXT)."""
    protocol = (security.protocol or "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    settings: dict[str, Any] = {}
    if protocol != "PLAINTEXT":
        settings["security_protocol"] = protocol
    if protocol.startswith("SASL_"):
        mechanism = (security.sasl_mechanism or "SCRAM-SHA-512").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
        if mechanism == "PLAIN" and protocol == "SASL_PLAINTEXT":
            raise ConfigError(
                "KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT would "
                "send the password in clear: use SASL_SSL, or SCRAM-SHA-512"
            )
        username, password = security.sasl_username, security.sasl_password
        if not username or not password:
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        settings |= {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": username,
            "sasl_plain_password": password,
        }
    cafile = security.ssl_cafile
    if cafile:
        if not protocol.endswith("SSL"):
            raise ConfigError("KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL is not SSL")
        if not os.path.isfile(cafile):
            raise ConfigError(f"KAFKA_SSL_CAFILE={cafile!r} is not a readable file")
        settings["ssl_cafile"] = cafile
    return settings


# The process's Kafka security: what its entry point gave (`service_main` from the
# service's Settings, the `signup-pipeline` commands), or else what the environment says,
# read through shared.config at the first client, so no client ever ignores
# KAFKA_SECURITY_PROTOCOL for want of a call. Checked once, when given.
_security: list[dict[str, Any] | None] = [None]


def use_security(security: KafkaSecurity) -> None:
    """Every Kafka client this process makes from now on connects with `security`;
    ConfigError now if it is inconsistent."""
    _security[0] = client_security(security)


def process_client_security() -> dict[str, Any]:
    """The kafka-python security settings of this process's clients (see use_security)."""
    if _security[0] is None:
        use_security(kafka_security())
    settings = _security[0]
    assert settings is not None
    return settings


def make_producer(bootstrap_servers: Sequence[str], **overrides: Any) -> KafkaProducer:
    """An idempotent producer that waits for every in-sync replica."""
    return KafkaProducer(
        bootstrap_servers=list(bootstrap_servers),
        **(PRODUCER_DEFAULTS | process_client_security() | overrides),
    )


def make_consumer(
    bootstrap_servers: Sequence[str],
    group_id: str,
    topics: Iterable[str],
    listener: Any = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer whose offsets the caller commits, only after it applied the records."""
    consumer = KafkaConsumer(
        bootstrap_servers=list(bootstrap_servers),
        group_id=group_id,
        **(CONSUMER_DEFAULTS | process_client_security() | overrides),
    )
    consumer.subscribe(list(topics), listener=listener)
    return consumer


def broker_reachable(bootstrap_servers: Sequence[str], timeout: float = 1.0) -> bool:
    """Whether any bootstrap server accepts a TCP connection within `timeout` seconds
    (what a readiness probe can afford to ask; the consumer's own client is not
    thread-safe to borrow)."""
    for server in bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def pipeline_topics() -> dict[str, int]:
    """Every topic the pipeline uses, with its partition count (dead letters get one)."""
    wanted = {}
    for topic in TOPICS:
        wanted[topic.name] = topic.partitions
        wanted[topic.dead_letter] = 1
    return wanted


def topic_identities(consumer: Any, topics: Iterable[str]) -> dict[str, Any]:
    """The broker's id of each of `topics` as `consumer`'s metadata last saw it (None while
    unknown). A changed id means the topic was deleted and created again, or the broker
    was rebuilt: offsets into the old one mean nothing in the new one. Empty for a
    consumer that keeps no such metadata (kafka-python's is read from its client)."""
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    topic_id = getattr(cluster, "topic_id", None)
    if not callable(topic_id):
        return {}
    return {topic: topic_id(topic) for topic in topics}


def request_rejoin(consumer: Any) -> None:
    """Have `consumer` join its group again at its next poll (kafka-python's coordinator
    has no public call for it). A group leader re-assigns only when a topic's partition
    count changes: a topic created again with the same count, after the group was
    assigned nothing while it was missing, would otherwise stay unassigned for good."""
    coordinator = getattr(consumer, "_coordinator", None)
    rejoin = getattr(coordinator, "request_rejoin", None)
    if callable(rejoin):
        rejoin()


def missing_topics(
    bootstrap_servers: Sequence[str],
    timeout_ms: int = 10_000,
    names: Iterable[str] | None = None,
) -> list[str]:
    """Those of `names` (by default every topic of the pipeline) the broker does not have,
    or does not show this process: with ACLs a broker lists only the topics the client may
    describe. Raises KafkaError if unreachable."""
    consumer = KafkaConsumer(
        bootstrap_servers=list(bootstrap_servers),
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        **process_client_security(),
    )
    try:
        existing = consumer.topics()
    finally:
        consumer.close()
    return sorted(set(pipeline_topics() if names is None else names) - existing)


def create_topics(
    bootstrap_servers: Sequence[str],
    names: Iterable[str],
    timeout_ms: int = 10_000,
    partitions: Mapping[str, int] | None = None,
) -> None:
    """Create `names` with the pipeline's partition counts (or those in `partitions`) and
    the broker's default replication factor (-1), so a real cluster's replication
    settings apply. A topic that exists already is left as it is."""
    partitions = partitions or pipeline_topics()
    admin = KafkaAdminClient(
        bootstrap_servers=list(bootstrap_servers),
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        **process_client_security(),
    )
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions[name], -1)])
    finally:
        admin.close()


def read_topic(
    bootstrap_servers: Sequence[str], topic: str, expect: int = 0, timeout: float = 20.0
) -> list[Message]:
    """Every record of `topic`, in (partition, offset) order: polls from the beginning until
    at least `expect` records arrived and a further poll brings nothing new.

    Not by end offsets: the bundled Tansu broker reports the end offset of a multi-record
    batch as its base offset + 1.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=list(bootstrap_servers),
        enable_auto_commit=False,
        bootstrap_timeout_ms=10_000,
        **process_client_security(),
    )
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            consumer.topics()  # refreshes the metadata, so a new topic's partitions show
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[Message] = []
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            fetched = [message_from_record(r) for rs in batch.values() for r in rs]
            records.extend(fetched)
            if not fetched and len(records) >= expect:
                break
        return sorted(records, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def message_from_record(record: Any) -> Message:
    """A kafka-python ConsumerRecord as a Message (a null value becomes empty bytes)."""
    return Message(
        topic=record.topic,
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=list(record.headers or []),
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=getattr(record, "timestamp", -1),
    )


__all__ = [
    "Delivery",
    "Headers",
    "KafkaError",
    "Message",
    "Producer",
    "client_security",
    "create_topics",
    "make_consumer",
    "make_producer",
    "message_from_record",
    "missing_topics",
    "request_rejoin",
    "topic_identities",
    "pipeline_topics",
    "process_client_security",
    "read_topic",
    "use_security",
]
