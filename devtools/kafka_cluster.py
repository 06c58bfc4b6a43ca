"""A local Apache Kafka cluster of N KRaft nodes, run from the jars Maven fetched.

`scripts/ensure-kafka-jars.sh` copies Apache Kafka's jars (deploy/kafka-local/pom.xml)
into a cache once; this module starts `java -cp "jars/*" kafka.Kafka` from there, for
tests and development that need a real, replicated Kafka rather than the bundled Tansu
broker (devtools/broker.py, in memory, one node).

Each node is a combined broker and controller (process.roles=broker,controller) with its
own data directory under `workdir` and its own loopback ports; the controller quorum is
static (controller.quorum.voters), every node a voter. The storage is durable: a node
stopped and started again (or a new LocalKafkaCluster on the same `workdir`) keeps its
data, its cluster id and its ports.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from devtools.broker import free_port
from shared.config import KAFKA_JARS_VARIABLE, child_environment, kafka_jars_dir
from shared.private_files import open_private_log, private_directory

KAFKA_VERSION = "4.4.0"
KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
REPO_ROOT = Path(__file__).resolve().parent.parent
ENSURE_SCRIPT = REPO_ROOT / "scripts" / "ensure-kafka-jars.sh"
COMPLETE_MARKER = ".complete"

# Gentle on a small machine: a small heap, the serial collector, quick start-up.
JVM_OPTIONS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:MaxDirectMemorySize=256m",
    "-Djava.awt.headless=true",
    # keep logging while Kafka shuts down (log4j2 would otherwise stop at SIGTERM)
    "-Dlog4j2.shutdownHookEnabled=false",
)

LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaClusterError(RuntimeError):
    """The local Kafka cluster could not be set up, started or stopped."""


def default_jars_dir() -> Path:
    """Where scripts/ensure-kafka-jars.sh keeps the jars ($KAFKA_JARS_DIR overrides it)."""
    return kafka_jars_dir(f"kafka-{KAFKA_VERSION}")


def jars_ready(jars_dir: Path) -> bool:
    """Whether the jars were copied completely into `jars_dir`."""
    return (jars_dir / COMPLETE_MARKER).is_file()


def ensure_jars(jars_dir: Path | None = None) -> Path:
    """The directory of Kafka's jars, fetched with scripts/ensure-kafka-jars.sh first if it
    has not been (the only step that downloads anything). Raises KafkaClusterError, with
    the script's own message, when they cannot be had."""
    target = jars_dir or default_jars_dir()
    if jars_ready(target):
        return target
    result = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)],
        env=child_environment() | {KAFKA_JARS_VARIABLE: str(target)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not jars_ready(target):
        raise KafkaClusterError(
            f"Apache Kafka's jars are not in {target}: run scripts/ensure-kafka-jars.sh "
            f"(exit {result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return target


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting
    with "-" (kafka-storage would take it for an option; Kafka's own Uuid.randomUuid()
    draws again in that case, and so does this)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def registered_brokers(info: dict[str, Any]) -> set[int]:
    """The ids of the unfenced brokers in a describe_cluster() answer."""
    return {
        int(b.get("broker_id", b.get("node_id", -1)))
        for b in info.get("brokers", [])
        if not b.get("is_fenced", False)
    }


@dataclass(frozen=True)
class NodeLayout:
    """Where one node keeps its files and which ports it listens on."""

    node_id: int
    port: int
    controller_port: int
    directory: Path

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log(self) -> Path:
        return self.directory.parent / f"node-{self.node_id}.log"


class LocalKafkaCluster:
    """`nodes` Apache Kafka nodes (broker+controller each) on 127.0.0.1, data in `workdir`."""

    def __init__(
        self,
        nodes: int = 3,
        workdir: Path | None = None,
        jars_dir: Path | None = None,
        java: str = "java",
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if workdir is None:
            raise ValueError("workdir is required: the nodes keep their data there")
        self.nodes = nodes
        self.workdir = Path(workdir).resolve()
        self._jars_dir = jars_dir
        self._java = java
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        # Every process this object started, kept until stop() has reaped it: none is
        # ever dropped while it may still run (and none left to the garbage collector).
        self._started: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, IO[bytes]] = {}
        self.cluster_id, self.layout = self._load_or_plan()

    # -- layout ---------------------------------------------------------------------

    def _load_or_plan(self) -> tuple[str, list[NodeLayout]]:
        """The cluster id and ports of this workdir: kept in cluster.json so a restart
        (even by another LocalKafkaCluster) finds the same cluster."""
        state_file = self.workdir / "cluster.json"
        if state_file.is_file():
            state: dict[str, Any] = json.loads(state_file.read_text())
            if len(state["nodes"]) != self.nodes:
                raise KafkaClusterError(
                    f"{self.workdir} holds a cluster of {len(state['nodes'])} nodes, "
                    f"not {self.nodes}"
                )
            cluster_id = str(state["cluster_id"])
            ports = [(int(n["port"]), int(n["controller_port"])) for n in state["nodes"]]
        else:
            cluster_id = new_cluster_id()
            ports = self._free_ports()
            # 0700 (and ./var above it, if this makes it): the nodes' logs and data hold the
            # pipeline's events, personal data (issue 16, item 7).
            private_directory(self.workdir)
            state = {
                "kafka": KAFKA_VERSION,
                "cluster_id": cluster_id,
                "nodes": [{"port": p, "controller_port": c} for p, c in ports],
            }
            state_file.write_text(json.dumps(state, indent=2) + "\n")
        layout = [
            NodeLayout(i, port, cport, self.workdir / f"node-{i}")
            for i, (port, cport) in enumerate(ports)
        ]
        return cluster_id, layout

    def _free_ports(self) -> list[tuple[int, int]]:
        taken: set[int] = set()
        while len(taken) < 2 * self.nodes:
            taken.add(free_port())
        ordered = sorted(taken)
        return [(ordered[2 * i], ordered[2 * i + 1]) for i in range(self.nodes)]

    @property
    def bootstrap_servers(self) -> str:
        """Every node's `host:port`, comma-separated, for clients."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.layout)

    @property
    def bootstrap_list(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.layout]

    def properties(self, node: NodeLayout) -> dict[str, str]:
        """The node's server.properties."""
        n = self.nodes
        voters = ",".join(f"{v.node_id}@127.0.0.1:{v.controller_port}" for v in self.layout)
        replication = str(min(3, n))
        min_isr = str(min(2, n))
        return {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "default.replication.factor": replication,
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "min.insync.replicas": min_isr,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.cleaner.threads": "1",
        }

    def format_arguments(self, node: NodeLayout) -> list[str]:
        """Extra arguments for `kafka-storage format` (a secured cluster adds its SCRAM
        users here: KRaft has no ZooKeeper to create them in later)."""
        return []

    def client_options(self) -> dict[str, Any]:
        """kafka-python options (security) for this module's own admin clients."""
        return {}

    def _write_config(self, node: NodeLayout) -> None:
        private_directory(node.directory)
        lines = [f"{key}={value}" for key, value in self.properties(node).items()]
        node.config.write_text("\n".join(lines) + "\n")
        log4j = self.workdir / "log4j2.properties"
        if not log4j.is_file():
            log4j.write_text(LOG4J2_PROPERTIES)

    def _java_command(self, main: str, *args: str) -> list[str]:
        jars = self._jars_dir or default_jars_dir()
        return [
            self._java,
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            str(jars / "*"),
            main,
            *args,
        ]

    # -- storage --------------------------------------------------------------------

    def format_storage(self) -> None:
        """Format every node's data directory not yet formatted (in parallel), with the
        cluster's one id. A formatted directory is left as it is: its data stays."""
        pending: list[tuple[NodeLayout, subprocess.Popen[bytes]]] = []
        for node in self.layout:
            self._write_config(node)
            if (node.data_dir / "meta.properties").is_file():
                continue
            command = self._java_command(
                STORAGE_TOOL_MAIN,
                "format",
                "--cluster-id",
                self.cluster_id,
                "--config",
                str(node.config),
                "--ignore-formatted",
                *self.format_arguments(node),
            )
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self._started.append(process)
            pending.append((node, process))
        for node, process in pending:
            try:
                output, _ = process.communicate(timeout=120)
            except BaseException:
                self._reap_all()
                raise
            if process.returncode != 0:
                raise KafkaClusterError(
                    f"formatting node {node.node_id}'s storage failed "
                    f"(exit {process.returncode}): {output.decode(errors='replace')[-2000:]}"
                )

    # -- processes ------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> LocalKafkaCluster:
        """Format what is not formatted, start every node that is not running, and wait
        until the cluster has a controller and every broker is registered."""
        self._jars_dir = ensure_jars(self._jars_dir)
        self.format_storage()
        try:
            for node in self.layout:
                self._spawn(node)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, index: int, timeout: float = 90.0) -> None:
        """Start node `index` again (its data directory as it was) and wait until every
        broker is registered."""
        self._spawn(self.layout[index])
        self.wait_ready(timeout)

    def _spawn(self, node: NodeLayout) -> None:
        if self.running(node.node_id):
            return
        self._write_config(node)
        self._close_log(node.node_id)
        log = open_private_log(node.log)  # closed when the node stops
        log.write(f"\n===== starting node {node.node_id} at {time.ctime()} =====\n".encode())
        log.flush()
        self._logs[node.node_id] = log
        process = subprocess.Popen(
            self._java_command(KAFKA_MAIN, str(node.config)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node.directory,
            # A session of its own, as the stack's processes have: a Ctrl-C at the
            # terminal reaches whoever started the node, which stops the services first
            # and the broker last, not the broker under the services at the same instant.
            start_new_session=True,
        )
        self._started.append(process)
        self._processes[node.node_id] = process

    def running(self, index: int) -> bool:
        process = self._processes.get(index)
        return process is not None and process.poll() is None

    def describe(self) -> dict[str, Any]:
        """kafka-python's describe_cluster(): brokers, controller_id, cluster_id."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=[
                f"127.0.0.1:{n.port}" for n in self.layout if self.running(n.node_id)
            ]
            or self.bootstrap_list,
            request_timeout_ms=5_000,
            bootstrap_timeout_ms=5_000,
            **self.client_options(),
        )
        try:
            result: dict[str, Any] = admin.describe_cluster()
            return result
        finally:
            admin.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until a controller is known and every running node is a registered broker;
        raise KafkaClusterError with the logs' tails if it does not happen in time."""
        expected = {n.node_id for n in self.layout if self.running(n.node_id)}
        deadline = time.monotonic() + timeout
        last: str = "no answer yet"
        while time.monotonic() < deadline:
            for node in self.layout:
                process = self._processes.get(node.node_id)
                if process is not None and process.poll() is not None:
                    raise KafkaClusterError(
                        f"node {node.node_id} exited with {process.returncode} at start:\n"
                        f"{log_tail(node.log)}"
                    )
            try:
                info = self.describe()
                brokers = registered_brokers(info)
                controller = info.get("controller_id")
                if controller is not None and controller >= 0 and expected <= brokers:
                    return
                last = f"brokers {sorted(brokers)}, controller {controller}"
            except Exception as exc:  # noqa: BLE001 - not up yet: try again
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        tails = "\n".join(f"--- node {n.node_id}:\n{log_tail(n.log)}" for n in self.layout)
        raise KafkaClusterError(
            f"the Kafka cluster in {self.workdir} was not ready within {timeout}s "
            f"(expected brokers {sorted(expected)}; last: {last})\n{tails}"
        )

    def stop_node(
        self, index: int, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0
    ) -> int | None:
        """Send `sig` to node `index` and wait until it exited (SIGKILL after `timeout`).
        Its data directory stays. Returns its exit code (None if it was not running)."""
        process = self._processes.get(index)
        code: int | None = None
        if process is not None:
            if process.poll() is None:
                if sig != signal.SIGKILL:
                    process.send_signal(signal.SIGCONT)
                process.send_signal(sig)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
            del self._processes[index]
        self._close_log(index)
        return code

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every node at once and wait until they all exited (SIGKILL after
        `timeout`). Their data directories stay."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused node could not hear SIGTERM
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for index in list(self._processes):
            process = self._processes[index]
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self._processes[index]
            self._close_log(index)
        self._reap_all()

    def _reap_all(self) -> None:
        """Kill and wait for any process this object started that still runs (none
        should, after the waits above), and forget those that have exited."""
        for process in self._started:
            if process.poll() is None:
                process.kill()
                process.wait()
        self._started = [p for p in self._started if p.returncode is None]

    def pause(self) -> None:
        """Freeze every running node (SIGSTOP): connections stay open, nothing answers."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw the nodes pause() froze (SIGCONT); their state is intact."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Stop every node and delete all their data: the next start() formats a new,
        empty cluster (a new cluster id) on the same ports, as if rebuilt from nothing."""
        self.stop()
        for node in self.layout:
            shutil.rmtree(node.data_dir, ignore_errors=True)
        self.cluster_id = new_cluster_id()
        state_file = self.workdir / "cluster.json"
        state = json.loads(state_file.read_text())
        state["cluster_id"] = self.cluster_id
        state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _close_log(self, index: int) -> None:
        log = self._logs.pop(index, None)
        if log is not None:
            log.close()

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
