"""Helpers for faults on a real three-node Apache Kafka cluster (devtools/kafka_cluster.py):
who leads a partition, coordinates a group or controls the cluster; how many partitions
are under-replicated; a load generator that keeps signing up while a fault lasts; the
drain (every accepted signup applied, both outboxes empty, both groups committed to the
end); and the check that no event a relay marked published is missing from its topic.

The harness of tests/faults/harness.py hands the stack's bootstrap string to clients as a
one-element list, which kafka-python cannot parse once it holds three servers; these
helpers take the cluster's list of servers instead, and reuse its Registry and
reconcile()."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy import create_engine, text

from devtools.http_client import request
from devtools.kafka_cluster import LocalKafkaCluster
from devtools.stack import Stack
from shared.messaging.kafka import read_topic
from tests.faults.harness import CONSUMED, Registry, Signup, delete_account, reconcile
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

# Who publishes what, from which database's outbox, and which group consumes it.
PUBLISHERS = {
    "profile-insert": "auth",
    "profile-delete": "auth",
    "partner-created": "member",
    "partner-deleted": "member",
    "profile-created": "member",
    "profile-rejected": "member",
}
# Each group's first topic (the one whose assignment the tests watch); CONSUMED (from
# tests/faults/harness.py) has every topic each group reads.
GROUPS = {"member-service": "profile-insert", "batch-service": "partner-created"}
OFFSETS_TOPIC = "__consumer_offsets"
T = TypeVar("T")


# -- the cluster, seen through an admin client ------------------------------------------


@contextlib.contextmanager
def admin_client(cluster: LocalKafkaCluster) -> Iterator[KafkaAdminClient]:
    """An admin client bootstrapped from the nodes that are running."""
    running = [f"127.0.0.1:{n.port}" for n in cluster.layout if cluster.running(n.node_id)]
    admin = KafkaAdminClient(
        bootstrap_servers=running or cluster.bootstrap_list,
        request_timeout_ms=5_000,
        bootstrap_timeout_ms=5_000,
        **cluster.client_options(),
    )
    try:
        yield admin
    finally:
        admin.close()


def asking(
    cluster: LocalKafkaCluster, question: Callable[[KafkaAdminClient], T], timeout: float = 20.0
) -> T:
    """`question(admin)`, asked again with a new client while it fails: right after a
    node died the client's metadata still names it, and a request sent there is refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with admin_client(cluster) as admin:
                return question(admin)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def describe_partitions(cluster: LocalKafkaCluster, topics: Sequence[str]) -> dict[str, Any]:
    """{topic: [partition descriptions]} as the running brokers know them."""
    described = asking(cluster, lambda admin: admin.describe_topics(list(topics)))
    return {t["name"]: t["partitions"] for t in described}


def partition_leader(cluster: LocalKafkaCluster, topic: str, partition: int = 0) -> int:
    """The node id leading `topic`[`partition`] (-1 while it has none)."""
    for described in describe_partitions(cluster, [topic]).get(topic) or []:
        if described["partition_index"] == partition:
            return int(described["leader_id"])
    return -1


def java_string_hash(value: str) -> int:
    """Java's String.hashCode(), as a signed 32-bit int (UTF-16 code units)."""
    result = 0
    encoded = value.encode("utf-16-be")
    for i in range(0, len(encoded), 2):
        result = (31 * result + int.from_bytes(encoded[i : i + 2], "big")) & 0xFFFFFFFF
    return result - (1 << 32) if result & 0x80000000 else result


def group_coordinator(cluster: LocalKafkaCluster, group: str) -> int:
    """The node coordinating consumer group `group`: the leader of its partition of
    __consumer_offsets, Utils.abs(group.hashCode()) % partitions, as Kafka's
    GroupCoordinator places it (what FindCoordinator answers)."""
    partitions = describe_partitions(cluster, [OFFSETS_TOPIC]).get(OFFSETS_TOPIC) or []
    if not partitions:
        return -1
    index = (java_string_hash(group) & 0x7FFFFFFF) % len(partitions)
    return partition_leader(cluster, OFFSETS_TOPIC, index)


