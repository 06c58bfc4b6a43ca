"""Fault injection against real processes: a TCP proxy that can cut a database off, a
registry of every accepted signup (and of those deleted right after), and the
reconciliation every fault test ends with."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text

from devtools.broker import free_port
from devtools.http_client import request
from devtools.simulate import ActivitySimulator, produce
from devtools.stack import Stack
from operations.reconcile import reconcile_batch
from shared.messaging.kafka import read_topic
from shared.messaging.pipeline import ACTIVITY_TOPICS
from tests.pipeline_checks import wait_caught_up
from tests.unit.pipeline_harness import signup_body
from tests.waiting import wait_until


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a target; `cut()` drops every connection and refuses
    new ones until `restore()`: the database is unreachable, as after a network split."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._down = threading.Event()
        self._closed = threading.Event()
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._links |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
                with self._lock:
                    self._links.discard(end)

    def cut(self) -> None:
        """Drop all connections now and refuse new ones."""
        self._down.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)

    def is_cut(self) -> bool:
        return self._down.is_set()

    def restore(self) -> None:
        """Accept connections again."""
        self._down.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()


@dataclass(frozen=True)
class Signup:
    """An accepted signup: what must exist downstream (nothing, once it is deleted)."""

    uuid: str
    role: str
    styles: tuple[int, ...]
    email: str = ""
    password: str = ""


def bearer_request(
    method: str, url: str, token: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request carrying `Authorization: Bearer token`."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def delete_account(auth_url: str, email: str, password: str) -> None:
    """Log in as `email` and DELETE /auth/me at once; assert both succeed."""
    body = {"email": email, "password": password}
    status, answer = request("POST", f"{auth_url}/auth/login", body, timeout=30)
    assert status == 200, ("login", status, answer)
    status, answer = bearer_request(
        "DELETE", f"{auth_url}/auth/me", answer["accessToken"], {"password": password}
    )
    assert status == 202, ("DELETE /auth/me", status, answer)


@dataclass
class Registry:
    """Every signup the module's stack accepted (201), across its tests, and those of
    them deleted since (DELETE /auth/me answered 202). With `delete_every` n > 0, every
    n-th signup of a burst is deleted right after it was accepted (login, then DELETE
    /auth/me), so each fault also meets deletions racing their own signup."""

    accepted: list[Signup] = field(default_factory=list)
    deleted: list[Signup] = field(default_factory=list)
    delete_every: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sign_up(self, stack: Stack, number: int, **overrides: Any) -> Signup:
        """POST one signup; record it if accepted; assert it was."""
        role = overrides.pop("role", "PARTNER" if number % 3 == 0 else "USER")
        styles = overrides.pop("favoriteStyles", [1 + number % 7, 20 + number % 3])
        body = signup_body(role=role, favoriteStyles=styles, **overrides)
        status, answer = request("POST", f"{stack.url('auth')}/auth/signup", body, timeout=30)
        assert status == 201, (status, answer)
        signup = Signup(answer["uuid"], role, tuple(styles), body["email"], body["password"])
        self.record(signup)
        return signup

    def record(self, signup: Signup) -> None:
        with self.lock:
            self.accepted.append(signup)

    def deletes(self, number: int) -> bool:
        """Whether the `number`-th signup of a burst is to be deleted right after."""
        return self.delete_every > 0 and number % self.delete_every == self.delete_every - 1

    def delete(self, stack: Stack, signup: Signup) -> None:
        """Delete an accepted signup's account (login, DELETE /auth/me); record it."""
        delete_account(stack.url("auth"), signup.email, signup.password)
        with self.lock:
            self.deleted.append(signup)

    def burst(self, stack: Stack, count: int, during: Any = None, at: int = -1) -> list[Signup]:
        """`count` signups one after another; `during()` runs after the `at`-th. Those
        `deletes()` picks are deleted right after their signup (and still returned)."""
        made = []
        for number in range(count):
            signup = self.sign_up(stack, number)
            made.append(signup)
            if self.deletes(number):
                self.delete(stack, signup)
            if number == at and during is not None:
                during()
        return made

    def kept(self) -> list[Signup]:
        """The accepted signups not deleted."""
        with self.lock:
            gone = {s.uuid for s in self.deleted}
            return [s for s in self.accepted if s.uuid not in gone]


