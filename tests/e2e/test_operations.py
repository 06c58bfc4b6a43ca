"""`signup-pipeline trace` and `status`, run as an operator would, against the contract's
processes on real PostgreSQL and a real broker."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from devtools.http_client import request, wait_for_status
from devtools.stack import Stack
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]
MOMENT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"
PARTNER_STEPS = [
    "accepted",
    "profile-insert published",
    "profile created",
    "partner-created published",
    "summary created",
]


def sign_up(stack: Stack, role: str) -> str:
    status, body = request("POST", f"{stack.url('auth')}/auth/signup", signup_body(role=role))
    assert status == 201, body
    return str(body["uuid"])


def signup_pipeline(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, with the environment the services run with."""
    return subprocess.run(
        [*CLI, *args], env=stack.env(), capture_output=True, text=True, timeout=60
    )


def moment(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def moment_text(line: str) -> str:
    found = re.search(MOMENT, line)
    assert found, line
    return found.group(0)


def test_trace_shows_every_step_of_a_partner_signup_in_order_with_timestamps(
    stack: Stack,
) -> None:
    partner_id = sign_up(stack, "PARTNER")
    wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary")

    shown = signup_pipeline(stack, "trace", partner_id)
    as_json = signup_pipeline(stack, "trace", partner_id, "--json")

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"signup {partner_id}  role PARTNER  trace ")
    assert re.search(r"trace [0-9a-f]{32}$", lines[0]), lines[0]
    steps = lines[1:6]
    for n, (line, name) in enumerate(zip(steps, PARTNER_STEPS, strict=True), start=1):
        assert re.match(rf"  {n} {name} +{MOMENT}", line), line
    accepted, insert_published, profile, partner_published, summary = (
        moment(moment_text(line)) for line in steps
    )
    # Each state change follows the one that caused it; a "published" stamp follows its
    # event's creation, but may come after the consumer applied it (the relay stamps it
    # once the broker acknowledged the batch).
    assert accepted < profile < summary
    assert accepted <= insert_published and profile <= partner_published
    assert re.search(r"[+-][\d,.]+ ms  ce_id [0-9a-f-]{36}$", steps[1]), steps[1]
    assert re.search(r"[+-][\d,.]+ ms  ce_id [0-9a-f-]{36}$", steps[3]), steps[3]
    # (Between them, a line explaining a negative interval, when there is one.)
    assert lines[-1].startswith("complete: ")
    assert lines[-1].endswith(" ms from accepted to summary created")

    assert as_json.returncode == 0, as_json.stderr
    document: dict[str, Any] = json.loads(as_json.stdout)
    assert [s["step"] for s in document["steps"]] == PARTNER_STEPS
    assert {s["state"] for s in document["steps"]} == {"done"}
    assert all(isinstance(s["ms_since_previous"], float) for s in document["steps"][1:])
    assert document["steps"][1]["ce_id"] != document["steps"][3]["ce_id"]
    assert document["complete"] is True


def test_trace_of_a_user_signup_shows_three_steps(stack: Stack) -> None:
    user_id = sign_up(stack, "USER")
    wait_for_status(f"{stack.url('member')}/members/{user_id}")

    shown = signup_pipeline(stack, "trace", user_id)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "role USER" in lines[0]
    for n, (line, name) in enumerate(zip(lines[1:4], PARTNER_STEPS[:3], strict=True), start=1):
        assert re.match(rf"  {n} {name} +{MOMENT}", line), line
    assert lines[-1].startswith("complete: ")
    assert lines[-1].endswith(" ms from accepted to profile created")
    assert not any("summary" in line or "partner-created" in line for line in lines)


def test_trace_of_an_unknown_uuid_exits_1(stack: Stack) -> None:
    shown = signup_pipeline(stack, "trace", "00000000-0000-4000-8000-000000000000")

    assert shown.returncode == 1
    assert shown.stdout.startswith("no signup with uuid 00000000-0000-4000-8000-000000000000")


def test_status_of_a_drained_pipeline_shows_no_backlog_and_no_lag(stack: Stack) -> None:
    partner_id = sign_up(stack, "PARTNER")
    wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary")

    def lags(document: dict[str, Any]) -> list[int]:
        return [topic["total"] for topic in document["lag"].values()]

    def drained() -> dict[str, Any] | None:
        shown = signup_pipeline(stack, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        document: dict[str, Any] = json.loads(shown.stdout)
        return document if lags(document) == [0] * 6 else None

    # Offsets are committed just after the transactions: wait for the status to show it.
    document = wait_until(drained, 30, "signup-pipeline status shows no lag")

    assert document["unavailable"] == {}
    assert lags(document) == [0] * 6  # every topic of the three groups, auth-service's too
    assert set(document["consumer_groups"]) == {"member-service", "batch-service", "auth-service"}
    assert [box["unpublished"] for box in document["outbox"].values()] == [0, 0]
    assert document["throughput"]["signups_accepted"] >= 1
    assert document["throughput"]["summaries_created"] >= 1
    assert all(isinstance(count, int) for count in document["dead_letters"].values())
    screen = signup_pipeline(stack, "status")
    assert screen.returncode == 0
    assert "3 profile-insert → member-service     lag 0" in screen.stdout
    assert "9 profile-created → auth-service      lag 0" in screen.stdout