def active_controller(cluster: LocalKafkaCluster) -> int:
    """The leader of the KRaft metadata quorum: the active controller. (describe_cluster's
    controller_id is, in KRaft, any broker: the controllers are not exposed to clients.)"""
    quorum = asking(cluster, lambda admin: admin.describe_metadata_quorum())
    return int(quorum["topics"][0]["partitions"][0]["leader_id"])


def under_replicated(cluster: LocalKafkaCluster) -> int:
    """Partitions (of every topic, internal ones too) with fewer in-sync replicas than
    replicas, or no leader."""
    topics = asking(cluster, lambda admin: admin.describe_topics())
    count = 0
    for topic in topics:
        for partition in topic["partitions"]:
            if partition["leader_id"] < 0 or len(partition["isr_nodes"]) < len(
                partition["replica_nodes"]
            ):
                count += 1
    return count


def wait_fully_replicated(cluster: LocalKafkaCluster, timeout: float = 60.0) -> None:
    """Until every node is up and no partition is under-replicated."""

    def replicated() -> bool:
        try:
            return under_replicated(cluster) == 0
        except Exception:  # noqa: BLE001 - a node still starting: ask again
            return False

    wait_until(replicated, timeout, "no partition is under-replicated", interval=0.5)


def group_assignment(cluster: LocalKafkaCluster, group: str) -> tuple[str, int, set[int]]:
    """(state, members, partitions of its topic assigned to a member) of `group`."""
    described = asking(cluster, lambda admin: admin.describe_groups([group]))[group]
    partitions: set[int] = set()
    for member in described.get("members") or []:
        for name, numbers in assigned(member.get("member_assignment")):
            if name == GROUPS[group]:
                partitions |= set(numbers)
    return str(described.get("group_state")), len(described.get("members") or []), partitions


def _field(data: Any, name: str) -> Any:
    return data.get(name) if isinstance(data, dict) else getattr(data, name, None)


def assigned(assignment: Any) -> list[tuple[str, list[int]]]:
    """(topic, partitions) of a decoded ConsumerProtocolAssignment, as an object or as
    the dict describe_groups() turns it into."""
    found = []
    for topic in _field(assignment, "assigned_partitions") or []:
        if isinstance(topic, tuple):
            found.append((str(topic[0]), [int(p) for p in topic[1]]))
        else:
            found.append(
                (str(_field(topic, "topic")), [int(p) for p in _field(topic, "partitions")])
            )
    return found


# -- the stack's processes ----------------------------------------------------------------


class WorkerDied(AssertionError):
    """A process of the stack exited while the test expected it to ride the fault out."""


EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt)\b")


def casualties(stack: Stack) -> str:
    """Every process of the stack that exited: its name, exit code and the exceptions its
    last tracebacks ended with ("" when all run)."""
    described = []
    for process in stack.processes.values():
        if process.popen is None or process.running():
            continue
        process.wait(2)  # its output all in the log
        lines = process.log_path.read_text(errors="replace").splitlines()[-300:]
        errors = [line for line in lines if EXCEPTION_LINE.match(line)]
        said = " / ".join(dict.fromkeys(errors)) or (lines[-1] if lines else "")
        described.append(f"{process.name} exited with {process.popen.returncode}: {said}")
    return "; ".join(described)


def revive(stack: Stack) -> list[str]:
    """Start again every process of the stack that exited (so the next test finds the
    stack whole); the names of those it started."""
    dead = [k for k, p in stack.processes.items() if p.popen is not None and not p.running()]
    for key in dead:
        service, role = key.split("-")[:2]
        name = f"{service}-{role}"
        stack.spawn(name, instance=key if key != name else None)
    if dead:
        stack.wait_ready(60, dead)
    return dead


