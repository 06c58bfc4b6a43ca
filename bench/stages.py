"""The pipeline's own figures: signup API, propagation, backlog drain, relay, memory.

Every stage runs the real code: the contract's processes as OS processes (Stack), real
PostgreSQL (or SQLite) and a real Kafka-compatible broker. Each figure is later set beside
the ceiling it depends on (bench.ceilings), measured on the same machine in the same run.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, func, select, text

from auth_service.models import Base as AuthBase
from auth_service.models import OutboxEvent as AuthOutbox
from devtools.stack import ManagedProcess, Stack
from member_service.models import ProcessedEvent
from shared.messaging.kafka import make_producer
from shared.messaging.outbox import OutboxRelay, add_event
from shared.messaging.pipeline import PROFILE_INSERT
from shared.storage.db import Database
from shared.storage.migrations import upgrade

Progress = Callable[[str], None]

# One signup in PARTNER_EVERY is a PARTNER (the rest USERs), each with three styles.
PARTNER_EVERY = 5
STYLES = [2, 5, 9]


def signup_body(n: int) -> dict[str, Any]:
    """A valid signup; every `PARTNER_EVERY`th is a PARTNER."""
    return {
        "email": f"bench-{uuid.uuid4().hex}@example.com",
        "password": "correct horse battery staple",
        "name": "Kim Minji",
        "phone": "+82-10-1234-5678",
        "birth": "1994-05-17",
        "gender": "FEMALE",
        "role": "PARTNER" if n % PARTNER_EVERY == 0 else "USER",
        # Unique among members (the member service rejects a taken one), also across
        # the stages of one run that share a database.
        "nickname": f"b{n}-{uuid.uuid4().hex[:10]}",
        "favoriteStyles": STYLES,
    }


def profile_insert_payload(n: int) -> dict[str, Any]:
    """The `profile-insert` event the auth service writes for `signup_body(n)`."""
    body = signup_body(n)
    return {
        "uuid": str(uuid.uuid4()),
        "role": body["role"],
        "nickname": body["nickname"],
        "favoriteStyles": body["favoriteStyles"],
    }


def rows_per_event() -> float:
    """Rows a member worker writes per event of the mix: the profile, its styles, its
    member_roles row, the inbox row and its profile-created answer, plus a partner's
    partner-created."""
    return 1 + len(STYLES) + 1 + 1 + 1 + 1 / PARTNER_EVERY


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {}

    def at(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2)

    return {
        "count": len(ms),
        "p50": round(statistics.median(ms), 2),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ms[-1], 2),
    }


class Client:
    """One keep-alive HTTP/1.1 connection, as a load generator's client holds."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, parsed body)."""
        self._connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = self._connection.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def close(self) -> None:
        self._connection.close()


def signup_load(
    stack: Stack,
    clients: int,
    seconds: float,
    progress: Progress,
    base_url: str | None = None,
) -> dict[str, Any]:
    """`clients` concurrent clients signing up back to back for `seconds`, the whole
    pipeline running behind the API: requests per second and latency. `base_url`: where
    the clients send (the auth API process itself, or nginx in front of it); by default
    where clients reach the stack."""
    url = base_url or stack.url("auth")
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def client_loop() -> None:
        client = Client(url)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    n = next(counter)
                started = time.perf_counter()
                status, _ = client.post("/auth/signup", signup_body(n))
                elapsed = time.perf_counter() - started
                with lock:
                    if status == 201:
                        latencies.append(elapsed)
                    else:
                        failures.append(status)
        finally:
            client.close()

    meter = CpuMeter(list(stack.processes.values())).start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        progress(f"signup load: {len(latencies)} accepted")
        time.sleep(1)
    elapsed = time.perf_counter() - started
    cpu = meter.stop()
    if failures:
        raise RuntimeError(f"signups failed with statuses {sorted(set(failures))}")
    return {
        "cpu": cpu,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "accepted": len(latencies),
        "per_second": round(len(latencies) / elapsed, 2),
        "latency_ms": percentiles(latencies),
    }


class Watcher:
    """Notes when each awaited uuid first becomes visible in a table (i.e. committed),
    polling the database every `interval` seconds on its own thread."""

    def __init__(self, url: str, query: str, interval: float = 0.002) -> None:
        self._engine = create_engine(url)
        self._query = text(query).bindparams(bindparam("ids", expanding=True))
        self._interval = interval
        self._awaited: set[str] = set()
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def await_(self, member_id: str) -> None:
        with self._lock:
            self._awaited.add(member_id)

    def _run(self) -> None:
        with self._engine.connect() as connection:
            while not self._stop.is_set():
                with self._lock:
                    awaited = list(self._awaited)
                if awaited:
                    found = connection.execute(self._query, {"ids": awaited}).scalars().all()
                    connection.rollback()  # a fresh snapshot on the next poll
                    now = time.perf_counter()
                    with self._lock:
                        for member_id in found:
                            self._awaited.discard(member_id)
                            self.seen[member_id] = now
                time.sleep(self._interval)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def pending(self) -> int:
        with self._lock:
            return len(self._awaited)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()


