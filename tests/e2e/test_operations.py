"""`signup-pipeline trace` and `status`, run as an operator would, against the contract's
processes on real PostgreSQL and a real broker."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from devtools.http_client import request, wait_for_status
from devtools.stack import Stack
from shared.messaging.pipeline import TOPICS
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-c", "from operations.cli import main; main()"]
MOMENT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"
PARTNER_STEPS = [
    "accepted",
    "profile-insert published",
    "profile created",
    "profile-created published",
    "account active",
    "partner-created published",
    "summary created",
]
DELETION_STEPS = [
    "account deleted",
    "profile-delete published",
    "profile erased",
    "partner-deleted published",
    "summary erased",
]
INTERVAL = r"[+-][\d,.]+ ms(?: from \d+)?"


def sign_up(stack: Stack, role: str, **overrides: Any) -> str:
    body = signup_body(role=role, **overrides)
    status, answer = request("POST", f"{stack.url('auth')}/auth/signup", body)
    assert status == 201, answer
    return str(answer["uuid"])


def wait_answered(stack: Stack, member_id: str) -> dict[str, Any]:
    """The signup's status once the auth worker applied the member service's answer."""

    def answered() -> dict[str, Any] | None:
        status, body = request("GET", f"{stack.url('auth')}/auth/signups/{member_id}")
        assert status == 200, body
        return dict(body) if body["status"] != "PENDING" else None

    found = wait_until(answered, what=f"signup {member_id} ACTIVE or REJECTED")
    assert found is not None
    return found


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
    assert wait_answered(stack, partner_id) == {"status": "ACTIVE"}

    shown = signup_pipeline(stack, "trace", partner_id)
    as_json = signup_pipeline(stack, "trace", partner_id, "--json")

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"signup {partner_id}  role PARTNER  trace ")
    assert re.search(r"trace [0-9a-f]{32}$", lines[0]), lines[0]
    steps = lines[1:8]
    for n, (line, name) in enumerate(zip(steps, PARTNER_STEPS, strict=True), start=1):
        assert re.match(rf" +{n} {name} +{MOMENT}", line), line
    accepted, insert_published, profile, answer_published, active, partner_published, summary = (
        moment(moment_text(line)) for line in steps
    )
    # Each state change follows the one that caused it; a "published" stamp follows its
    # event's creation, but may come after the consumer applied it (the relay stamps it
    # once the broker acknowledged the batch).
    assert accepted < profile < summary and profile < active
    assert accepted <= insert_published and profile <= partner_published
    assert profile <= answer_published
    for n in (1, 3, 5):
        assert re.search(rf"{INTERVAL}  ce_id [0-9a-f-]{{36}}$", steps[n]), steps[n]
    # (Between them, a line explaining a negative interval, when there is one.)
    assert lines[-1].startswith("complete: ")
    assert lines[-1].endswith(" ms from accepted to summary created")

    assert as_json.returncode == 0, as_json.stderr
    document: dict[str, Any] = json.loads(as_json.stdout)
    assert [s["step"] for s in document["steps"]] == PARTNER_STEPS
    assert {s["state"] for s in document["steps"]} == {"done"}
    assert all(isinstance(s["ms_since_previous"], float) for s in document["steps"][1:])
    assert len({document["steps"][n]["ce_id"] for n in (1, 3, 5)}) == 3
    assert document["complete"] is True


def test_trace_of_a_user_signup_shows_five_steps(stack: Stack) -> None:
    user_id = sign_up(stack, "USER")
    assert wait_answered(stack, user_id) == {"status": "ACTIVE"}

    shown = signup_pipeline(stack, "trace", user_id)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "role USER" in lines[0]
    for n, (line, name) in enumerate(zip(lines[1:6], PARTNER_STEPS[:5], strict=True), start=1):
        assert re.match(rf" +{n} {name} +{MOMENT}", line), line
    assert lines[-1].startswith("complete: ")
    assert lines[-1].endswith(" ms from accepted to account active")
    assert not any("summary" in line or "partner-created" in line for line in lines)


def test_trace_of_a_rejected_signup_shows_why_and_when_each_service_said_so(
    stack: Stack,
) -> None:
    holder = sign_up(stack, "USER", nickname="TraceNick")
    assert wait_answered(stack, holder) == {"status": "ACTIVE"}
    clash = sign_up(stack, "PARTNER", nickname="tracenick")
    assert wait_answered(stack, clash) == {"status": "REJECTED", "reason": "nickname_taken"}

    shown = signup_pipeline(stack, "trace", clash)
    as_json = signup_pipeline(stack, "trace", clash, "--json")

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert re.match(r" +2 profile-insert published +erased: ", lines[2]), lines[2]
    assert re.match(rf" +3 profile rejected +{MOMENT} .*reason nickname_taken$", lines[3])
    assert re.match(rf" +4 profile-rejected published +{MOMENT} .*ce_id ", lines[4]), lines[4]
    assert re.match(rf" +5 account rejected +{MOMENT} .*reason nickname_taken$", lines[5])
    assert lines[-1].endswith(" ms from accepted to account rejected")
    assert not any("summary" in line or "missing" in line for line in lines)
    document: dict[str, Any] = json.loads(as_json.stdout)
    assert [s["state"] for s in document["steps"]] == ["done", "erased", "done", "done", "done"]
    assert document["complete"] is True


def test_trace_of_a_deleted_partner_shows_its_erasure_in_every_service(stack: Stack) -> None:
    body = signup_body(role="PARTNER")
    status, answer = request("POST", f"{stack.url('auth')}/auth/signup", body)
    assert status == 201, answer
    partner_id = str(answer["uuid"])
    assert wait_answered(stack, partner_id) == {"status": "ACTIVE"}
    wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary")
    status, login = request(
        "POST",
        f"{stack.url('auth')}/auth/login",
        {"email": body["email"], "password": body["password"]},
    )
    assert status == 200, login
    deletion = urllib.request.Request(
        f"{stack.url('auth')}/auth/me",
        data=json.dumps({"password": body["password"]}).encode(),
        method="DELETE",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {login['accessToken']}",
        },
    )
    with urllib.request.urlopen(deletion, timeout=10) as response:
        assert response.status == 202
    wait_for_status(f"{stack.url('batch')}/partners/{partner_id}/summary", 404)

    def erased_everywhere() -> dict[str, Any] | None:
        shown = signup_pipeline(stack, "trace", partner_id, "--json")
        document: dict[str, Any] = json.loads(shown.stdout)
        return document if document["complete"] else None

    traced = wait_until(erased_everywhere, what="the deletion traced to batch's tombstone")
    assert traced is not None
    document = traced
    shown = signup_pipeline(stack, "trace", partner_id)

    assert [s["step"] for s in document["steps"]] == PARTNER_STEPS + DELETION_STEPS
    assert [s["state"] for s in document["steps"]][7:] == ["done"] * 5
    assert "missing" not in {s["state"] for s in document["steps"]}
    assert {s["state"] for s in document["steps"][1:7]} <= {"erased", "done", "cleaned_up"}
    deleted, delete_published, member_erased, partner_deleted, summary_erased = (
        moment(s["at"]) for s in document["steps"][7:]
    )
    assert deleted <= delete_published and member_erased <= partner_deleted
    assert deleted < member_erased < summary_erased
    lines = shown.stdout.splitlines()
    for n, (line, name) in enumerate(zip(lines[8:13], DELETION_STEPS, strict=True), start=8):
        assert re.match(rf" +{n} {name} +{MOMENT}", line), line
    assert lines[-1].endswith(" ms from accepted to summary erased")


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
        return document if lags(document) == [0] * len(TOPICS) else None

    # Offsets are committed just after the transactions: wait for the status to show it.
    document = wait_until(drained, 30, "signup-pipeline status shows no lag")

    assert document["unavailable"] == {}
    # every topic of the three groups: auth-service's and the six activity topics too
    assert lags(document) == [0] * len(TOPICS)
    assert set(document["consumer_groups"]) == {"member-service", "batch-service", "auth-service"}
    assert [box["unpublished"] for box in document["outbox"].values()] == [0, 0]
    assert document["throughput"]["signups_accepted"] >= 1
    assert document["throughput"]["summaries_created"] >= 1
    assert all(isinstance(count, int) for count in document["dead_letters"].values())
    screen = signup_pipeline(stack, "status")
    assert screen.returncode == 0
    assert "3 profile-insert → member-service     lag 0" in screen.stdout
    assert "9 profile-created → auth-service      lag 0" in screen.stdout
