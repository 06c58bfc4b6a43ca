"""The whole pipeline as real OS processes on one machine: the local broker (unless a
Kafka is given), the three databases migrated, and the contract's six processes (each
worker with a health port of its own).

`signup-pipeline dev` runs it until Ctrl-C; the end-to-end tests and benchmarks drive it.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from devtools import proxy as nginx
from devtools.broker import LocalBroker, free_port
from shared.config import DEV_MODE_VARIABLE, SERVICES, child_environment
from shared.private_files import open_private_log, private_directory

# The contract's long-running processes, in the order they start: `<service>-<role>`,
# each run as `python -m <service>_service <role>`.
PROCESSES = (
    "auth-api",
    "auth-worker",
    "member-worker",
    "member-api",
    "batch-worker",
    "batch-api",
)


class StackError(RuntimeError):
    """A process of the stack failed to start or died."""


@dataclass
class ManagedProcess:
    """One child process, its output kept in a log file and its last lines in memory."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    echo: Callable[[str], None] | None = None
    popen: subprocess.Popen[bytes] | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    _reader: threading.Thread | None = None
    _terminated: bool = False

    def start(self) -> None:
        """Start the process in its own session, so signals reach its whole tree."""
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, name=f"log-{self.name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        # 0600, as its directory is 0700: a process's log is its user's alone (issue 16,
        # item 7): an email in a line, a token in a traceback.
        with self.popen.stdout, open_private_log(self.log_path) as log:
            for raw in iter(self.popen.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self.tail.append(line)
                if self.echo is not None:
                    self.echo(f"[{self.name}] {line}")

    def last_lines(self, count: int) -> list[str]:
        """Its last `count` lines of output (all of them, once it has exited)."""
        if self.popen is not None and self.popen.poll() is not None and self._reader is not None:
            self._reader.join(2)
        return list(self.tail)[-count:]

    @property
    def pid(self) -> int | None:
        """The process id, while started."""
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the process and everything it started."""
        if self.running():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> int | None:
        """Wait for the exit; the exit code, or None if still running."""
        if self.popen is None:
            return None
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(2)
        return code

    def terminate(self) -> None:
        """Ask the process to stop, once: a second SIGTERM could land while Python is
        finalizing (handlers already reset to default) and turn a clean exit into -15."""
        if not self._terminated:
            self._terminated = True
            self.signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL for whatever is left after `timeout`."""
        self.terminate()
        code = self.wait(timeout)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.wait(5)
        elif self.popen is not None:
            # The leader exited; make sure nothing it started outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        return code


class Stack:
    """Broker + migrated databases + the six contract processes; with `proxy`, nginx
    in front of the three APIs (deploy/nginx/): it listens on `ports`, the APIs on
    loopback ports of their own (`api_ports`), and the auth API trusts one proxy hop."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_urls: Mapping[str, str] | None = None,
        bootstrap_servers: str | None = None,
        ports: Mapping[str, int] | None = None,
        echo: Callable[[str], None] | None = None,
        extra_env: Mapping[str, str] | None = None,
        process_env: Mapping[str, Mapping[str, str]] | None = None,
        api_workers: int = 1,
        rate_limits: bool = False,
        proxy: bool = False,
        python: str = sys.executable,
    ) -> None:
        self.workdir = workdir
        # The interpreter the processes run on: another virtualenv's (say, a runtime-only
        # install's) to check that what the services need is what they declare.
        self.python = python
        self.log_dir = workdir / "logs"
        self.database_urls = {
            service: (database_urls or {}).get(service) or _sqlite_url_in(workdir, service)
            for service in SERVICES
        }
        self.bootstrap_servers = bootstrap_servers
        self.broker: LocalBroker | None = None
        self.ports = {service: (ports or {}).get(service) or free_port() for service in SERVICES}
        # Where each API process itself listens: its public port, or behind the proxy a
        # loopback port only the proxy is told.
        self.nginx = nginx.nginx_binary() if proxy else None
        if proxy and self.nginx is None:
            raise StackError("nginx is not installed: run scripts/ensure-nginx.sh")
        self.api_ports = {
            service: free_port() if proxy else port for service, port in self.ports.items()
        }
        self.echo = echo
        self.extra_env = dict(extra_env or {})
        # Per process name (`auth-api`, ...): variables only that process gets, on top of
        # env() (say, its own Kafka user); spawn()'s extra_env still goes on top.
        self.process_env = {name: dict(env) for name, env in (process_env or {}).items()}
        if proxy:
            # Behind exactly one proxy: the client is the address nginx saw (it sets
            # X-Forwarded-For to that, never appends), so rate limits count real clients.
            self.process_env.setdefault("auth-api", {}).setdefault("TRUSTED_PROXY_HOPS", "1")
        self.api_workers = api_workers
        # Off unless asked for: tests and the benchmark sign up far faster than a person.
        self.rate_limits = rate_limits
        self.processes: dict[str, ManagedProcess] = {}
        self.health_ports: dict[str, int] = {}

    @property
    def proxied(self) -> bool:
        """Whether nginx fronts the APIs."""
        return self.nginx is not None

    def url(self, service: str) -> str:
        """Base URL of a service's API, as clients reach it (through the proxy, if any)."""
        return f"http://127.0.0.1:{self.ports[service]}"

    def api_url(self, service: str) -> str:
        """Base URL of a service's API process itself (the proxy's upstream)."""
        return f"http://127.0.0.1:{self.api_ports[service]}"

    def env(self) -> dict[str, str]:
        """The environment every process of the stack gets."""
        env = child_environment()
        env.update(self.extra_env)
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap_servers or ""
        for service, url in self.database_urls.items():
            env[f"{service.upper()}_DATABASE_URL"] = url
        env.setdefault(DEV_MODE_VARIABLE, "1")
        env.setdefault("AUTH_RATE_LIMITS", "on" if self.rate_limits else "off")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 60.0, progress: Callable[[str], None] | None = None) -> Stack:
        """Start the broker if none was given, migrate, start all six and wait until every
        one is ready; `progress` hears each step. If any step fails or a process exits
        meanwhile, stops everything (without echoing their shutdown) and raises."""
        step = progress or (lambda _: None)
        # The stack's own directories are private, also when an older version made them
        # readable to all (issue 16, item 7); the databases and logs are created private.
        private_directory(self.log_dir, tighten=True)
        if any(url == _sqlite_url_in(self.workdir, s) for s, url in self.database_urls.items()):
            private_directory(self.workdir / "var", tighten=True)
        try:
            if not self.bootstrap_servers:
                step("starting the local broker")
                self.broker = LocalBroker(log_path=self.log_dir / "broker.log").start()
                self.bootstrap_servers = self.broker.bootstrap_servers
            step("migrating the three databases")
            self.migrate()
            # An API port something else already listens on cannot prove our API ready:
            # whatever answers there is not it (another `dev`, say), and ours will exit.
            taken = {
                f"{service}-api"
                for service, port in self.ports.items()
                if not _can_listen("127.0.0.1", port)
            }
            # nginx holds the public ports; if one is taken it cannot start: let it say so
            # at once rather than after every process has started.
            proxy_first = self.proxied and bool(taken)
            if proxy_first:
                step("starting nginx in front of the APIs")
                self.spawn_proxy()
                self.wait_ready(timeout, names=["proxy"], untrusted={"proxy"})
            step(f"starting {len(PROCESSES)} processes")
            for name in PROCESSES:
                self.spawn(name)
            step("waiting until every API answers and every worker has joined its group")
            if self.proxied:
                # The APIs first, on their own ports; then nginx, which would only answer
                # 503 (and log each refused connection) until they do.
                self.wait_ready(timeout, names=[n for n in self.processes if n != "proxy"])
                if not proxy_first:
                    step("starting nginx in front of the APIs")
                    self.spawn_proxy()
                    self.wait_ready(timeout, names=["proxy"])
            else:
                self.wait_ready(timeout, untrusted=taken)
        except BaseException:
            self.silence()  # the failure is the news, not how the others shut down
            self.stop()  # leave nothing behind, whatever failed
            raise
        return self

    def silence(self) -> None:
        """Stop echoing the processes' output (their log files still get it)."""
        self.echo = None
        for process in self.processes.values():
            process.echo = None

    def migrate(self) -> None:
        """`python -m <service>_service migrate` for each service."""
        for service in SERVICES:
            result = subprocess.run(
                [self.python, "-m", f"{service}_service", "migrate"],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                raise StackError(f"{service} migrate failed: {result.stderr.strip()}")

    def command(self, name: str, health_port: int | None = None) -> list[str]:
        """The contract command line of process `name` (e.g. `member-worker`)."""
        service, role = name.split("-")
        argv = [self.python, "-m", f"{service}_service", role]
        if role == "api":
            argv += ["--port", str(self.api_ports[service]), "--workers", str(self.api_workers)]
        if health_port is not None:
            argv += ["--health-port", str(health_port)]
        return argv

    def health_url(self, key: str) -> str:
        """Readiness URL of process `key`: its API's own, a worker's own health port, or
        for the proxy the auth API's through it."""
        if key in self.health_ports:
            return f"http://127.0.0.1:{self.health_ports[key]}/health/ready"
        if key == "proxy":
            return f"{self.url('auth')}/health/ready"
        return f"{self.api_url(key.split('-')[0])}/health/ready"

    def ready(self, key: str) -> bool:
        """Whether process `key` answers ready; the proxy when every API does through it."""
        if key == "proxy":
            return all(http_status(f"{self.url(s)}/health/ready") == 200 for s in SERVICES)
        return http_status(self.health_url(key)) == 200

    def spawn_proxy(self) -> ManagedProcess:
        """Start nginx (process `proxy`) in front of the three APIs, as the current user,
        its configuration, pid file and temporary files in <workdir>/var/nginx."""
        assert self.nginx is not None
        state = self.workdir / "var" / "nginx"
        values = nginx.local_values(
            state,
            listen={s: f"127.0.0.1:{port}" for s, port in self.ports.items()},
            upstream={s: f"127.0.0.1:{port}" for s, port in self.api_ports.items()},
        )
        config = nginx.prepare(state, values)
        process = ManagedProcess(
            name="proxy",
            argv=nginx.command(self.nginx, state, config),
            env=child_environment(),
            log_path=self.log_dir / "proxy.log",
            echo=self.echo,
        )
        process.start()
        self.processes["proxy"] = process
        return process

    def spawn(
        self, name: str, instance: str | None = None, extra_env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """Start (or restart) process `name`; `instance` names an extra copy; `extra_env`
        is added to this process's environment only, after the stack's `process_env` for
        `name`."""
        key = instance or name
        private_directory(self.log_dir, tighten=True)
        health_port = None
        if name.endswith("-worker"):
            health_port = self.health_ports[key] = free_port()
        process = ManagedProcess(
            name=key,
            argv=self.command(name, health_port),
            env={**self.env(), **self.process_env.get(name, {}), **(extra_env or {})},
            log_path=self.log_dir / f"{key}.log",
            echo=self.echo,
        )
        process.start()
        self.processes[key] = process
        return process

    def wait_ready(
        self, timeout: float, names: list[str] | None = None, untrusted: Collection[str] = ()
    ) -> None:
        """Until every process (or those in `names`) answers /health/ready: APIs with their
        database, workers also joined to their consumer group. Raises as soon as any
        process of the stack has exited. An answer on the port of a process in
        `untrusted` is not taken for its own."""
        deadline = time.monotonic() + timeout
        pending = set(names or self.processes)
        while pending:
            self.check_alive()
            for key in list(pending):
                if key not in untrusted and self.ready(key):
                    pending.discard(key)
            if time.monotonic() > deadline:
                also = sorted(pending & set(untrusted))
                raise StackError(
                    f"not ready within {timeout}s: {sorted(pending)}"
                    + (f" ({', '.join(also)}: its port was already in use)" if also else "")
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        """Raise, with its last log lines, if a process of the stack has died."""
        for process in self.processes.values():
            if process.popen is not None and process.popen.poll() is not None:
                last = "\n".join(f"  {line}" for line in process.last_lines(15))
                raise StackError(
                    f"{process.name} exited with {process.popen.returncode}; last lines "
                    f"(all in {process.log_path}):\n{last}"
                )

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """Stop every process (SIGTERM, then SIGKILL) and the broker; their exit codes."""
        for process in self.processes.values():
            process.terminate()
        codes = {name: process.stop(timeout) for name, process in self.processes.items()}
        if self.broker is not None:
            self.broker.stop()
        return codes


def _can_listen(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as gunicorn would: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _sqlite_url_in(workdir: Path, service: str) -> str:
    return f"sqlite:///{workdir / 'var' / f'{service}.db'}"


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of GET `url`, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        # Nothing there yet, or something that does not speak HTTP (a port just freed
        # and taken by another program): not ready, rather than a crash of the caller.
        return None


def write_line(stream: IO[str]) -> Callable[[str], None]:
    """A thread-safe line printer for prefixed process output."""
    lock = threading.Lock()

    def emit(line: str) -> None:
        with lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                # The reader went away (`dev | tee` and Ctrl-C, a closed terminal): what
                # is said is lost, but nothing may stop the stack from being stopped.
                pass

    return emit


__all__ = ["PROCESSES", "Stack", "StackError", "http_status", "write_line"]
