"""Process entrypoints shared by the services: `api`, `worker`, `migrate`.

Nothing connects at import; each command builds its clients when it runs, and a
configuration problem ends the process with one readable line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import Flask
from kafka.errors import KafkaError
from sqlalchemy import MetaData
from sqlalchemy.exc import SQLAlchemyError

from shared.config import (
    ConfigError,
    Settings,
    WebSettings,
    failpoint_spec,
    log_settings,
    one_event_per_transaction,
    web_settings,
    worker_health_port,
    worker_join_timeout,
)
from shared.http.health import ConsumerState, HealthServer
from shared.messaging import failpoints
from shared.messaging.consumer import ConsumerLoop
from shared.messaging.housekeeping import Expiring, Housekeeper
from shared.messaging.inbox import InboxRecord
from shared.messaging.kafka import (
    create_topics,
    make_consumer,
    make_producer,
    missing_topics,
    use_security,
)
from shared.messaging.outbox import OutboxBacklogCollector, OutboxRecord, OutboxRelay
from shared.messaging.pipeline import TOPICS, Topic
from shared.messaging.processor import EventProcessor, consumer_group_of
from shared.messaging.processor import Route as Route  # what a WorkerSpec is made of
from shared.storage.db import Database, failure_reason, redact_url
from shared.storage.migrations import current_revision, head_revision, is_older_revision, upgrade
from shared.telemetry.logs import configure_logging
from shared.telemetry.metrics import (
    forget_process,
    metrics,
    use_multiprocess_directory,
    use_process_memory,
)

log = logging.getLogger(__name__)


def fail(message: str) -> NoReturn:
    """End the process with one readable line."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def open_database(settings: Settings, metadata: MetaData) -> Database:
    """The service's database, checked reachable and migrated."""
    database = Database.from_url(settings.database_url, metadata)
    try:
        with database.engine.connect() as connection:
            current = current_revision(connection)
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot reach the {settings.service} database ({redact_url(settings.database_url)}): "
            f"{failure_reason(exc)}; check {settings.service.upper()}_DATABASE_URL"
        ) from None
    head = head_revision(settings.service)
    if current != head:
        if current is None or is_older_revision(settings.service, current):
            raise ConfigError(
                f"the {settings.service} database is at schema revision {current or 'none'}, "
                f"this code needs {head}: run `python -m {settings.service}_service migrate`"
            )
        # A revision this code does not know is a newer release's: during a rolling
        # deploy old processes keep running on the (backward-compatible) newer schema.
        log.warning("database schema %s is newer than this code's %s", current, head)
    return database


def process_topics(service: str, spec: WorkerSpec | None = None) -> list[str]:
    """The topics a process of `service` uses: those its outbox publishes to, and for a
    worker (`spec`) every topic it consumes and each one's dead-letter topic. With SASL these are
    all its principal may see (deploy/kafka/grants.txt), so the start-up check asks for
    no more."""
    names = [topic.name for topic in TOPICS if topic.producer == f"{service}-service"]
    if spec is not None:
        read = [name for topic in spec.topics for name in (topic.name, topic.dead_letter)]
        names = read + (names if spec.outbox else [])
    return names


