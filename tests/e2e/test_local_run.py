"""`signup-pipeline dev` and `signup-pipeline demo`, run as a newcomer would."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.broker import free_port
from devtools.http_client import wait_for_status
from devtools.stack import http_status

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]


def three_free_ports() -> int:
    while True:
        base = free_port()
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def test_dev_serves_the_printed_curl_and_ctrl_c_leaves_no_process_behind(tmp_path: Path) -> None:
    base = three_free_ports()
    dev = subprocess.Popen(
        [*CLI, "dev", "--base-port", str(base)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert dev.stdout is not None
    curl = trace = None
    output = []
    deadline = time.monotonic() + 90
    for line in dev.stdout:
        output.append(line)
        if line.strip().startswith("curl -s -X POST"):
            curl = line.strip()
        if "signup-pipeline trace" in line:
            trace = line.strip()
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert curl is not None, "".join(output)
    tree = descendants(dev.pid)
    assert len(tree) >= 6  # broker + five processes (+ gunicorn workers)

    signed_up = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
    member_id = __import__("json").loads(signed_up.stdout)["uuid"]
    _, member = wait_for_status(f"http://127.0.0.1:{base + 1}/members/{member_id}")
    wait_for_status(f"http://127.0.0.1:{base + 2}/partners/{member_id}/summary")
    # The printed trace command, as a newcomer would paste it (from the same directory).
    assert trace is not None, "".join(output)
    variable, _, command = trace.partition(" ")
    traced = subprocess.run(
        [*CLI, *shlex.split(command.replace("<uuid>", member_id))[1:]],
        cwd=tmp_path,
        env={**clean_env(), variable.split("=")[0]: variable.split("=", 1)[1]},
        capture_output=True,
        text=True,
        timeout=60,
    )

    dev.send_signal(signal.SIGINT)
    code = dev.wait(30)
    rest = dev.stdout.read()
    dev.stdout.close()

    assert member["role"] == "PARTNER"
    assert traced.returncode == 0, traced.stderr
    assert "5 summary created" in traced.stdout and "complete:" in traced.stdout, traced.stdout
    # dev's processes log readable text lines, not JSON.
    assert any(" INFO " in line and not line.split(" ", 1)[-1].startswith("{") for line in output)
    assert code == 0, rest
    assert "non-zero" not in rest
    assert [pid for pid in tree if alive(pid)] == []
    assert (tmp_path / "var" / "member.db").exists()  # the embedded default location
    assert http_status(f"http://127.0.0.1:{base}/health/live", timeout=1) is None


def test_dev_reports_a_process_that_dies_and_exits_non_zero(tmp_path: Path) -> None:
    base = three_free_ports()
    with socket.socket() as squatter:  # the member API's port is taken
        squatter.bind(("127.0.0.1", base + 1))
        squatter.listen()
        result = subprocess.run(
            [*CLI, "dev", "--base-port", str(base)],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "member-api exited" in result.stdout
    assert "last lines" in result.stdout


def test_demo_runs_to_completion_and_prints_the_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "demo", "--count", "4"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| ") and "uuid" not in line
    ]
    assert len(rows) == 4
    assert all("MISSING" not in row for row in rows)
    assert sum("PARTNER" in row for row in rows) == 2
    assert "all signups went through; clean shutdown" in result.stdout