def propagation(stack: Stack, count: int, rate: float, progress: Progress) -> dict[str, Any]:
    """`count` signups sent at `rate` per second (open loop, one at a time), each timed
    from its 201 to its member profile, and for partners to its partner summary,
    becoming visible (committed) in the member and batch databases."""
    members = Watcher(
        stack.database_urls["member"],
        "SELECT uuid FROM users WHERE uuid IN :ids UNION ALL "
        "SELECT uuid FROM partners WHERE uuid IN :ids",
    ).start()
    summaries = Watcher(
        stack.database_urls["batch"],
        "SELECT partner_id FROM partner_summaries WHERE partner_id IN :ids",
    ).start()
    answered: dict[str, float] = {}
    partners: set[str] = set()
    client = Client(stack.url("auth"))
    started = time.perf_counter()
    try:
        for n in range(count):
            time.sleep(max(0.0, started + n / rate - time.perf_counter()))
            body = signup_body(n)
            status, answer = client.post("/auth/signup", body)
            at = time.perf_counter()
            if status != 201:
                raise RuntimeError(f"signup answered {status}: {answer}")
            member_id = answer["uuid"]
            answered[member_id] = at
            members.await_(member_id)
            if body["role"] == "PARTNER":
                partners.add(member_id)
                summaries.await_(member_id)
            if n % 25 == 0:
                progress(f"propagation: {n}/{count} signups sent")
        sent_for = time.perf_counter() - started
        deadline = time.monotonic() + 30
        while (members.pending() or summaries.pending()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
        members.stop()
        summaries.stop()
    missing = (set(answered) - set(members.seen)) | (partners - set(summaries.seen))
    if missing:
        raise RuntimeError(f"{len(missing)} signups never propagated, e.g. {sorted(missing)[:3]}")
    return {
        "signups": count,
        "partners": len(partners),
        "rate_per_second": round(count / sent_for, 2),
        "poll_interval_ms": 2,
        "to_member_profile_ms": percentiles([members.seen[m] - answered[m] for m in answered]),
        "to_partner_summary_ms": percentiles([summaries.seen[p] - answered[p] for p in partners]),
    }


def produce_profile_inserts(bootstrap_servers: list[str], count: int, progress: Progress) -> None:
    """`count` profile-insert events in the topic, as the auth relay writes them (same
    value, key and CloudEvents headers): outbox rows staged in a scratch SQLite database
    and sent with the project's own relay."""
    scratch_dir = tempfile.TemporaryDirectory(prefix="bench-outbox-")
    database = Database.from_url(f"sqlite:///{scratch_dir.name}/outbox.db", AuthBase.metadata)
    try:
        AuthBase.metadata.create_all(database.engine, tables=[AuthBase.metadata.tables["outbox"]])
        stage_outbox_rows(database, count)
        relay = OutboxRelay(
            database, AuthOutbox, lambda: make_producer(bootstrap_servers), batch_size=2000
        )
        sent = 0
        while sent < count:
            sent += relay.publish_pending()
            progress(f"drain: {sent}/{count} events produced")
        relay.stop()
    finally:
        database.engine.dispose()
        scratch_dir.cleanup()


def stage_outbox_rows(database: Database, count: int) -> None:
    """`count` committed profile-insert outbox rows, in transactions of 5,000."""
    for start in range(0, count, 5000):
        with database.unit_of_work() as uow:
            for n in range(start, min(count, start + 5000)):
                payload = profile_insert_payload(n)
                add_event(
                    uow,
                    AuthOutbox,
                    PROFILE_INSERT,
                    PROFILE_INSERT.load(payload),
                    key=payload["uuid"],
                    source="auth-service",
                    traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
                )
            uow.commit()


def count_rows(engine: Engine, model: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar() or 0)


def drain(
    stack: Stack, workers: int, count: int, progress: Progress
) -> tuple[dict[str, Any], list[ManagedProcess]]:
    """Start `workers` member workers on a topic already holding `count` events; time
    them from the moment all of them hold partitions (so the group join and the
    rebalance a second member causes are excluded) to the last event applied."""
    engine = create_engine(stack.database_urls["member"])
    processes = [
        stack.spawn("member-worker", instance=f"member-worker-{n}") for n in range(workers)
    ]
    try:
        progress(f"drain, {workers} worker(s): joining the group")
        stack.wait_ready(120, names=[process.name for process in processes])
        meter = CpuMeter(processes).start()
        started = time.perf_counter()
        first_count = done = count_rows(engine, ProcessedEvent)
        deadline = time.monotonic() + 60 + count / 500
        while done < count:
            stack.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"drain stalled at {done}/{count}")
            time.sleep(0.05)
            done = count_rows(engine, ProcessedEvent)
            progress(f"drain, {workers} worker(s): {done}/{count} applied")
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return {
        "cpu": meter.stop(),
        "workers": workers,
        "events": count,
        "applied_before_all_joined": first_count,
        "seconds": round(seconds, 2),
        "per_second": round((count - first_count) / seconds, 1),
        "partners": count // PARTNER_EVERY,
        "rows_per_event": rows_per_event(),
    }, processes