# -- load -------------------------------------------------------------------------------


@dataclass
class LoadGenerator:
    """Signs up one after another on its own thread until stopped, recording each answer
    (a status, or the error when nothing answered) and every accepted signup in the
    module's Registry; deletes right after its signup each one the Registry's
    `deletes()` picks (a deletion that fails is recorded in `refused_deletions`)."""

    stack: Stack
    registry: Registry
    pause: float = 0.05
    answers: list[int | str] = field(default_factory=list)
    accepted: list[Signup] = field(default_factory=list)
    refused_deletions: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(target=self._run, name="signup-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            role = "PARTNER" if number % 3 == 0 else "USER"
            styles = [1 + number % 7, 20 + number % 3]
            body = signup_body(role=role, favoriteStyles=styles)
            try:
                status, answer = request(
                    "POST", f"{self.stack.url('auth')}/auth/signup", body, timeout=30
                )
            except Exception as exc:  # noqa: BLE001 - recorded: the test asserts on it
                self.answers.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.pause)
                continue
            self.answers.append(status)
            if status == 201:
                signup = Signup(
                    answer["uuid"], role, tuple(styles), body["email"], body["password"]
                )
                self.accepted.append(signup)
                self.registry.record(signup)
                if self.registry.deletes(number):
                    self._delete(signup)
            self._stop.wait(self.pause)

    def _delete(self, signup: Signup) -> None:
        try:
            delete_account(self.stack.url("auth"), signup.email, signup.password)
        except Exception as exc:  # noqa: BLE001 - recorded: the test asserts on it
            self.refused_deletions.append(f"{type(exc).__name__}: {exc}")
            return
        with self.registry.lock:
            self.registry.deleted.append(signup)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "the load generator did not stop"

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Until at least `count` more signups were answered than when called."""
        target = len(self.answers) + count
        wait_until(lambda: len(self.answers) >= target, timeout, f"{count} more signups")

    @property
    def driven(self) -> int:
        return len(self.answers)

    def refused(self) -> list[int | str]:
        """Every answer that was not 201."""
        return [a for a in self.answers if a != 201]


@contextlib.contextmanager
def load(stack: Stack, registry: Registry) -> Iterator[LoadGenerator]:
    """A LoadGenerator running for the `with` block."""
    generator = LoadGenerator(stack, registry).start()
    try:
        yield generator
    finally:
        generator.stop()


# -- databases --------------------------------------------------------------------------


def rows(url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query), params)]
    finally:
        engine.dispose()


def database_now(url: str) -> dt.datetime:
    """The database's clock (the relays stamp published_at from their own, same host)."""
    [(now,)] = rows(url, "SELECT now()")
    assert isinstance(now, dt.datetime)
    return now.astimezone(dt.UTC)


