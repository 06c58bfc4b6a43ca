"""What the local Apache Kafka cluster decides without starting anything: its cluster ids
and each node's settings (hermetic: no Java is run)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from devtools import kafka_cluster
from devtools.kafka_cluster import LocalKafkaCluster, new_cluster_id


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-storage takes `--cluster-id -abc` for an option: one id in 64 would fail."""
    dashed = base64.urlsafe_b64decode("-" + "A" * 21 + "==")  # 16 bytes encoding to "-AAA…"
    draws = iter([dashed, dashed, b"\x01" * 16])

    class FakeUuid:
        def __init__(self) -> None:
            self.bytes = next(draws)

    monkeypatch.setattr(kafka_cluster.uuid, "uuid4", FakeUuid)
    assert base64.urlsafe_b64encode(dashed).decode().startswith("-")
    assert new_cluster_id() == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_new_ids_are_kraft_ids() -> None:
    for _ in range(500):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_three_nodes_get_the_production_topic_settings(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster(3, tmp_path / "kafka")
    settings = [cluster.properties(node) for node in cluster.layout]
    for node, properties in zip(cluster.layout, settings, strict=True):
        assert properties["node.id"] == str(node.node_id)
        assert properties["default.replication.factor"] == "3"
        assert properties["min.insync.replicas"] == "2"
        assert properties["unclean.leader.election.enable"] == "false"
        assert properties["auto.create.topics.enable"] == "false"
        assert properties["log.dirs"] == str(node.data_dir)
    voters = {p["controller.quorum.voters"] for p in settings}
    assert len(voters) == 1 and voters.pop().count("@127.0.0.1:") == 3
    # Durable layout: a second object on the same directory is the same cluster.
    again = LocalKafkaCluster(3, tmp_path / "kafka")
    assert again.cluster_id == cluster.cluster_id
    assert [n.port for n in again.layout] == [n.port for n in cluster.layout]
