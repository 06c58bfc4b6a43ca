"""Faults on a real three-node Apache Kafka cluster (KRaft, replication 3, min.insync 2,
acks=all, no unclean election), each under continuous signup load, each ending in the
fault suite's reconciliation and in the check that no event a relay marked published
(only after acks=all) is missing from its topic.

One cluster and one stack for the module; every test leaves three healthy nodes, no
under-replicated partition and every process ready. The last test rebuilds the cluster
empty, so it runs last (pytest keeps the file's order).

Each test prints one line: fault | signups driven | accepted (201) | applied |
time to drain (s) | acknowledged | found.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka.errors import KafkaError

from devtools.kafka_cluster import LocalKafkaCluster
from devtools.stack import Stack
from shared.config import SERVICES
from shared.messaging.kafka import create_topics, make_producer, pipeline_topics
from tests.brokers import kafka_jars
from tests.faults.cluster_harness import (
    GROUPS,
    LoadGenerator,
    WorkerDied,
    acknowledged_vs_found,
    active_controller,
    applied,
    casualties,
    committed_and_end,
    database_now,
    dead_letters,
    describe_partitions,
    drain,
    group_assignment,
    group_coordinator,
    load,
    partition_leader,
    published,
    revive,
    summary,
    unpublished,
    wait_fully_replicated,
)
from tests.faults.harness import CONSUMED, Registry, inbox_against_topics, inbox_within_bounds
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

NODES = 3
PROBE_TOPIC = "cluster-probe"


@dataclass
class ClusterStack:
    cluster: LocalKafkaCluster
    stack: Stack
    urls: dict[str, str]
    # One signup in ten is deleted right after it was accepted.
    registry: Registry = field(default_factory=lambda: Registry(delete_every=10))
    # Since when the topics hold everything acknowledged (the cluster's rebuild, if any).
    since: dt.datetime | None = None

    @property
    def servers(self) -> list[str]:
        return self.cluster.bootstrap_list


def wait_topics(cluster: LocalKafkaCluster, wanted: dict[str, int]) -> None:
    """Until every broker describes `wanted` with all partitions led."""

    def described() -> bool:
        try:
            found = describe_partitions(cluster, sorted(wanted))
        except Exception:  # noqa: BLE001 - not yet
            return False
        return all(
            len(found.get(name) or []) == count and all(p["leader_id"] >= 0 for p in found[name])
            for name, count in wanted.items()
        )

    wait_until(described, 30, f"topics {sorted(wanted)} are described", interval=0.3)


def create_pipeline_topics(cluster: LocalKafkaCluster) -> None:
    wanted = pipeline_topics() | {PROBE_TOPIC: 1}
    create_topics(cluster.bootstrap_list, wanted, partitions=wanted)
    wait_topics(cluster, wanted)


@pytest.fixture(scope="module")
def cs(tmp_path_factory: pytest.TempPathFactory, postgres) -> Iterator[ClusterStack]:  # type: ignore[no-untyped-def]
    jars = kafka_jars()
    workdir: Path = tmp_path_factory.mktemp("kafka-cluster-faults")
    cluster = LocalKafkaCluster(NODES, workdir / "kafka", jars)
    cluster.start()
    try:
        create_pipeline_topics(cluster)
        urls = {s: postgres.create_database(f"sp_kfault_{s}") for s in SERVICES}
        stack = Stack(
            workdir / "stack", database_urls=urls, bootstrap_servers=cluster.bootstrap_servers
        )
        stack.start(timeout=90)
        try:
            yield ClusterStack(cluster, stack, urls)
        finally:
            stack.stop()
    finally:
        cluster.stop()


def settle(
    cs: ClusterStack, fault: str, generator: LoadGenerator, timeout: float = 90.0, died: str = ""
) -> str:
    """The end of every test: every answer was 201; every accepted signup applied exactly
    once (inbox counts), both outboxes drained, nothing dead-lettered; every acknowledged
    event is in its topic; three healthy nodes and every process ready; no process died
    on the way (`died`, or found now: those are started again first, so the rest is
    still checked and the next test finds the stack whole, and the test then fails with
    WorkerDied). Prints and returns the test's line."""
    died = "; ".join(filter(None, [died, casualties(cs.stack)]))
    revive(cs.stack)
    assert generator.refused() == [], generator.refused()[:10]
    assert generator.refused_deletions == [], generator.refused_deletions[:10]
    drained = drain(cs.stack, cs.registry, cs.urls, cs.servers, timeout)
    assert drained.problems == [], (drained.problems, drained.line)
    if cs.since is None:
        assert inbox_against_topics(cs.urls, cs.servers) == {}
    else:  # the topics lost what the old cluster held: count against the signups
        assert inbox_within_bounds(cs.registry, cs.urls) == []
    for _, _, topic in CONSUMED:
        assert dead_letters(cs.servers, topic) == 0, topic
    acks = acknowledged_vs_found(cs.urls, cs.servers, cs.since)
    line = summary(fault, generator, applied(cs.urls, generator.accepted), drained, acks)
    print(f"\n[kafka cluster] {line}" + (f" | DIED: {died}" if died else ""))
    assert acks.found == acks.acknowledged, (acks, line)
    assert acks.acknowledged >= len(generator.accepted)
    assert all(cs.cluster.running(i) for i in range(NODES))
    wait_fully_replicated(cs.cluster, 60)
    cs.stack.wait_ready(60)
    if died:
        raise WorkerDied(f"{fault}: {died}")
    return line