def _scalar_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        engine.dispose()


@dataclass
class Reconciliation:
    """What the three databases hold against what was accepted (and deleted)."""

    accepted: int
    deleted: int
    partners_expected: int
    users: int
    partners: int
    styles: int
    summaries: int
    auth_members: int
    member_tombstones: int
    batch_tombstones: int
    unpublished: int
    problems: list[str]

    def line(self) -> str:
        return (
            f"accepted={self.accepted} deleted={self.deleted} users={self.users} "
            f"partners={self.partners} styles={self.styles} summaries={self.summaries} "
            f"(expected partners/summaries {self.partners_expected}) "
            f"auth_members={self.auth_members} tombstones member={self.member_tombstones} "
            f"batch={self.batch_tombstones} unpublished_outbox={self.unpublished}"
        )


def reconcile(stack: Stack, registry: Registry, real_urls: dict[str, str]) -> Reconciliation:
    """Compare every accepted signup with the three databases, row for row: a kept one
    has exactly one profile of its role, exactly its styles, a partner exactly one
    summary, and its account is ACTIVE (the member service's answer was applied); a
    deleted one has none of these, its account is DELETED, the member service holds its
    tombstone, and the batch service a tombstone for no one else. Nothing else exists."""
    urls = real_urls
    users = _scalar_rows(urls["member"], "SELECT uuid FROM users")
    partners = _scalar_rows(urls["member"], "SELECT uuid FROM partners")
    styles = _scalar_rows(urls["member"], "SELECT member_uuid, style_id FROM favorite_styles")
    member_tombstones = _scalar_rows(urls["member"], "SELECT uuid FROM deleted_members")
    summaries = _scalar_rows(urls["batch"], "SELECT partner_id FROM partner_summaries")
    batch_tombstones = _scalar_rows(urls["batch"], "SELECT partner_id FROM deleted_partners")
    members = _scalar_rows(urls["auth"], "SELECT uuid, status FROM members")
    unpublished = _scalar_rows(
        urls["auth"], "SELECT count(*) FROM outbox WHERE published_at IS NULL"
    )
    with registry.lock:
        accepted = list(registry.accepted)
        deleted = list(registry.deleted)
    gone = {s.uuid for s in deleted}
    kept = [s for s in accepted if s.uuid not in gone]
    problems: list[str] = []
    expect_users = {s.uuid for s in kept if s.role == "USER"}
    expect_partners = {s.uuid for s in kept if s.role == "PARTNER"}
    expect_styles = Counter((s.uuid, style) for s in kept for style in s.styles)
    if Counter(u for (u,) in users) != Counter(expect_users):
        problems.append("users differ from kept USER signups")
    if Counter(p for (p,) in partners) != Counter(expect_partners):
        problems.append("partners differ from kept PARTNER signups")
    if Counter((m, int(s)) for m, s in styles) != expect_styles:
        problems.append("favorite styles differ")
    if Counter(p for (p,) in summaries) != Counter(expect_partners):
        problems.append("partner summaries differ from kept PARTNER signups")
    if Counter(m for m, _ in members) != Counter(s.uuid for s in accepted):
        problems.append("auth members differ from accepted signups")
    status = dict(members)
    not_active = [s.uuid for s in kept if status.get(s.uuid) != "ACTIVE"]
    if not_active:
        problems.append(f"{len(not_active)} kept accounts not ACTIVE, e.g. {not_active[:3]}")
    not_deleted = [s.uuid for s in deleted if status.get(s.uuid) != "DELETED"]
    if not_deleted:
        problems.append(f"{len(not_deleted)} deleted accounts not DELETED: {not_deleted[:3]}")
    if Counter(u for (u,) in member_tombstones) != Counter(gone):
        problems.append("member tombstones differ from deleted signups")
    # A partner deleted before its profile was made (its insert purged from the outbox,
    # or consumed after the deletion) never reached the batch service: no tombstone.
    deleted_partners = {s.uuid for s in deleted if s.role == "PARTNER"}
    if not {p for (p,) in batch_tombstones} <= deleted_partners:
        problems.append("batch tombstones for partners never deleted")
    return Reconciliation(
        accepted=len(accepted),
        deleted=len(deleted),
        partners_expected=len(expect_partners),
        users=len(users),
        partners=len(partners),
        styles=len(styles),
        summaries=len(summaries),
        auth_members=len(members),
        member_tombstones=len(member_tombstones),
        batch_tombstones=len(batch_tombstones),
        unpublished=int(unpublished[0][0]),
        problems=problems,
    )