def unpublished(urls: dict[str, str], service: str) -> int:
    """Rows of `service`'s outbox not yet acknowledged by the broker."""
    [(count,)] = rows(urls[service], "SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return int(count)


def published(urls: dict[str, str], service: str) -> int:
    """Rows of `service`'s outbox the relay marked published."""
    [(count,)] = rows(urls[service], "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
    return int(count)


def applied(urls: dict[str, str], signups: Sequence[Signup]) -> int:
    """How many of `signups` have their profile in the member database."""
    wanted = [s.uuid for s in signups]
    if not wanted:
        return 0
    [(count,)] = rows(
        urls["member"],
        "SELECT (SELECT count(*) FROM users WHERE uuid = ANY(:ids))"
        " + (SELECT count(*) FROM partners WHERE uuid = ANY(:ids))",
        ids=wanted,
    )
    return int(count)


# -- topics -----------------------------------------------------------------------------


def committed_and_end(
    servers: Sequence[str], group: str, topic: str
) -> tuple[dict[int, int | None], dict[int, int]]:
    """The group's committed offset and the end offset of each partition of `topic`."""
    consumer = KafkaConsumer(
        bootstrap_servers=list(servers),
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    try:
        consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        ends = {tp.partition: int(o) for tp, o in consumer.end_offsets(partitions).items()}
        committed = {tp.partition: consumer.committed(tp) for tp in partitions}
        return committed, ends
    finally:
        consumer.close()


def caught_up(servers: Sequence[str], group: str, topic: str) -> bool:
    """Whether `group` committed every partition of `topic` to its end (Apache Kafka's end
    offsets are exact: no transactions, no batch quirk)."""
    try:
        committed, ends = committed_and_end(servers, group, topic)
    except Exception:  # noqa: BLE001 - a coordinator moving: ask again
        return False
    return bool(ends) and all(committed.get(p) == end for p, end in ends.items() if end > 0)


def dead_letters(servers: Sequence[str], topic: str) -> int:
    """Records in `topic`'s dead-letter topic."""
    return len(read_topic(list(servers), f"{topic}.DLT", timeout=5))


@dataclass(frozen=True)
class Acknowledgements:
    """Events the relays marked published (only after acks=all) and how many of them are
    in their topics, by ce_id."""

    acknowledged: int
    found: int
    missing: list[str]


def acknowledged_vs_found(
    urls: dict[str, str], servers: Sequence[str], since: dt.datetime | None = None
) -> Acknowledgements:
    """Every outbox row of both relays marked published (after `since`, when the topics
    were rebuilt then), looked up by its ce_id among the records of its topic."""
    acknowledged = 0
    found = 0
    missing: list[str] = []
    for topic, service in PUBLISHERS.items():
        ids = {
            str(event_id)
            for (event_id,) in rows(
                urls[service],
                "SELECT event_id FROM outbox WHERE topic = :topic"
                " AND published_at IS NOT NULL AND published_at >= :since",
                topic=topic,
                since=since or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
            )
        }
        present = {r.header("ce_id") for r in read_topic(list(servers), topic, expect=len(ids))}
        acknowledged += len(ids)
        found += len(ids & present)
        missing += sorted(ids - present)[:10]
    return Acknowledgements(acknowledged, found, missing)


# -- the drain --------------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    seconds: float
    problems: list[str]
    line: str


def drain(
    stack: Stack,
    registry: Registry,
    urls: dict[str, str],
    servers: Sequence[str],
    timeout: float = 90.0,
) -> Drain:
    """Wait until every accepted signup is applied and every deletion done (reconcile()
    finds nothing wrong), both outboxes are empty and every group committed each of its
    topics to the end; how long it took, and what was still wrong if it never happened."""
    start = time.monotonic()
    deadline = start + timeout
    problems: list[str] = ["not reconciled yet"]
    line = ""
    while time.monotonic() < deadline:
        result = reconcile(stack, registry, urls)
        line = result.line()
        problems = list(result.problems)
        waiting = {s: unpublished(urls, s) for s in ("auth", "member")}
        problems += [f"{s} outbox holds {n} unpublished" for s, n in waiting.items() if n]
        if not problems:
            behind = [(g, t) for g, _, t in CONSUMED if not caught_up(servers, g, t)]
            problems = [f"group {g} has not committed {t} to the end" for g, t in behind]
            if not problems:
                return Drain(time.monotonic() - start, [], line)
        time.sleep(0.5)
    return Drain(time.monotonic() - start, problems, line)


def summary(
    fault: str,
    generator: LoadGenerator,
    applied_count: int,
    drained: Drain,
    acks: Acknowledgements,
) -> str:
    """The one line each test prints: fault | driven | 201 | applied | drain s | acked | found."""
    accepted = sum(1 for a in generator.answers if a == 201)
    return (
        f"{fault} | {generator.driven} | {accepted} | {applied_count} | "
        f"{drained.seconds:.1f} | {acks.acknowledged} | {acks.found}"
    )