# -- one node killed: a partition's leader, the group coordinator, the controller --------


def leader_of_profile_insert(cluster: LocalKafkaCluster) -> int:
    return partition_leader(cluster, "profile-insert", 0)


def coordinator_of_member_service(cluster: LocalKafkaCluster) -> int:
    return group_coordinator(cluster, "member-service")


@pytest.mark.parametrize(
    ("role", "find"),
    [
        ("leader of profile-insert[0]", leader_of_profile_insert),
        ("coordinator of member-service", coordinator_of_member_service),
        ("active controller", active_controller),
    ],
)
def test_sigkill_of_a_node_under_load_loses_nothing(
    cs: ClusterStack, role: str, find: Callable[[LocalKafkaCluster], int]
) -> None:
    with load(cs.stack, cs.registry) as generator:
        generator.wait_for(5)
        victim = find(cs.cluster)
        assert victim in range(NODES), victim
        cs.cluster.stop_node(victim, signal.SIGKILL)
        # Another node takes the role over while signups go on.
        wait_until(lambda: find(cs.cluster) not in (victim, -1), 30, f"a new {role}", interval=0.5)
        generator.wait_for(15)
        cs.cluster.start_node(victim)
        wait_fully_replicated(cs.cluster, 60)
        generator.wait_for(5)
    settle(cs, f"SIGKILL {role} (node {victim})", generator)


# -- a rolling restart of the brokers ----------------------------------------------------


def test_rolling_restart_of_the_three_brokers_under_load_loses_nothing(cs: ClusterStack) -> None:
    with load(cs.stack, cs.registry) as generator:
        generator.wait_for(10)
        for node in range(NODES):
            assert cs.cluster.stop_node(node, signal.SIGTERM) is not None
            generator.wait_for(5)
            cs.cluster.start_node(node)
            wait_fully_replicated(cs.cluster, 60)
        generator.wait_for(10)
    settle(cs, "rolling restart of 3 brokers (SIGTERM, URP=0, next)", generator)


# -- the whole cluster stopped and started again ----------------------------------------


def test_whole_cluster_stopped_20s_keeps_records_and_offsets(cs: ClusterStack) -> None:
    with load(cs.stack, cs.registry) as generator:
        generator.wait_for(10)
        before = {g: committed_and_end(cs.servers, g, t)[0] for g, t in GROUPS.items()}
        cs.cluster.stop()
        time.sleep(20)
        cs.cluster.start()
        died = casualties(cs.stack)
        revive(cs.stack)
        # Durable: every committed offset is still there (not reset, not gone).
        after = {g: committed_and_end(cs.servers, g, t)[0] for g, t in GROUPS.items()}
        for group, offsets in before.items():
            for partition, offset in offsets.items():
                if offset is not None:
                    kept = after[group].get(partition)
                    assert kept is not None and kept >= offset, (group, partition, offset, kept)
        wait_fully_replicated(cs.cluster, 60)
        generator.wait_for(10)
    settle(cs, "whole cluster stopped 20 s", generator, timeout=120, died=died)


# -- two brokers down: nothing is acknowledged, the outbox keeps the events --------------


def probe_send_refused(cs: ClusterStack) -> str:
    """A send with the pipeline's acks=all (no retries, so the broker's own answer shows)
    to a three-replica topic: the name of the error it gets, or "" if acknowledged."""
    producer = make_producer(
        cs.servers,
        enable_idempotence=False,
        retries=0,
        request_timeout_ms=5_000,
        delivery_timeout_ms=8_000,
        max_block_ms=5_000,
    )
    try:
        producer.send(PROBE_TOPIC, b"probe").get(timeout=15)
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        producer.close(timeout=2)
    return ""