def check_broker(settings: Settings, topics: Collection[str] | None = None) -> None:
    """Reach the broker and check the topics this process uses (`topics`; by default
    every topic of the pipeline) exist; in dev mode create every missing pipeline topic.

    Outside dev mode topics are the operator's (partitions, replication, retention), as
    docker-compose's kafka-topics job does; a process does not create them on its own."""
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # the one line below says it all
    servers = settings.bootstrap_servers
    try:
        missing = missing_topics(servers, names=topics)
        if missing and settings.dev_mode:
            create_topics(servers, missing_topics(servers))
            missing = []
    except KafkaError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {','.join(servers)} ({exc}); "
            "start the broker or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    finally:
        kafka_log.setLevel(level)
    if missing:
        user = settings.kafka_security.sasl_username
        raise ConfigError(
            f"Kafka at {','.join(servers)} lacks topics {missing}: create them "
            "(see docker-compose.yml's kafka-topics job), or set SIGNUP_PIPELINE_DEV=1 "
            "to have them created with the broker's defaults"
            + (
                f"; or they exist but Kafka user {user!r} may not describe them: grant it "
                "what deploy/kafka/grants.txt does"
                if user
                else ""
            )
        )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _handle(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    return stop


@dataclass(frozen=True)
class WorkerSpec:
    """A consumer process: what it reads (`routes`: each topic and its handler, all read
    by one consumer group), where it records what it applied, and what it may publish.

        WorkerSpec(
            routes=(Route(PROFILE_INSERT, on_profile_insert), Route(PROFILE_DELETE, on_delete)),
            inbox=ProcessedEvent,
            outbox=OutboxEvent,
        )
    """

    routes: tuple[Route[Any], ...]
    inbox: type[InboxRecord]
    outbox: type[OutboxRecord] | None = None
    # Records per poll, so per transaction (the consumer's default, 500, when None): a
    # worker whose batch handler folds many events into few rows gains from more.
    max_poll_records: int | None = None
    # Poll and decode the next records while a poll is applied (see ConsumerLoop).
    pipelined: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", tuple(self.routes))
        consumer_group_of(self.routes)  # one group, no topic twice

    @property
    def topics(self) -> tuple[Topic[Any], ...]:
        """The topics read, in the order of `routes`."""
        return tuple(route.topic for route in self.routes)

    @property
    def consumer_group(self) -> str:
        """The one consumer group that reads them all."""
        return consumer_group_of(self.routes)


def run_worker(
    settings: Settings, metadata: MetaData, spec: WorkerSpec, args: argparse.Namespace
) -> None:
    """Consume `spec.topics` in one group until SIGTERM/SIGINT, relaying this service's
    outbox meanwhile."""
    stop = stop_on_signals()  # first: a SIGTERM during start-up is a clean stop too
    use_process_memory()
    metrics()  # built before the relay, health and consumer threads can race to build it
    database = open_database(settings, metadata)
    check_broker(settings, process_topics(settings.service, spec))
    servers = settings.bootstrap_servers
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(database.engine.dispose)
        state = ConsumerState()
        health = None
        if args.health_port is not None:
            health = HealthServer(
                database,
                state,
                args.health_host,
                args.health_port,
                bootstrap_servers=servers,
                collectors=outbox_collectors(settings.service, database, spec.outbox),
                join_timeout=worker_join_timeout(),
            ).start()
            cleanup.callback(health.stop)
            log.info("health on http://%s:%d/health/ready", args.health_host, health.port)
        dead_letters = make_producer(servers)
        cleanup.callback(close_quietly, dead_letters)
        relay = None
        if spec.outbox is not None:
            relay = OutboxRelay(database, spec.outbox, lambda: make_producer(servers)).start()
            cleanup.callback(relay.stop)
            if health is not None:
                health.relay = relay  # its /health/ready answers 503 while the relay stalls
        housekeeper = Housekeeper(
            database,
            spec.outbox,
            spec.inbox,
            outbox_retention=settings.outbox_retention,
            inbox_retention=settings.inbox_retention,
        ).start()
        cleanup.callback(housekeeper.stop)
        processor = EventProcessor(
            spec.routes,
            database,
            spec.inbox,
            dead_letters,
            after_commit=relay.wake if relay else None,
            one_event_per_transaction=one_event_per_transaction(),
        )
        names = [topic.name for topic in spec.topics]
        polled = {"max_poll_records": spec.max_poll_records} if spec.max_poll_records else {}
        consumer = make_consumer(servers, spec.consumer_group, names, state, **polled)
        log.info("consuming %s as group %s", ", ".join(names), spec.consumer_group)
        ConsumerLoop(
            consumer, processor, stop, on_stuck=state.report_stuck, pipelined=spec.pipelined
        ).run()
    log.info("stopped")


def close_quietly(producer: Any, timeout: float = 5.0) -> None:
    """Flush and close a producer; with the broker gone, give up after `timeout`."""
    try:
        producer.close(timeout=timeout)
    except Exception as exc:
        log.warning("producer did not close cleanly: %s", exc)


def run_api(
    settings: Settings,
    metadata: MetaData,
    build: Callable[[Database, OutboxRelay | None], Flask],
    args: argparse.Namespace,
    *,
    outbox: type[OutboxRecord] | None = None,
    expiring: tuple[Expiring, ...] = (),
) -> None:
    """Serve `build(database, relay)` with gunicorn; with an outbox, each worker runs a
    relay and a housekeeper (which also empties the `expiring` tables)."""
    open_database(settings, metadata).engine.dispose()
    if outbox is not None:
        check_broker(settings, process_topics(settings.service))
    servers = settings.bootstrap_servers
    # Before any metric exists, and inherited by the forked workers: one scrape of any
    # worker then sums the counts of all of them. A directory of this API's own (under
    # PROMETHEUS_MULTIPROC_DIR if set), so two APIs on one host never mix or delete each
    # other's counts; a stale one left by a killed run is never read.
    web: WebSettings = getattr(args, "web", None) or web_settings()
    directory = tempfile.mkdtemp(
        prefix=f"{settings.service}-api-metrics-", dir=web.metrics_directory
    )
    use_multiprocess_directory(directory)
    master = os.getpid()

    def app_factory() -> Flask:
        # Runs in each gunicorn worker after fork: engines and producers are per process.
        database = Database.from_url(settings.database_url, metadata)
        relay = None
        if outbox is not None:
            relay = OutboxRelay(database, outbox, lambda: make_producer(servers)).start()
            housekeeper = Housekeeper(
                database, outbox, outbox_retention=settings.outbox_retention, expiring=expiring
            ).start()
        metrics()  # built before the request threads can race to build it
        app = build(database, relay)
        app.extensions["metrics_collectors"] = outbox_collectors(settings.service, database, outbox)
        app.extensions["outbox_relay"] = relay
        app.extensions["housekeeper"] = housekeeper if outbox is not None else None
        return app

    def on_exit(app: Flask) -> None:
        for name in ("housekeeper", "outbox_relay"):
            component = app.extensions.get(name)
            if component is not None:
                component.stop()

    from shared.http.web import serve

    try:
        serve(
            app_factory,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            on_worker_exit=on_exit,
            on_child_exit=forget_process,
        )
    finally:
        # gunicorn ends a worker by raising SystemExit through this same call stack:
        # only the master may remove the directory the surviving workers still use.
        if os.getpid() == master:
            shutil.rmtree(directory, ignore_errors=True)


def outbox_collectors(
    service: str, database: Database, outbox: type[OutboxRecord] | None
) -> tuple[Any, ...]:
    """The scrape-time collectors of a process of `service` that owns `outbox`."""
    if outbox is None:
        return ()
    topics = [topic.name for topic in TOPICS if topic.producer == f"{service}-service"]
    return (OutboxBacklogCollector(database, outbox, topics),)


def service_main(
    service: str,
    default_port: int,
    metadata: MetaData,
    commands: dict[str, Callable[[Settings, argparse.Namespace], None]],
    argv: Sequence[str] | None = None,
) -> None:
    """Parse `python -m <service>_service <command> [...]` and run the command."""
    parser = argparse.ArgumentParser(prog=f"python -m {service}_service")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in commands:
        command = sub.add_parser(name)
        if name == "api":
            command.add_argument("--host", default="127.0.0.1")
            command.add_argument("--port", type=int, default=default_port)
            command.add_argument("--workers", type=int, help="gunicorn workers (WEB_CONCURRENCY)")
            command.add_argument("--threads", type=int, help="threads per worker (WEB_THREADS)")
        if name == "worker":
            command.add_argument(
                "--health-port",
                type=int,
                help="serve /health/live and /health/ready here (WORKER_HEALTH_PORT; default off)",
            )
            command.add_argument("--health-host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        configure_logging(service, args.command, log_settings())
        if args.command == "api":
            args.web = web_settings()
            args.workers = args.workers or args.web.workers
            args.threads = args.threads or args.web.threads
        if args.command == "worker" and args.health_port is None:
            args.health_port = worker_health_port()
        settings = Settings.from_env(service)
        use_security(settings.kafka_security)
        failpoints.arm(failpoint_spec())
        commands[args.command](settings, args)
    except ConfigError as exc:
        fail(str(exc))


def migrate(settings: Settings, _args: argparse.Namespace | None = None) -> None:
    """Upgrade the service's database to the newest schema revision."""
    try:
        upgrade(settings.service, settings.database_url)
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"cannot migrate the {settings.service} database "
            f"({redact_url(settings.database_url)}): {failure_reason(exc)}"
        ) from None
    log.info("%s database is at revision %s", settings.service, head_revision(settings.service))