# Every topic a service consumes, with the group and the database whose inbox claims it.
CONSUMED = (
    ("member-service", "member", "profile-insert"),
    ("member-service", "member", "profile-delete"),
    ("batch-service", "batch", "partner-created"),
    ("batch-service", "batch", "partner-deleted"),
    ("auth-service", "auth", "profile-created"),
    ("auth-service", "auth", "profile-rejected"),
    *(("batch-service", "batch", topic.name) for topic in ACTIVITY_TOPICS),
)


def wait_reconciled(
    stack: Stack, registry: Registry, real_urls: dict[str, str], timeout: float = 60.0
) -> Reconciliation:
    """Reconcile until nothing is missing (or `timeout`), then wait until every consumer
    group has committed each of its topics to the end (every redelivery handled, so
    anything doubled late shows too) and reconcile once more. Returns the final
    reconciliation."""
    deadline = time.monotonic() + timeout
    try:
        wait_until(
            lambda: not reconcile(stack, registry, real_urls).problems,
            timeout,
            "every accepted signup arrives",
        )
    except AssertionError:
        pass  # the final reconciliation below reports what is missing
    else:
        assert stack.bootstrap_servers
        for group, _, topic in CONSUMED:
            wait_caught_up(
                stack.bootstrap_servers, {group: topic}, max(deadline - time.monotonic(), 30.0)
            )
    return reconcile(stack, registry, real_urls)


def inbox_counts(real_urls: dict[str, str]) -> dict[str, int]:
    """Inbox rows: the member service's for profile-insert, the batch service's for
    partner-created (one per event applied; a skipped inbox leaves none)."""
    counts = {}
    for service, topic in (("member", "profile-insert"), ("batch", "partner-created")):
        [(count,)] = _scalar_rows(
            real_urls[service],
            f"SELECT count(*) FROM processed_events WHERE topic = '{topic}'",
        )
        counts[topic] = int(count)
    return counts


def inbox_against_topics(
    real_urls: dict[str, str], servers: list[str], keys: Collection[str] | None = None
) -> dict[str, str]:
    """For every consumed topic whose inbox differs from it: the inbox rows' event ids
    against the distinct ce_ids of the topic's records (copies of a record share one),
    in words. Each event on a topic claimed once by its consumer's inbox, and no claim
    without an event: {} when all agree. Only for a broker that kept every record. With
    `keys` (a broker shared with other stacks), only the records keyed by one of them
    count, and only the inbox rows of those records' ids or of no record at all."""
    differences = {}
    for _, service, topic in CONSUMED:
        claimed = Counter(
            str(event_id)
            for (event_id,) in _scalar_rows(
                real_urls[service],
                f"SELECT event_id FROM processed_events WHERE topic = '{topic}'",
            )
        )
        records = read_topic(servers, topic, timeout=10)
        sent = {str(r.header("ce_id")) for r in records}
        if keys is not None:
            wanted = {key.encode() for key in keys}
            others = {str(r.header("ce_id")) for r in records if r.key not in wanted}
            sent -= others
            claimed = Counter({i: n for i, n in claimed.items() if i not in others})
        if set(claimed) != sent or any(n > 1 for n in claimed.values()):
            differences[topic] = (
                f"{sum(claimed.values())} inbox rows ({len(claimed)} ids), {len(sent)} events, "
                f"{len(set(claimed) - sent)} claimed not sent, {len(sent - set(claimed))} "
                "sent not claimed"
            )
    return differences


