"""The broker a test run uses, chosen by TEST_KAFKA (or KAFKA_BOOTSTRAP_SERVERS):

- `tansu` (the default): the bundled Tansu broker, in memory, one node, no Java needed;
- `apache` or `apache:3`: a local three-node Apache Kafka cluster (KRaft, from the jars
  scripts/ensure-kafka-jars.sh fetched) with the production topic settings: replication
  factor 3, min.insync.replicas=2, unclean leader election off, auto-create off, and the
  pipeline's topics created up front; `apache:1` is one node (replication factor 1);
- KAFKA_BOOTSTRAP_SERVERS set: that broker, as it is (the tests neither create its topics
  up front nor stop it: a test that must stop or pause a broker says it needs its own).

scripts/test.sh runs the end-to-end and fault tiers on `apache:3` and the others on
`tansu`, unless TEST_KAFKA is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.broker import LocalBroker
from devtools.kafka_cluster import (
    KAFKA_VERSION,
    KafkaClusterError,
    LocalKafkaCluster,
    ensure_jars,
)
from shared.messaging.kafka import create_topics, pipeline_topics

TEST_KAFKA_VARIABLE = "TEST_KAFKA"


class BrokerChoiceError(ValueError):
    """TEST_KAFKA names no broker this suite knows."""


@dataclass(frozen=True)
class BrokerChoice:
    kind: str  # "tansu", "apache" or "external"
    nodes: int = 1
    servers: str = ""

    @property
    def label(self) -> str:
        if self.kind == "apache":
            return f"Apache Kafka {KAFKA_VERSION}, {self.nodes} node(s)"
        if self.kind == "external":
            return f"the broker at {self.servers} (KAFKA_BOOTSTRAP_SERVERS)"
        return "the bundled Tansu broker"

    @property
    def can_stop(self) -> bool:
        """Whether the tests start this broker themselves (and so may stop or pause it)."""
        return self.kind != "external"


def broker_choice(env: Mapping[str, str] | None = None) -> BrokerChoice:
    """The broker TEST_KAFKA / KAFKA_BOOTSTRAP_SERVERS choose (see the module's text)."""
    env = os.environ if env is None else env
    servers = (env.get("KAFKA_BOOTSTRAP_SERVERS") or "").strip()
    if servers:
        return BrokerChoice("external", servers=servers)
    value = (env.get(TEST_KAFKA_VARIABLE) or "tansu").strip().lower()
    if value == "tansu":
        return BrokerChoice("tansu")
    kind, _, nodes = value.partition(":")
    if kind == "apache" and (not nodes or nodes.isdigit()):
        count = int(nodes or 3)
        if 1 <= count <= 5:
            return BrokerChoice("apache", nodes=count)
    raise BrokerChoiceError(
        f"{TEST_KAFKA_VARIABLE}={value!r}: use tansu, apache (three nodes) or apache:N "
        "(1 to 5 nodes), or set KAFKA_BOOTSTRAP_SERVERS to use a broker of your own"
    )


class TestBroker:
    """A broker the tests started (or were given): its address, and for one they started,
    ways to freeze and stop it."""

    __test__ = False  # not a test class, despite the name

    def __init__(
        self,
        choice: BrokerChoice,
        tansu: LocalBroker | None = None,
        cluster: LocalKafkaCluster | None = None,
    ) -> None:
        self.choice = choice
        self.tansu = tansu
        self.cluster = cluster

    @property
    def bootstrap_servers(self) -> str:
        if self.tansu is not None:
            return self.tansu.bootstrap_servers
        if self.cluster is not None:
            return self.cluster.bootstrap_servers
        return self.choice.servers

    def pause(self) -> None:
        """Freeze every broker process (SIGSTOP): connections stay open, nothing answers."""
        if self.tansu is not None:
            self.tansu.pause()
        elif self.cluster is not None:
            self.cluster.pause()
        else:
            raise BrokerChoiceError(f"cannot pause {self.choice.label}")

    def resume(self) -> None:
        if self.tansu is not None:
            self.tansu.resume()
        elif self.cluster is not None:
            self.cluster.resume()

    def stop(self) -> None:
        """Stop it (Tansu loses its data; a cluster keeps its data directories)."""
        if self.tansu is not None:
            self.tansu.stop()
        elif self.cluster is not None:
            # All at once: no quorum is left for a controlled shutdown, so do not wait long.
            self.cluster.stop(timeout=15)


def start_test_broker(choice: BrokerChoice, workdir: Path) -> TestBroker:
    """Start the chosen broker with its files under `workdir` (or take the one given); for
    Apache Kafka, create the pipeline's topics up front, as an operator would."""
    if choice.kind == "tansu":
        return TestBroker(choice, tansu=LocalBroker(log_path=workdir / "tansu.log").start())
    if choice.kind == "apache":
        cluster = LocalKafkaCluster(choice.nodes, workdir / "apache-kafka").start()
        try:
            create_topics(cluster.bootstrap_list, pipeline_topics())
        except BaseException:
            cluster.stop()
            raise
        return TestBroker(choice, cluster=cluster)
    return TestBroker(choice)


def kafka_jars() -> Path:
    """Apache Kafka's jars (fetched once by scripts/ensure-kafka-jars.sh); the test fails,
    saying how to get them, when they cannot be had."""
    try:
        return ensure_jars()
    except KafkaClusterError as exc:
        pytest.fail(f"{exc}\n(run scripts/ensure-kafka-jars.sh)", pytrace=False)
