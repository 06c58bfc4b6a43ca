"""Faults injected into real processes, a real broker and real PostgreSQL. Each test ends
with a reconciliation across the three databases: every accepted signup has exactly one
profile of its role, exactly its styles and, for a partner, exactly one summary; nothing
else exists."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from kafka import KafkaProducer

from devtools.http_client import request, wait_for_status
from shared.messaging.kafka import read_topic
from tests.faults.conftest import FaultStack
from tests.faults.harness import (
    CONSUMED,
    Signup,
    activity_differences,
    dead_letters,
    inbox_against_topics,
    wait_reconciled,
)
from tests.pipeline_checks import duplicates
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

BATCH_TOPICS = sorted({topic for group, _, topic in CONSUMED if group == "batch-service"})


def assert_reconciled(faults: FaultStack, label: str, timeout: float = 60.0) -> None:
    """Every kept signup exists exactly once downstream and its account is ACTIVE; every
    deleted one is gone everywhere (its account DELETED, tombstoned); each event on each
    consumed topic was claimed exactly once by its consumer's inbox; and nothing went to
    a dead-letter topic but what the tests put there. (Primary keys alone prevent doubled
    rows: a broken inbox shows in the inbox counts and as duplicates dead-lettered on
    the keys.)"""
    with faults.activity.paused():
        result = wait_reconciled(faults.stack, faults.registry, faults.real_urls, timeout)
        print(f"\n[{label}] {result.line()}")
        assert result.problems == [], (result.problems, result.line())
        assert result.unpublished == 0
        servers = (faults.stack.bootstrap_servers or "").split(",")
        assert inbox_against_topics(faults.real_urls, servers) == {}
        for _, _, topic in CONSUMED:
            dead = dead_letters(faults.stack, topic)
            assert len(dead) == faults.dead_lettered[topic], [
                (record.key, record.header("dlt-error")) for record in dead
            ]
        # Partners' counters: recomputed from every activity event in the topics.
        report, differences = activity_differences(faults.stack, faults.real_urls)
        print(
            f"[{label}] reconcile batch: {report.partners_checked} partners, "
            f"{report.events_read} events, {len(differences)} differences"
        )
        assert report.lag == 0
        assert differences == []
        assert report.events_read > 0


def duplicates_counted(faults: FaultStack, worker: str = "member-worker") -> float:
    """How many profile-insert records `worker` (this run of it) skipped as duplicates."""
    return duplicates(faults.stack.health_ports[worker], "profile-insert")


def restart(faults: FaultStack, name: str, **env: str) -> None:
    process = faults.stack.processes[name]
    if process.running():
        assert process.stop(15) == 0
    faults.stack.spawn(name, extra_env=env)
    faults.stack.wait_ready(60, [name])


def test_broker_stopped_during_a_burst_every_signup_accepted_and_all_arrive_after(
    faults: FaultStack,
) -> None:
    try:
        made = faults.registry.burst(faults.stack, 30, during=faults.broker.pause, at=9)
        # The fault itself, not a wait for something: the broker stays stopped a while
        # after the burst, so the relay and the workers keep failing to reach it.
        time.sleep(5)
    finally:
        faults.broker.resume()

    assert len(made) == 30  # all 201, 20 of them while the broker was stopped
    assert_reconciled(faults, "broker stopped", timeout=90)


def test_auth_killed_between_commit_and_publish_sends_the_event_after_restart(
    faults: FaultStack,
) -> None:
    faults.broker.pause()
    try:
        faults.registry.burst(faults.stack, 5)  # committed; the relay cannot publish
        faults.stack.processes["auth-api"].signal(signal.SIGKILL)
        faults.stack.processes["auth-api"].wait(10)
    finally:
        faults.broker.resume()
    faults.stack.spawn("auth-api")
    faults.stack.wait_ready(60, ["auth-api"])

    assert_reconciled(faults, "auth SIGKILL before publish")


def test_member_worker_killed_after_db_commit_before_offset_commit_changes_nothing_on_redelivery(
    faults: FaultStack,
) -> None:
    restart(faults, "member-worker", SIGNUP_PIPELINE_FAILPOINTS="after-db-commit=kill@8")
    faults.registry.burst(faults.stack, 20)
    assert faults.stack.processes["member-worker"].wait(60) == -signal.SIGKILL
    restart(faults, "member-worker")

    assert_reconciled(faults, "member SIGKILL after DB commit")
    # The killed worker's last transaction committed but its offsets did not: the new
    # worker got those records again and its inbox skipped them.
    assert duplicates_counted(faults) >= 1


def test_batch_worker_killed_after_db_commit_with_activity_flowing_counts_nothing_twice(
    faults: FaultStack,
) -> None:
    """The batch worker dies between its DB commit and its offset commit, with a poll of
    activity folded into that transaction: the new worker gets those records again, its
    inbox skips them, and not one counter moved twice."""
    restart(faults, "batch-worker", SIGNUP_PIPELINE_FAILPOINTS="after-db-commit=kill@5")
    faults.registry.burst(faults.stack, 10)
    assert faults.stack.processes["batch-worker"].wait(60) == -signal.SIGKILL
    restart(faults, "batch-worker")

    assert_reconciled(faults, "batch SIGKILL after DB commit")
    # Its last transaction committed but its offsets did not: the records came again.
    port = faults.stack.health_ports["batch-worker"]
    assert sum(duplicates(port, topic) for topic in BATCH_TOPICS) >= 1


def test_member_and_batch_databases_unreachable_for_10s_under_load_nothing_dead_lettered(
    faults: FaultStack,
) -> None:
    def cut() -> None:
        for proxy in faults.proxies.values():
            proxy.cut()
        threading.Timer(10, lambda: [p.restore() for p in faults.proxies.values()]).start()

    faults.registry.burst(faults.stack, 40, during=cut, at=4)
    # The workers must live through the whole outage: look once it is over.
    wait_until(
        lambda: not any(proxy.is_cut() for proxy in faults.proxies.values()),
        30,
        "the databases are reachable again",
    )
    for name in ("member-worker", "batch-worker"):
        assert faults.stack.processes[name].running(), name

    assert_reconciled(faults, "databases unreachable 10 s", timeout=90)
    worker_log = faults.stack.processes["member-worker"].log_path.read_text()
    assert "transient failure" in worker_log  # the outage was real, and was waited out
    assert dead_letters(faults.stack, "profile-insert") == []
    assert dead_letters(faults.stack, "partner-created") == []


def test_member_and_batch_workers_scaled_1_to_3_to_1_during_a_burst_lose_and_double_nothing(
    faults: FaultStack,
) -> None:
    stack = faults.stack

    extra = [f"{kind}-worker-{n}" for kind in ("member", "batch") for n in (2, 3)]

    def scale_up() -> None:
        for name in extra:
            stack.spawn(name.rsplit("-", 1)[0], instance=name)

    faults.registry.burst(stack, 25, during=scale_up, at=5)
    stack.wait_ready(60, extra)
    faults.registry.burst(stack, 25)
    for name in extra:
        assert stack.processes.pop(name).stop(15) == 0
    faults.registry.burst(stack, 15)

    assert_reconciled(faults, "scale 1->3->1", timeout=90)


def test_same_event_delivered_five_times_is_applied_once(faults: FaultStack) -> None:
    partner = faults.registry.sign_up(faults.stack, 0, role="PARTNER")
    assert_reconciled(faults, "before redelivery")
    servers = faults.stack.bootstrap_servers or ""
    original = next(
        r
        for r in read_topic(servers.split(","), "profile-insert")
        if r.key == partner.uuid.encode()
    )
    before = duplicates_counted(faults)
    producer = KafkaProducer(bootstrap_servers=servers)
    for _ in range(5):
        producer.send("profile-insert", original.value, original.key, headers=original.headers)
    producer.flush()
    producer.close()
    # Each copy is skipped by the inbox and counted; one that reached the handler again
    # would fail on the primary key and be dead-lettered instead, uncounted.
    wait_until(
        lambda: duplicates_counted(faults) >= before + 5,
        30,
        "the member worker counts the 5 copies as duplicates",
    )

    assert duplicates_counted(faults) == before + 5
    assert_reconciled(faults, "same event x5")


def test_twenty_concurrent_signups_with_one_email_make_one_account_and_one_event(
    faults: FaultStack,
) -> None:
    email = f"race-{time.time_ns()}@example.com"
    body = signup_body(email=email, role="USER", favoriteStyles=[3])
    results: list[tuple[int, dict[str, str]]] = []

    def attempt(n: int) -> None:
        variant = dict(body, email=email.upper() if n % 2 else email)
        results.append(request("POST", f"{faults.stack.url('auth')}/auth/signup", variant))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: 19}
    [winner] = [answer["uuid"] for status, answer in results if status == 201]
    faults.registry.accepted.append(Signup(winner, "USER", (3,)))
    assert_reconciled(faults, "20 concurrent signups, one email")
    events = [
        r
        for r in read_topic((faults.stack.bootstrap_servers or "").split(","), "profile-insert")
        if r.key == winner.encode()
    ]
    assert len(events) == 1


def run_cli(faults: FaultStack, *args: str) -> str:
    env = {"KAFKA_BOOTSTRAP_SERVERS": faults.stack.bootstrap_servers or ""}
    result = subprocess.run(
        [sys.executable, "-c", "from operations.cli import main; main()", *args],
        env={**faults.stack.env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_poison_record_between_good_ones_is_dead_lettered_and_replayed_once_after_a_fix(
    faults: FaultStack,
) -> None:
    restart(faults, "member-worker", SIGNUP_PIPELINE_FAILPOINTS="handle=raise~poison-bug")
    before = faults.registry.burst(faults.stack, 5)
    status, poison = request(
        "POST",
        f"{faults.stack.url('auth')}/auth/signup",
        signup_body(role="PARTNER", nickname="poison-bug", favoriteStyles=[9]),
    )
    assert status == 201
    after = faults.registry.burst(faults.stack, 5)
    wait_until(
        lambda: dead_letters(faults.stack, "profile-insert"),
        30,
        "the poison record reaches the DLT",
    )
    faults.dead_lettered["profile-insert"] += 1
    for good in before + after:  # the ones after the poison flowed past it
        wait_for_status(f"{faults.stack.url('member')}/members/{good.uuid}")
    listing = run_cli(faults, "dlt", "list", "profile-insert")
    assert "1 dead-lettered record(s)" in listing
    assert "InjectedFault" in listing
    assert len(before + after) == 10

    restart(faults, "member-worker")  # the fix is deployed
    faults.registry.accepted.append(Signup(poison["uuid"], "PARTNER", (9,)))
    assert "replayed 1 record(s)" in run_cli(faults, "dlt", "replay", "profile-insert")
    assert "replayed 1 record(s)" in run_cli(faults, "dlt", "replay", "profile-insert")

    assert_reconciled(faults, "poison replayed twice after the fix")  # the DLT holds just 1
    # The first replay was applied, the second skipped by the inbox as a duplicate.
    wait_until(lambda: duplicates_counted(faults) >= 1, 30, "the second replay is a duplicate")


def test_sigterm_during_a_burst_exits_cleanly_and_loses_nothing(faults: FaultStack) -> None:
    def terminate() -> None:
        for name in ("member-worker", "batch-worker"):
            faults.stack.processes[name].terminate()

    faults.registry.burst(faults.stack, 30, during=terminate, at=10)
    codes = {n: faults.stack.processes[n].wait(15) for n in ("member-worker", "batch-worker")}
    assert codes == {"member-worker": 0, "batch-worker": 0}
    for name in ("member-worker", "batch-worker"):
        faults.stack.spawn(name)
    faults.stack.wait_ready(60, ["member-worker", "batch-worker"])

    assert_reconciled(faults, "SIGTERM during a burst")
    assert dead_letters(faults.stack, "partner-created") == []
