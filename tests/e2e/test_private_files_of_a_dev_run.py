"""`signup-pipeline dev` under the usual umask (022) leaves nothing another local user can
read (issue 16, item 7): ./var and ./logs are 0700; the SQLite databases, their -wal and
-shm files and every log file are 0600."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.local_processes import clean_env, three_free_ports
from tests.unit.pipeline_harness import signup_body

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]


def modes(directory: Path, pattern: str) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(directory.glob(pattern))}


def test_dev_keeps_its_databases_and_logs_to_its_user(tmp_path: Path) -> None:
    base = three_free_ports()
    dev = subprocess.Popen(
        [*CLI, "dev", "--base-port", str(base)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        umask=0o022,  # the processes it starts inherit it
    )
    assert dev.stdout is not None
    output: list[str] = []
    try:
        deadline = time.monotonic() + 90
        for line in dev.stdout:
            output.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        assert any(line.startswith("ready after") for line in output), "".join(output)
        signup = urllib.request.Request(
            f"http://127.0.0.1:{base}/auth/signup",
            data=json.dumps(signup_body(email="private-files@example.com")).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(signup, timeout=30) as answer:
            assert answer.status == 201
        var, logs = tmp_path / "var", tmp_path / "logs"
        # While the processes hold the databases open: -wal and -shm exist.
        databases = modes(var, "*.db*")
        assert {"auth.db", "auth.db-wal", "auth.db-shm", "member.db", "batch.db"} <= set(
            databases
        ), databases
        assert set(databases.values()) == {"0o600"}, databases
        log_files = modes(logs, "*.log")
        assert {"broker.log", "auth-api.log", "member-worker.log"} <= set(log_files), log_files
        assert set(log_files.values()) == {"0o600"}, log_files
        assert modes(tmp_path, "[lv]*") == {"logs": "0o700", "var": "0o700"}
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(30)
        rest = dev.stdout.read()
        dev.stdout.close()
    assert code == 0, "".join(output) + rest
