"""`signup-pipeline dev` and `signup-pipeline demo`, run as a newcomer would."""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from devtools.http_client import wait_for_status
from devtools.proxy import nginx_binary
from devtools.stack import http_status
from tests.local_processes import alive, clean_env, descendants, three_free_ports
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]


def test_dev_serves_the_printed_curl_and_ctrl_c_leaves_no_process_behind(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = three_free_ports()
    dev = subprocess.Popen(
        [*CLI, "dev", "--base-port", str(base)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def leave_nothing_running() -> None:
        """Should an assertion fail before the Ctrl-C below, stop dev all the same."""
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(30)
            except subprocess.TimeoutExpired:
                dev.kill()

    request.addfinalizer(leave_nothing_running)
    assert dev.stdout is not None
    output: list[str] = []
    pasted: list[str] = []  # the lines under "try", as printed
    deadline = time.monotonic() + 90
    for line in dev.stdout:
        output.append(line)
        if pasted or line.startswith("try"):
            pasted.append(line.strip())
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert any(line.startswith("ready after") for line in output), "".join(output)
    commands = [line for line in pasted[1:] if line and not line.startswith("Ctrl-C")]
    tree = descendants(dev.pid)
    assert len(tree) >= 7  # broker + six processes (+ gunicorn workers)
    broker_file = tmp_path / "var" / "dev-broker"
    broker = broker_file.read_text().strip()
    assert any(line.split()[:2] == ["broker", broker] for line in output), "".join(output)

    # Every printed command, pasted as printed into a shell of another directory, with
    # nothing of the project's set in the environment.
    cd, signup, signup_curl, member_curl, summary_curl, trace, status = commands
    assert cd == f"cd {tmp_path}"
    cli = str(Path(sys.executable).parent / "signup-pipeline")
    assert trace == f"{cli} trace $UUID" and status == f"{cli} status --watch"
    assert not any("KAFKA_BOOTSTRAP_SERVERS" in command for command in commands)
    elsewhere = tmp_path.parent

    def paste(*lines: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", "\n".join(lines)],
            cwd=elsewhere,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    signed_up = paste(cd, signup)
    member_id = signed_up.stdout.strip()
    assert str(uuid.UUID(member_id)) == member_id, signed_up
    again = paste(cd, signup)  # a fresh email each time: pasting twice signs up twice
    assert again.stdout.strip() not in ("", member_id), again
    wait_for_status(f"http://127.0.0.1:{base + 1}/members/{member_id}")
    wait_for_status(f"http://127.0.0.1:{base + 2}/partners/{member_id}/summary")
    # The auth worker took the member service's answer: the account is ACTIVE.

    def signup_active() -> subprocess.CompletedProcess[str] | None:
        answer = paste(cd, f"UUID={member_id}", signup_curl)
        return answer if '"ACTIVE"' in answer.stdout else None

    active = wait_until(signup_active, 30, "the signup's status ACTIVE")
    member = paste(cd, f"UUID={member_id}", member_curl)
    summary = paste(cd, f"UUID={member_id}", summary_curl)
    traced = paste(cd, f"UUID={member_id}", trace)
    once = paste(cd, status.replace(" --watch", ""))

    dev.send_signal(signal.SIGINT)
    code = dev.wait(30)
    rest = dev.stdout.read()
    dev.stdout.close()

    assert json.loads(active.stdout) == {"status": "ACTIVE"}, active
    assert json.loads(member.stdout)["role"] == "PARTNER", member
    assert member_id in summary.stdout, summary
    assert traced.returncode == 0, traced.stderr
    assert " 7 summary created" in traced.stdout and "complete:" in traced.stdout, traced.stdout
    assert broker in once.stdout, once
    # dev's processes log readable text lines, not JSON.
    assert any(" INFO " in line and not line.split(" ", 1)[-1].startswith("{") for line in output)
    assert code == 0, rest
    assert "non-zero" not in rest
    assert [pid for pid in tree if alive(pid)] == []
    assert (tmp_path / "var" / "member.db").exists()  # the embedded default location
    assert not broker_file.exists()  # no stale address for the operator commands
    assert http_status(f"http://127.0.0.1:{base}/health/live", timeout=1) is None


class AnswersEverything(http.server.BaseHTTPRequestHandler):
    """Another program on the port: 200 to any GET (as another `dev` would answer)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("squatter", ["listening socket", "HTTP server answering 200"])
def test_dev_stops_everything_when_a_process_fails_to_start(tmp_path: Path, squatter: str) -> None:
    base = three_free_ports()
    with contextlib.ExitStack() as taken:  # the member API's port is taken
        if squatter == "listening socket":
            sock = taken.enter_context(socket.socket())
            sock.bind(("127.0.0.1", base + 1))
            sock.listen()
        else:
            server = http.server.HTTPServer(("127.0.0.1", base + 1), AnswersEverything)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            taken.callback(server.server_close)
            taken.callback(server.shutdown)
        started = time.monotonic()
        result = subprocess.run(
            [*CLI, "dev", "--base-port", str(base)],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert time.monotonic() - started < 60, output  # not after the 60 s readiness timeout
    assert not any(line.startswith("ready") for line in output.splitlines()), output
    assert not any(line.startswith("try") for line in output.splitlines()), output
    assert "Ctrl-C" not in output, output
    # The failing process, by name, and its own last lines: the bind error of what
    # listens on the public ports, nginx in front of the APIs (scripts/test.sh installs
    # it), or without nginx the member API's gunicorn.
    if nginx_binary() is not None:
        failed, refusal = "proxy", f"bind() to 127.0.0.1:{base + 1} failed (98: Address"
    else:
        failed, refusal = "member-api", f"Connection in use: ('127.0.0.1', {base + 1})"
    assert f"error: {failed} exited with 1; last lines" in result.stdout, output
    _, _, last = result.stdout.partition(f"error: {failed} exited")
    assert refusal in last, output
    # Its failure is the end of the output: the others' shutdown is not echoed after it.
    assert result.stdout.rstrip().endswith("nothing of this run is left running"), output
    assert "Traceback" not in last, output
    assert not (tmp_path / "var" / "dev-broker").exists()


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
    # Not a terminal: plain Markdown tables, no colour codes.
    assert "\x1b[" not in result.stdout
    signups_part, _, ranking_part = result.stdout.partition("the ranking (GET")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in signups_part.splitlines()
        if line.startswith("| ") and "uuid" not in line
    ]
    assert len(rows) == 4
    assert all("MISSING" not in row for row in rows)
    assert sum("PARTNER" in row for row in rows) == 2
    for n, (number, role, member_id, accepted, profile, summary, active) in enumerate(rows, 1):
        assert number == str(n) and str(uuid.UUID(member_id)) == member_id
        assert accepted.endswith(" ms") and profile.endswith(" ms") and active.endswith(" ms")
        assert summary.endswith(" ms") if role == "PARTNER" else summary == "-"
    # Then the partners' simulated activity, reconciled, and the ranking of the two.
    assert "300 activity events" in signups_part
    assert "reconcile: every summary matches the events" in signups_part
    ranking = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in ranking_part.splitlines()
        if line.startswith("| ") and "partner" not in line
    ]
    partners = {row[2][:8] for row in rows if row[1] == "PARTNER"}
    assert [row[0] for row in ranking] == ["1", "2"], result.stdout
    assert {row[1] for row in ranking} == partners
    scores = [float(row[5]) for row in ranking]
    assert scores == sorted(scores, reverse=True)
    for _, _, followers, coordinates, star, score in ranking:
        # The score as the contract defines it, from the columns shown (2 decimals).
        expected = int(followers) * 0.4 + int(coordinates) * 0.3 + float(star) * 0.3
        assert abs(float(score) - expected) < 0.01, ranking
    assert "all signups went through; clean shutdown" in result.stdout
