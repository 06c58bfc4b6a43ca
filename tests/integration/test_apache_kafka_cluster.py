"""A real, replicated Apache Kafka (4.4, from Maven Central): three KRaft nodes started by
devtools/kafka_cluster.py from the jars scripts/ensure-kafka-jars.sh fetched.

What the bundled Tansu broker cannot show: the pipeline's topics replicated three times
with min.insync.replicas=2, acks=all writes going on with one node down, and records
surviving the restart of a node and of the whole cluster (durable storage).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from devtools.kafka_cluster import LocalKafkaCluster
from shared.messaging.kafka import create_topics, make_producer, pipeline_topics, read_topic
from tests.brokers import kafka_jars
from tests.kafka_tools import unique_name
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

NODES = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """Three nodes, each broker and controller, with their data under a temporary dir."""
    jars = kafka_jars()
    kafka = LocalKafkaCluster(NODES, tmp_path_factory.mktemp("apache-kafka"), jars)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def admin_for(kafka: LocalKafkaCluster) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=kafka.bootstrap_list, request_timeout_ms=10_000)


def describe_partitions(kafka: LocalKafkaCluster, topics: list[str]) -> dict[str, Any]:
    admin = admin_for(kafka)
    try:
        return {t["name"]: t["partitions"] for t in admin.describe_topics(topics)}
    finally:
        admin.close()


def first_partition(kafka: LocalKafkaCluster, topic: str) -> dict[str, Any]:
    """`topic`'s partition 0 as the brokers describe it ({} while they do not know it)."""
    partitions = describe_partitions(kafka, [topic]).get(topic) or []
    return dict(partitions[0]) if partitions and partitions[0]["leader_id"] >= 0 else {}


def in_sync(kafka: LocalKafkaCluster, topic: str) -> list[int]:
    """The in-sync replicas of `topic`'s first partition."""
    return list(first_partition(kafka, topic).get("isr_nodes", []))


def produce(kafka: LocalKafkaCluster, topic: str, values: list[bytes]) -> None:
    """Write `values` with the pipeline's producer (acks=all, idempotent); every send must
    be acknowledged."""
    producer = make_producer(kafka.bootstrap_list)
    try:
        futures = [producer.send(topic, key=b"k", value=value) for value in values]
        producer.flush(30)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(5)


def test_the_cluster_has_every_broker_and_a_controller(cluster: LocalKafkaCluster) -> None:
    info = cluster.describe()
    assert info["cluster_id"] == cluster.cluster_id
    brokers = {b["broker_id"]: b for b in info["brokers"]}
    assert sorted(brokers) == list(range(NODES))
    assert not any(b["is_fenced"] for b in brokers.values())
    assert info["controller_id"] in brokers
    assert {b["port"] for b in brokers.values()} == {n.port for n in cluster.layout}


def test_pipeline_topics_are_replicated_and_carry_records(cluster: LocalKafkaCluster) -> None:
    wanted = pipeline_topics()
    # The pipeline's own creation (replication factor -1) takes the cluster's defaults:
    # default.replication.factor=3, min.insync.replicas=2.
    create_topics(cluster.bootstrap_list, wanted)

    # Every broker learns of new topics from the metadata log, a moment after creation.
    def described() -> dict[str, Any]:
        found = describe_partitions(cluster, sorted(wanted))
        ready = all(len(found.get(name) or []) == count for name, count in wanted.items())
        return found if ready else {}

    partitions = wait_until(described, timeout=15, what="the pipeline's topics are described")
    for name, count in wanted.items():
        assert len(partitions[name]) == count, name
        for partition in partitions[name]:
            assert sorted(partition["replica_nodes"]) == [0, 1, 2], (name, partition)
            assert sorted(partition["isr_nodes"]) == [0, 1, 2], (name, partition)

    admin = admin_for(cluster)
    try:
        configs = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, ["min.insync.replicas"])
                for name in wanted
            ],
            config_filter="all",
        )
    finally:
        admin.close()
    for name in wanted:
        assert configs["topic"][name]["min.insync.replicas"]["value"] == "2", name

    topic = sorted(wanted)[0]
    values = [f"record-{i}".encode() for i in range(10)]
    produce(cluster, topic, values)
    got = read_topic(cluster.bootstrap_list, topic, expect=len(values))
    assert [m.value for m in got] == values


def test_records_survive_a_node_and_a_cluster_restart(cluster: LocalKafkaCluster) -> None:
    topic = unique_name("durability")
    admin = admin_for(cluster)
    try:
        admin.create_topics([NewTopic(topic, 1, NODES)])
    finally:
        admin.close()
    before = [f"before-{i}".encode() for i in range(20)]
    produce(cluster, topic, before)

    # The partition's leader goes away, gently (controlled shutdown on SIGTERM): a new
    # leader takes over and acks=all still succeeds with 2 of 3 replicas in sync.
    leader = wait_until(lambda: first_partition(cluster, topic), timeout=15)["leader_id"]
    assert cluster.stop_node(leader, signal.SIGTERM) is not None
    wait_until(
        lambda: sorted(in_sync(cluster, topic)) == sorted(set(range(NODES)) - {leader}),
        timeout=15,
        what=f"node {leader} left the in-sync replicas of {topic}",
    )
    during = [f"during-{i}".encode() for i in range(20)]
    produce(cluster, topic, during)

    cluster.start_node(leader)
    # It catches up on what it missed and is in sync again.
    wait_until(
        lambda: sorted(in_sync(cluster, topic)) == list(range(NODES)),
        timeout=30,
        what=f"node {leader} is back among the in-sync replicas of {topic}",
    )
    after = [f"after-{i}".encode() for i in range(5)]
    produce(cluster, topic, after)

    # The whole cluster stops and starts again from its data directories.
    cluster.stop()
    cluster.start()
    assert sorted(b["broker_id"] for b in cluster.describe()["brokers"]) == list(range(NODES))
    got = read_topic(cluster.bootstrap_list, topic, expect=len(before + during + after))
    assert [m.value for m in got] == before + during + after
    assert [m.offset for m in got] == list(range(len(got)))
    # The pipeline's topics from the test before are still there too.
    assert set(pipeline_topics()) <= set(describe_partitions(cluster, sorted(pipeline_topics())))
