"""`signup-pipeline dev --kafka apache`: the local stack on one local Apache Kafka node
(devtools/kafka_cluster.py, from the jars scripts/ensure-kafka-jars.sh caches), run as a
newcomer would, from an empty directory; and its one-line refusals without Java or jars."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.commands import example_signup
from devtools.http_client import request, wait_for_status
from devtools.kafka_cluster import KafkaClusterError, ensure_jars
from shared.messaging.kafka import read_topic
from shared.messaging.pipeline import PROFILE_INSERT
from tests.local_processes import alive, clean_env, descendants, three_free_ports

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]
READY_WITHIN = 180  # a JVM's start on a busy two-core machine, then the six processes


@pytest.fixture(scope="module", autouse=True)
def jars() -> Path:
    """Kafka's jars, cached (this is the only place they come from; fetched once)."""
    try:
        return ensure_jars()
    except KafkaClusterError as exc:
        pytest.fail(f"{exc}\n(run scripts/ensure-kafka-jars.sh)", pytrace=False)


@pytest.fixture(autouse=True)
def no_kafka_outlives_the_test(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing test (or a broken dev) left running of its Kafka is killed
    after it, so that one failure does not leave a JVM on a shared machine."""
    yield
    for pid in kafka_processes(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kafka_processes(directory: Path) -> list[int]:
    """Every live JVM running a Kafka node whose files are under `directory`, whoever its
    parent now is (an orphan is found too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [os.fsdecode(word) for word in argv]
        mine = "kafka.Kafka" in words and any(str(directory) in word for word in words)
        if mine and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Dev:
    """`signup-pipeline dev --kafka apache` in `directory`, in a session of its own (as a
    terminal's foreground job is in a process group of its own), read until ready."""

    def __init__(self, directory: Path, base: int) -> None:
        self.process = subprocess.Popen(
            [*CLI, "dev", "--kafka", "apache", "--base-port", str(base)],
            cwd=directory,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.output: list[str] = []
        deadline = time.monotonic() + READY_WITHIN
        for line in self.process.stdout:
            self.output.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        self.tree = descendants(self.process.pid)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def ctrl_c(self) -> None:
        """SIGINT to dev's whole process group, as Ctrl-C at a terminal sends it."""
        os.killpg(self.process.pid, signal.SIGINT)

    def finish(self, timeout: float = 90) -> tuple[int, str]:
        """dev's exit code and the rest of its output."""
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        rest = self.process.stdout.read() if self.process.stdout else ""
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code, rest

    def kill(self) -> None:
        """After a failed assertion: nothing of this test may outlive it."""
        for pid in [self.process.pid, *self.tree]:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def logged_at(line: str) -> datetime.datetime:
    """The time at the head of a log line, Kafka's (`[2026-12-02 02:53:23,233] INFO`) or
    a process's text format (`2026-12-02 02:53:20,917 INFO`)."""
    return datetime.datetime.strptime(line.lstrip("[")[:23], "%Y-%m-%d %H:%M:%S,%f")


def kafka_began_to_stop(kafka_dir: Path) -> datetime.datetime:
    lines = (kafka_dir / "node-0.log").read_text(errors="replace").splitlines()
    return logged_at(
        next(line for line in lines if "Transition from STARTED to SHUTTING_DOWN" in line)
    )


def worker_stopped(logs: Path, worker: str) -> datetime.datetime:
    lines = (logs / f"{worker}.log").read_text(errors="replace").splitlines()
    return logged_at(next(line for line in lines if line.endswith("shared.runtime: stopped")))


def sign_up_partner(base: int) -> str:
    body = example_signup()
    status, answer = request("POST", f"http://127.0.0.1:{base}/auth/signup", body)
    assert status == 201, answer
    member_id: str = answer["uuid"]
    return member_id


@pytest.mark.timeout(600)  # two starts of a JVM and of the stack, on a shared machine
def test_dev_on_apache_kafka_signs_up_keeps_its_topics_and_leaves_no_java_behind(
    tmp_path: Path,
) -> None:
    base = three_free_ports()
    kafka_dir = tmp_path / "var" / "kafka"
    broker_file = tmp_path / "var" / "dev-broker"

    # First run: from an empty directory, a signup reaches the member profile.
    dev = Dev(tmp_path, base)
    try:
        assert any(line.startswith("ready after") for line in dev.output), dev.text
        broker = broker_file.read_text().strip()
        broker_line = next(line for line in dev.output if line.split()[:1] == ["broker"])
        assert broker_line.split()[1] == broker, dev.text
        assert "Apache Kafka 4.4.0, one node, its data in ./var/kafka" in broker_line
        # The broker is the Apache Kafka node in ./var/kafka, a child of this dev.
        (jvm,) = kafka_processes(kafka_dir)
        assert jvm in dev.tree
        assert json.loads((kafka_dir / "cluster.json").read_text())["nodes"][0]["port"] == int(
            broker.rsplit(":", 1)[1]
        )
        member_id = sign_up_partner(base)
        wait_for_status(f"http://127.0.0.1:{base + 1}/members/{member_id}", timeout=60)
        status, profile = request("GET", f"http://127.0.0.1:{base + 1}/members/{member_id}")
        assert status == 200 and profile["role"] == "PARTNER", profile
        wait_for_status(f"http://127.0.0.1:{base + 2}/partners/{member_id}/summary", timeout=60)
        dev.ctrl_c()
        code, rest = dev.finish()
    except BaseException:
        dev.kill()
        raise
    assert code == 0, dev.text + rest
    assert rest.rstrip().endswith("stopped"), rest
    assert [pid for pid in dev.tree if alive(pid)] == []
    assert kafka_processes(tmp_path) == []
    assert not broker_file.exists()
    assert (kafka_dir / "node-0" / "data" / "meta.properties").is_file()
    # The terminal's Ctrl-C reached dev, not the broker: it was stopped last, once the
    # workers had committed and left their groups.
    node_log = (kafka_dir / "node-0.log").read_text(errors="replace")
    for group in ("auth-service", "member-service", "batch-service"):
        assert f"[Group {group}] Member" in node_log and "explicit `LeaveGroup`" in node_log
    stopping = kafka_began_to_stop(kafka_dir)
    for worker in ("auth-worker", "member-worker", "batch-worker"):
        assert worker_stopped(tmp_path / "logs", worker) <= stopping, worker

    # Second run in the same directory: the same broker, its topics and records kept.
    dev = Dev(tmp_path, base)
    try:
        assert any(line.startswith("ready after") for line in dev.output), dev.text
        assert broker_file.read_text().strip() == broker
        records = read_topic([broker], PROFILE_INSERT.name, expect=1)
        assert any(member_id.encode() in record.value for record in records), records
        assert len(kafka_processes(kafka_dir)) == 1
        # Its reader gone (`dev | tee`, and tee stopped first), then SIGTERM: dev still
        # stops everything, the broker last.
        assert dev.process.stdout is not None
        dev.process.stdout.close()
        dev.process.send_signal(signal.SIGTERM)
        code = dev.process.wait(90)
    except BaseException:
        dev.kill()
        raise
    assert code == 0
    assert [pid for pid in dev.tree if alive(pid)] == []
    assert kafka_processes(tmp_path) == []
    assert not broker_file.exists()


def tool_directory(tmp_path: Path, *tools: str) -> Path:
    """A directory holding only links to `tools` (from this machine's PATH), for a PATH
    on which anything else is missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
            if (Path(directory) / tool).exists():
                (bin_dir / tool).symlink_to(Path(directory) / tool)
                break
        else:
            pytest.fail(f"{tool} is not on this machine")
    return bin_dir


@pytest.mark.parametrize("missing", ["java", "the jars (no mvn to fetch them)"])
def test_dev_apache_without_java_or_jars_says_so_in_one_line_and_exits_2(
    tmp_path: Path, missing: str
) -> None:
    env = clean_env()
    if missing == "java":
        env["PATH"] = str(tool_directory(tmp_path, "bash", "dirname"))
        expected = "no java on PATH"
    else:
        env["PATH"] = str(tool_directory(tmp_path, "bash", "dirname", "java"))
        env["KAFKA_JARS_DIR"] = str(tmp_path / "no-jars-here")
        expected = "no mvn on PATH"
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run(
        [*CLI, "dev", "--kafka", "apache"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (workdir / "var" / "dev-broker").exists()
    assert not (workdir / "var" / "kafka").exists()


def test_demo_on_apache_kafka_goes_through_and_leaves_nothing(tmp_path: Path) -> None:
    env = clean_env() | {"TMPDIR": str(tmp_path)}  # the demo's directory, to look into after
    result = subprocess.run(
        [*CLI, "demo", "--kafka", "apache", "--count", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=READY_WITHIN + 60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting Apache Kafka 4.4.0 (one node)" in result.stdout
    assert "all signups went through; clean shutdown" in result.stdout
    assert kafka_processes(tmp_path) == []
    assert list(tmp_path.glob("signup-demo-*")) == []  # its broker's data went with it
