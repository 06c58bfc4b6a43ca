"""Fault injection against real processes: a TCP proxy that can cut a database off, a
registry of every accepted signup, and the reconciliation every fault test ends with."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text

from devtools.broker import free_port
from devtools.http_client import request
from devtools.stack import Stack
from shared.messaging.kafka import read_topic
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
    """An accepted signup: what must exist downstream."""

    uuid: str
    role: str
    styles: tuple[int, ...]


@dataclass
class Registry:
    """Every signup the module's stack accepted (201), across its tests."""

    accepted: list[Signup] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sign_up(self, stack: Stack, number: int, **overrides: Any) -> Signup:
        """POST one signup; record it if accepted; assert it was."""
        role = overrides.pop("role", "PARTNER" if number % 3 == 0 else "USER")
        styles = overrides.pop("favoriteStyles", [1 + number % 7, 20 + number % 3])
        body = signup_body(role=role, favoriteStyles=styles, **overrides)
        status, answer = request("POST", f"{stack.url('auth')}/auth/signup", body, timeout=30)
        assert status == 201, (status, answer)
        signup = Signup(answer["uuid"], role, tuple(styles))
        with self.lock:
            self.accepted.append(signup)
        return signup

    def burst(self, stack: Stack, count: int, during: Any = None, at: int = -1) -> list[Signup]:
        """`count` signups one after another; `during()` runs after the `at`-th."""
        made = []
        for number in range(count):
            made.append(self.sign_up(stack, number))
            if number == at and during is not None:
                during()
        return made


def _scalar_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        engine.dispose()


@dataclass
class Reconciliation:
    """What the three databases hold against what was accepted."""

    accepted: int
    partners_expected: int
    users: int
    partners: int
    styles: int
    summaries: int
    auth_members: int
    unpublished: int
    problems: list[str]

    def line(self) -> str:
        return (
            f"accepted={self.accepted} users={self.users} partners={self.partners} "
            f"styles={self.styles} summaries={self.summaries} (expected partners/summaries "
            f"{self.partners_expected}) auth_members={self.auth_members} "
            f"unpublished_outbox={self.unpublished}"
        )


def reconcile(stack: Stack, registry: Registry, real_urls: dict[str, str]) -> Reconciliation:
    """Compare every accepted signup with the member and batch databases, row for row."""
    urls = real_urls
    users = _scalar_rows(urls["member"], "SELECT uuid FROM users")
    partners = _scalar_rows(urls["member"], "SELECT uuid FROM partners")
    styles = _scalar_rows(urls["member"], "SELECT member_uuid, style_id FROM favorite_styles")
    summaries = _scalar_rows(urls["batch"], "SELECT partner_id FROM partner_summaries")
    members = _scalar_rows(urls["auth"], "SELECT uuid FROM members")
    unpublished = _scalar_rows(
        urls["auth"], "SELECT count(*) FROM outbox WHERE published_at IS NULL"
    )
    accepted = list(registry.accepted)
    problems: list[str] = []
    expect_users = {s.uuid for s in accepted if s.role == "USER"}
    expect_partners = {s.uuid for s in accepted if s.role == "PARTNER"}
    expect_styles = Counter((s.uuid, style) for s in accepted for style in s.styles)
    if Counter(u for (u,) in users) != Counter(expect_users):
        problems.append("users differ from accepted USER signups")
    if Counter(p for (p,) in partners) != Counter(expect_partners):
        problems.append("partners differ from accepted PARTNER signups")
    if Counter((m, int(s)) for m, s in styles) != expect_styles:
        problems.append("favorite styles differ")
    if Counter(p for (p,) in summaries) != Counter(expect_partners):
        problems.append("partner summaries differ from accepted PARTNER signups")
    if Counter(m for (m,) in members) != Counter(s.uuid for s in accepted):
        problems.append("auth members differ from accepted signups")
    return Reconciliation(
        accepted=len(accepted),
        partners_expected=len(expect_partners),
        users=len(users),
        partners=len(partners),
        styles=len(styles),
        summaries=len(summaries),
        auth_members=len(members),
        unpublished=int(unpublished[0][0]),
        problems=problems,
    )


def wait_reconciled(
    stack: Stack, registry: Registry, real_urls: dict[str, str], timeout: float = 60.0
) -> Reconciliation:
    """Reconcile until nothing is missing (or `timeout`), then wait until both consumer
    groups have committed their topics to the end (every redelivery handled, so anything
    doubled late shows too) and reconcile once more. Returns the final reconciliation."""
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
        wait_caught_up(
            stack.bootstrap_servers,
            {"member-service": "profile-insert", "batch-service": "partner-created"},
            max(deadline - time.monotonic(), 30.0),
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


def dead_letters(stack: Stack, topic: str) -> list[Any]:
    """Records in `topic`'s DLT."""
    assert stack.bootstrap_servers
    return read_topic((stack.bootstrap_servers or "").split(","), f"{topic}.DLT", timeout=5)