def relay_throughput(
    database_url: str, bootstrap_servers: list[str], rows: int, progress: Progress
) -> dict[str, Any]:
    """Outbox rows per second from committed to acknowledged by the broker: `rows`
    committed rows in an auth database, published by one relay (the project's code)."""
    upgrade("auth", database_url)
    database = Database.from_url(database_url, AuthBase.metadata)
    try:
        stage_outbox_rows(database, rows)
        relay = OutboxRelay(database, AuthOutbox, lambda: make_producer(bootstrap_servers))
        relay.publish_pending()  # connects the producer and warms up; not timed
        published = 0
        started = time.perf_counter()
        while True:
            sent = relay.publish_pending()
            if not sent:
                break
            published += sent
            progress(f"relay: {published}/{rows} published")
        seconds = time.perf_counter() - started
        relay.stop()
        left = count_rows(database.engine, AuthOutbox.__table__) - rows
        return {
            "rows": published,
            "batch_size": 500,
            "seconds": round(seconds, 2),
            "per_second": round(published / seconds, 1),
            "unpublished_left": left,
        }
    finally:
        database.engine.dispose()


def machine_cpu() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How busy the machine was, and which of the stack's processes used the CPU, between
    `start()` and `stop()`: tells a figure limited by the cores from one limited by us."""

    def __init__(self, processes: list[ManagedProcess]) -> None:
        self._pids: dict[str, int] = {}
        for process in processes:
            if process.pid is not None:
                self._pids[process.name] = process.pid
                for n, child in enumerate(_children(process.pid), 1):
                    self._pids[f"{process.name} worker {n}"] = child

    def start(self) -> CpuMeter:
        self._machine = machine_cpu()
        self._processes = {name: process_cpu(pid) for name, pid in self._pids.items()}
        self._programs = every_process_cpu()
        self._started = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        busy, total = machine_cpu()
        elapsed = time.perf_counter() - self._started
        used = {
            name: round((process_cpu(pid) - self._processes[name]) / elapsed, 3)
            for name, pid in self._pids.items()
        }
        programs: dict[str, float] = {}
        for pid, (program, seconds) in every_process_cpu().items():
            # A process started meanwhile: all of its CPU is the window's. (A process's
            # name may change meanwhile, a kernel worker's does: the pid is what counts.)
            before = self._programs.get(pid, (program, 0.0))[1]
            programs[program] = programs.get(program, 0.0) + seconds - before
        return {
            "machine_busy": round((busy - self._machine[0]) / max(1, total - self._machine[1]), 3),
            "cores_used_by_process": {name: value for name, value in used.items() if value},
            # Every process of the machine by program name (postgres, the broker, python:
            # ours and anything else running), the cores each used; the largest five.
            # One that ended within the window is not seen.
            "cores_used_by_program": dict(
                sorted(
                    (
                        (name, round(cpu / elapsed, 3))
                        for name, cpu in programs.items()
                        if cpu / elapsed >= 0.001
                    ),
                    key=lambda item: -item[1],
                )[:5]
            ),
        }


def every_process_cpu() -> dict[int, tuple[str, float]]:
    """For every process now on the machine: its program name and the CPU seconds it
    has used so far."""
    found: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.find("(") + 1 : raw.rfind(")")]
        stat = raw.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (name, (int(stat[11]) + int(stat[12])) / tick)
    return found


def peak_rss_mb(process: ManagedProcess) -> dict[str, float]:
    """Peak resident memory (VmHWM) of a process and of each of its children (gunicorn
    workers), in MB, read from /proc while they run."""
    peaks: dict[str, float] = {}
    pid = process.pid
    if pid is None:
        return peaks
    pids = [pid] + _children(pid)
    for n, child in enumerate(pids):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                label = process.name if n == 0 else f"{process.name} worker {n}"
                peaks[label] = round(int(line.split()[1]) / 1024, 1)
    return peaks


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children
