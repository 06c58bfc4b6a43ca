"""What an operator sees of a real run: every process's /metrics counts exactly what the
test did, the logs are JSON lines that follow one trace through the three services,
and no log line carries a password, a hash, an email or a phone number."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.http_client import request
from devtools.stack import PROCESSES, Stack
from shared.messaging.pipeline import TOPICS
from tests.e2e.conftest import running_stack
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CALLER_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> Iterator[Stack]:
    """Two gunicorn workers per API (so /metrics must sum processes), JSON logs at DEBUG
    (so the workers log every event they handle)."""
    yield from running_stack(
        tmp_path_factory,
        postgres,
        kafka_bootstrap,
        "obs",
        api_workers=2,
        extra_env={"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"},
    )


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def worker_url(stack: Stack, name: str) -> str:
    return f"http://127.0.0.1:{stack.health_ports[name]}"


@pytest.fixture(scope="module")
def run(stack: Stack) -> dict[str, Any]:
    """Sign up 4 USERs and 3 PARTNERs (one with the caller's traceparent), plus one taken
    email (409) and one invalid body (400); wait until every event has landed."""
    bodies = [signup_body(role="USER") for _ in range(4)] + [
        signup_body(role="PARTNER") for _ in range(3)
    ]
    members, partners = [], []
    for number, body in enumerate(bodies):
        headers = {"Content-Type": "application/json"}
        if number == len(bodies) - 1:
            headers["traceparent"] = CALLER_TRACE
        call = urllib.request.Request(
            f"{stack.url('auth')}/auth/signup", json.dumps(body).encode(), headers, method="POST"
        )
        with urllib.request.urlopen(call, timeout=10) as response:
            assert response.status == 201
            member_id = json.loads(response.read())["uuid"]
        members.append(member_id)
        if body["role"] == "PARTNER":
            partners.append(member_id)
    taken = request("POST", f"{stack.url('auth')}/auth/signup", bodies[0])
    invalid = request("POST", f"{stack.url('auth')}/auth/signup", {"email": "nope"})
    assert (taken[0], invalid[0]) == (409, 400)

    batch_worker = worker_url(stack, "batch-worker")

    def all_summaries_applied() -> bool:
        samples = scrape(batch_worker)
        return value(samples, "signup_events_applied_total", topic="partner-created") >= 3

    wait_until(all_summaries_applied)
    reads = {200: 0, 404: 0}
    for member_id in members:
        status, _ = request("GET", f"{stack.url('member')}/members/{member_id}")
        reads[status] += 1
    status, _ = request("GET", f"{stack.url('member')}/members/{'0' * 8}-0000-4000-8000-{'0' * 12}")
    reads[status] += 1
    return {"bodies": bodies, "members": members, "partners": partners, "reads": reads}


def test_auth_metrics_count_the_signups_whichever_gunicorn_worker_answers(
    stack: Stack, run: dict[str, Any]
) -> None:
    route = {"route": "/auth/signup", "method": "POST"}
    # Several scrapes land on both workers; each must show the sum of both.
    for _ in range(6):
        samples = scrape(stack.url("auth"))
        assert value(samples, "signup_http_requests_total", status="201", **route) == 7
        assert value(samples, "signup_http_requests_total", status="409", **route) == 1
        assert value(samples, "signup_http_requests_total", status="400", **route) == 1
        assert value(samples, "signup_http_request_duration_seconds_count", **route) == 9
        assert value(samples, "signup_events_published_total", topic="profile-insert") == 7
        assert value(samples, "signup_outbox_backlog", topic="profile-insert") == 0


def test_member_worker_metrics_count_each_event_once(stack: Stack, run: dict[str, Any]) -> None:
    samples = scrape(worker_url(stack, "member-worker"))
    topic = {"topic": "profile-insert"}
    assert value(samples, "signup_events_consumed_total", **topic) == 7
    assert value(samples, "signup_events_applied_total", **topic) == 7
    assert value(samples, "signup_events_duplicate_total", **topic) == 0
    assert value(samples, "signup_events_dead_lettered_total", **topic) == 0
    assert value(samples, "signup_event_handler_duration_seconds_count", **topic) == 7
    assert value(samples, "signup_events_published_total", topic="partner-created") == 3
    assert value(samples, "signup_outbox_backlog", topic="partner-created") == 0

    def lags() -> list[float]:
        now = scrape(worker_url(stack, "member-worker"))
        return [v for (n, _), v in now.items() if n == "signup_consumer_lag"]

    # One series per assigned partition of every topic the group reads (profile-insert
    # and profile-delete), refreshed once a second from the last fetch (and dropped while
    # a rebalance leaves the worker without partitions).
    read = sum(t.partitions for t in TOPICS if t.consumer_group == "member-service")
    wait_until(lambda: len(lags()) == read == 12, timeout=15)
    assert sum(lags()) == 0


def test_batch_worker_and_read_api_metrics_count_what_happened(
    stack: Stack, run: dict[str, Any]
) -> None:
    batch = scrape(worker_url(stack, "batch-worker"))
    assert value(batch, "signup_events_applied_total", topic="partner-created") == 3
    assert value(batch, "signup_events_consumed_total", topic="partner-created") == 3

    member_api = scrape(stack.url("member"))
    route = {"route": "/members/<member_id>", "method": "GET"}
    for status, count in run["reads"].items():
        assert value(member_api, "signup_http_requests_total", status=str(status), **route) == count


def process_logs(stack: Stack) -> dict[str, list[str]]:
    return {
        path.stem: path.read_text(errors="replace").splitlines()
        for path in sorted(stack.log_dir.glob("*.log"))
        if path.stem != "broker"
    }


def test_every_log_line_is_json_and_no_line_carries_personal_data(
    stack: Stack, run: dict[str, Any]
) -> None:
    logs = process_logs(stack)
    assert set(PROCESSES) <= set(logs)
    secrets = [
        secret
        for body in run["bodies"]
        for secret in (body["email"], body["password"], body["phone"], body["name"])
    ] + ["$argon2id$"]
    for name, lines in logs.items():
        assert lines, f"{name} logged nothing"
        for line in lines:
            document = json.loads(line)  # raises on a line that is not JSON
            assert {"time", "level", "service", "role", "message"} <= set(document), line
            leaked = [secret for secret in secrets if secret in line]
            assert not leaked, f"{name} logged {leaked}: {line}"


def test_one_trace_id_follows_a_partner_signup_through_the_logs_of_all_three_services(
    stack: Stack, run: dict[str, Any]
) -> None:
    trace_id = CALLER_TRACE.split("-")[1]
    partner = run["members"][-1]
    logs = process_logs(stack)
    traced = {
        name: [json.loads(line) for line in lines if trace_id in line]
        for name, lines in logs.items()
    }
    [accepted] = [d for d in traced["auth-api"] if d["message"].startswith("POST /auth/signup 201")]
    assert accepted["member_uuid"] == partner
    assert all(d["trace_id"] == trace_id for lines in traced.values() for d in lines)
    member_lines = [d for d in traced["member-worker"] if d.get("member_uuid") == partner]
    batch_lines = [d for d in traced["batch-worker"] if d.get("member_uuid") == partner]
    assert member_lines and batch_lines
    assert member_lines[0]["ce_id"] != batch_lines[0]["ce_id"]  # two events, one trace
    assert {d["service"] for d in member_lines} == {"member"}
    assert {d["role"] for d in batch_lines} == {"worker"}


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_metrics_survive_a_gunicorn_worker_dying_and_a_reload(
    stack: Stack, run: dict[str, Any]
) -> None:
    """Runs last: it replaces the auth API's workers."""
    master = stack.processes["auth-api"].pid
    assert master is not None
    workers = children(master)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGTERM)  # gunicorn starts a replacement
    wait_until(lambda: len(set(children(master)) - set(workers)) == 1, timeout=20)
    os.kill(master, signal.SIGHUP)  # a graceful reload replaces every worker
    wait_until(lambda: not set(children(master)) & set(workers), timeout=20)
    wait_until(lambda: len(children(master)) == 2, timeout=20)

    assert request("POST", f"{stack.url('auth')}/auth/signup", signup_body())[0] == 201
    route = {"route": "/auth/signup", "method": "POST"}
    for _ in range(6):  # every answer, from any new worker, still sums every count
        samples = scrape(stack.url("auth"))
        assert value(samples, "signup_http_requests_total", status="201", **route) == 8
        assert value(samples, "signup_http_requests_total", status="409", **route) == 1