def test_two_brokers_down_nothing_acknowledged_outbox_holds_then_flows(cs: ClusterStack) -> None:
    with load(cs.stack, cs.registry) as generator:
        generator.wait_for(10)
        assert cs.cluster.stop_node(0, signal.SIGTERM) is not None
        assert cs.cluster.stop_node(1, signal.SIGTERM) is not None
        refused = probe_send_refused(cs)
        assert refused.startswith("NotEnoughReplicas"), refused
        # Signups go on (201) and their events wait in the outbox, none acknowledged.
        wait_until(lambda: unpublished(cs.urls, "auth") > 0, 30, "events wait in the outbox")
        marked = published(cs.urls, "auth")
        # Longer than a relay pass waits for acknowledgements (recreate_after, 10 s), so
        # a relay that marked rows without them would have marked some by now.
        time.sleep(15)
        waiting = unpublished(cs.urls, "auth")
        assert published(cs.urls, "auth") == marked
        assert waiting >= 20, waiting
        # One broker back: two in sync, acks=all is possible again and the events flow.
        cs.cluster.start_node(0)
        wait_until(lambda: unpublished(cs.urls, "auth") == 0, 60, "the outbox drains with one back")
        cs.cluster.start_node(1)
        wait_fully_replicated(cs.cluster, 60)
        generator.wait_for(10)
    line = settle(cs, "two brokers down (nodes 0+1)", generator)
    assert waiting, line


# -- a rolling deploy of the workers -----------------------------------------------------


def all_assigned(cs: ClusterStack, members: int) -> bool:
    """Both groups stable, with `members` members and every partition assigned."""
    for group in GROUPS:
        try:
            state, count, partitions = group_assignment(cs.cluster, group)
        except Exception:  # noqa: BLE001 - the coordinator is busy: ask again
            return False
        if state != "Stable" or count != members or partitions != set(range(6)):
            return False
    return True


def test_rolling_deploy_of_two_member_and_two_batch_workers_reassigns_within_30s(
    cs: ClusterStack,
) -> None:
    stack = cs.stack
    extra = {"member-worker-2": "member-worker", "batch-worker-2": "batch-worker"}
    try:
        for key, name in extra.items():
            stack.spawn(name, instance=key)
        stack.wait_ready(60, list(extra))
        wait_until(lambda: all_assigned(cs, 2), 60, "two members in each group")
        with load(stack, cs.registry) as generator:
            generator.wait_for(10)
            order = ("member-worker", "member-worker-2", "batch-worker", "batch-worker-2")
            for key in order:
                if key != order[0]:
                    generator.wait_for(3)
                assert stack.processes[key].stop(15) == 0, key
                stack.spawn(key.removesuffix("-2"), instance=key if key in extra else None)
                replaced = time.monotonic()  # the new process started: the clock runs
                stack.wait_ready(60, [key])
            wait_until(lambda: all_assigned(cs, 2), 30, "every partition assigned again")
            reassigned = time.monotonic() - replaced
            generator.wait_for(10)
    finally:
        for key in extra:
            process = stack.processes.pop(key, None)
            if process is not None:
                process.stop(15)
    settle(cs, f"rolling deploy of 2+2 workers (reassigned in {reassigned:.1f} s)", generator)
    assert reassigned <= 30


# -- the cluster rebuilt empty (runs last) ------------------------------------------------


def test_cluster_rebuilt_empty_every_signup_arrives_within_30s_of_the_topics(
    cs: ClusterStack,
) -> None:
    # Whatever the old cluster acknowledged but no consumer had read yet is lost with it:
    # nothing can recover that. So the load stops and drains first, and the signups
    # that count start just before the wipe.
    drained = drain(cs.stack, cs.registry, cs.urls, cs.servers)
    assert drained.problems == [], drained.problems
    with load(cs.stack, cs.registry) as generator:
        cs.cluster.wipe()
        cs.since = database_now(cs.urls["auth"])
        generator.wait_for(5)
        cs.cluster.start()
        generator.wait_for(5)  # an empty cluster: no topics
        create_pipeline_topics(cs.cluster)
        returned = time.monotonic()
        generator.wait_for(5)
    # Drained well past the bound, so a late arrival shows how late (and a lost event as
    # lost), with the numbers printed before the bound is asserted. Measured here: 13.7 to
    # 35.8 s, everything arriving every time; the wait is kafka-python's metadata
    # backoff: with no node reachable its refresh backs off up to reconnect_backoff_max_ms
    # (30 s by default, Java's is 1 s), and a consumer fetches nothing from partitions
    # whose leader it does not know. reconnect_backoff_max_ms=1000 in CONSUMER_DEFAULTS
    # and PRODUCER_DEFAULTS (shared/messaging/kafka.py) brought it to 2.7 s.
    finished = drain(cs.stack, cs.registry, cs.urls, cs.servers, 90)
    after_topics = time.monotonic() - returned
    line = settle(
        cs, f"cluster rebuilt empty ({after_topics:.1f} s after the topics' return)", generator
    )
    assert finished.problems == [], (finished.problems, finished.line)
    assert after_topics <= 30, (
        f"every signup arrived only {after_topics:.1f} s after the topics' return: {line}"
    )