def inbox_within_bounds(registry: Registry, real_urls: dict[str, str]) -> list[str]:
    """Inbox counts against the signups, for when the topics no longer hold every event:
    every kept signup's profile-insert and answer claimed, a deleted one's at most once
    (its insert may have been purged from the outbox before it was sent), one deletion
    claimed per deleted signup; what is out of bounds, in words."""
    with registry.lock:
        accepted = list(registry.accepted)
        deleted = list(registry.deleted)
    gone = {s.uuid for s in deleted}
    kept = [s for s in accepted if s.uuid not in gone]
    partners = [s for s in accepted if s.role == "PARTNER"]
    kept_partners = [s for s in kept if s.role == "PARTNER"]
    bounds = {
        ("member", "profile-insert"): (len(kept), len(accepted)),
        ("member", "profile-delete"): (len(deleted), len(deleted)),
        ("auth", "profile-created"): (len(kept), len(accepted)),
        ("batch", "partner-created"): (len(kept_partners), len(partners)),
        ("batch", "partner-deleted"): (0, len(partners) - len(kept_partners)),
    }
    problems = []
    for (service, topic), (low, high) in bounds.items():
        [(count,)] = _scalar_rows(
            real_urls[service], f"SELECT count(*) FROM processed_events WHERE topic = '{topic}'"
        )
        if not low <= int(count) <= high:
            problems.append(f"{service} inbox holds {count} {topic}, not {low} to {high}")
    return problems


def dead_letters(stack: Stack, topic: str) -> list[Any]:
    """Records in `topic`'s DLT."""
    assert stack.bootstrap_servers
    return read_topic((stack.bootstrap_servers or "").split(","), f"{topic}.DLT", timeout=5)


class ActivityFeed:
    """Partners' activity flowing through every fault: a thread that keeps sending rounds
    of simulated activity (devtools.simulate) for the module's PARTNER signups, deleted
    ones included (their late events must be dropped), plus a partner that never signs
    up (its events wait forever). Sends that fail while a fault lasts are logged and the
    feed goes on: whatever reached the topics is what reconciliation recomputes from.

    `paused()`: a block during which nothing is sent (reconciliation needs the topics
    still)."""

    def __init__(self, stack: Stack, registry: Registry, per_round: int = 60) -> None:
        self._stack = stack
        self._registry = registry
        self._per_round = per_round
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self.sent = 0
        self.failed_rounds = 0
        self.never_created = str(uuid.uuid4())
        self._thread = threading.Thread(target=self._run, name="activity-feed", daemon=True)

    def start(self) -> ActivityFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        self._thread.join(60)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._go.clear()
        self._idle.wait(60)
        try:
            yield
        finally:
            self._idle.clear()
            self._go.set()

    def _run(self) -> None:
        servers = (self._stack.bootstrap_servers or "").split(",")
        round_number = 0
        while not self._stop.is_set():
            if not self._go.is_set():
                self._idle.set()
                self._go.wait()
                continue
            with self._registry.lock:
                partners = [s.uuid for s in self._registry.accepted if s.role == "PARTNER"]
            round_number += 1
            simulator = ActivitySimulator([*partners, self.never_created], seed=round_number)
            try:
                sent = produce(servers, simulator.events(self._per_round), keep_events=False)
                self.sent += sent.count
            except Exception as exc:  # noqa: BLE001 - a fault may be on; go on after it
                self.failed_rounds += 1
                print(f"activity feed: round {round_number} failed: {exc}")
            self._stop.wait(0.2)


def activity_differences(stack: Stack, real_urls: dict[str, str]) -> tuple[Any, list[str]]:
    """`signup-pipeline reconcile batch` on the module's broker and batch database (the
    real one, not its cuttable proxy): every partner's counters recomputed from the events
    in the topics against the stored summaries, once the batch service consumed them all.
    (report, its differences as lines)."""
    servers = (stack.bootstrap_servers or "").split(",")
    report = reconcile_batch(servers, real_urls["batch"], wait=90)
    return report, [str(difference) for difference in report.differences]
