"""Prometheus metrics, served at `/metrics` by every process.

What a process counts (requests, events) lives in counters and histograms built once
per process by `metrics()`. What is a fact about a database (the outbox backlog) is
read when scraped, by a collector (shared/messaging/outbox.py's
`OutboxBacklogCollector`), so every copy of a process reports the same truth rather than
its own share of it.

An API runs as several gunicorn worker processes; its counters are kept in files in a
directory of its own (prometheus-client's multiprocess mode, which `run_api` switches
on before any metric exists), and a scrape of any worker sums them all.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger(__name__)

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# HTTP: hashing puts a signup at tens to hundreds of milliseconds.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# One event's handler: tens of microseconds to a few milliseconds.
HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class PipelineMetrics:
    """Every counter and histogram a process of the pipeline keeps."""

    def __init__(self) -> None:
        self.http_requests = Counter(
            "signup_http_requests_total",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
        )
        self.http_duration = Histogram(
            "signup_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
        )
        self.events_published = Counter(
            "signup_events_published_total",
            "Outbox rows the broker acknowledged, by topic.",
            ["topic"],
        )
        self.outbox_send_failures = Counter(
            "signup_outbox_send_failures_total",
            "Outbox row sends the broker did not acknowledge (the rows are retried).",
        )
        self.outbox_producer_recreations = Counter(
            "signup_outbox_producer_recreations_total",
            "Times an outbox relay closed its producer and made a new one, after a fatal "
            "producer error or failures lasting past its bound.",
        )
        self.events_consumed = Counter(
            "signup_events_consumed_total",
            "Records received from the broker, redeliveries included, by topic.",
            ["topic"],
        )
        self.events_applied = Counter(
            "signup_events_applied_total",
            "Events applied (their transaction committed), by topic.",
            ["topic"],
        )
        self.events_duplicate = Counter(
            "signup_events_duplicate_total",
            "Events skipped because the inbox had them already, by topic.",
            ["topic"],
        )
        self.events_retried = Counter(
            "signup_events_retried_total",
            "Records sent back to be tried again after a failure, by topic.",
            ["topic"],
        )
        self.events_dead_lettered = Counter(
            "signup_events_dead_lettered_total",
            "Records copied to the dead-letter topic, by original topic.",
            ["topic"],
        )
        self.handler_duration = Histogram(
            "signup_event_handler_duration_seconds",
            "Time one event's handler took inside its transaction, by topic.",
            ["topic"],
            buckets=HANDLER_BUCKETS,
        )
        self.consumer_lag = Gauge(
            "signup_consumer_lag",
            "Records in a partition not yet consumed by this process (high watermark "
            "minus position), by topic and partition.",
            ["topic", "partition"],
            multiprocess_mode="max",
        )


_built: list[PipelineMetrics] = []
_building = threading.Lock()


def metrics() -> PipelineMetrics:
    """This process's metrics, built once (after `use_multiprocess_directory`, if any);
    safe to call from several threads at once."""
    if not _built:
        with _building:
            if not _built:
                _built.append(PipelineMetrics())
    return _built[0]


# prometheus-client chooses where a process keeps its values once, when it is imported:
# in memory, or (PROMETHEUS_MULTIPROC_DIR set in the environment) in files that a
# MultiProcessCollector sums. It has no call to choose later, and an API's directory
# exists only once `run_api` made it, after the import. So the two functions below set
# `values.ValueClass` themselves, as `values.get_value_class` would have at import, and
# the multiprocess files find their directory in the environment, the only place
# prometheus-client looks for it. That reaches into the library: pyproject.toml pins
# the exact prometheus-client these lines were written for, and
# tests/unit/test_metrics_store.py fails if its behaviour changes.
_directory: list[str | None] = [None]  # this process's multiprocess directory, if any


def use_multiprocess_directory(directory: str) -> None:
    """Keep this process's and its forked children's metrics in `directory`, which must
    be this process's own (see `run_api`), so that one scrape sums every gunicorn worker.
    Call before `metrics()`."""
    if _built:
        raise RuntimeError("metrics already exist: choose their store before using them")
    os.environ[MULTIPROC_VARIABLE] = directory  # where MultiProcessValue opens its files
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _directory[0] = directory


def use_process_memory() -> None:
    """Keep this (single-process) process's metrics in memory even if the environment
    names a multiprocess directory, so it never reads or mixes with other processes'."""
    if _built:
        raise RuntimeError("metrics already exist: choose their store before using them")
    values.ValueClass = values.MutexValue
    _directory[0] = None


def forget_process(pid: int) -> None:
    """A gunicorn worker exited: drop its live-gauge files (counters stay counted)."""
    directory = _directory[0]
    if directory is not None:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def multiprocess_enabled() -> bool:
    """Whether this process keeps its metrics in a multiprocess directory."""
    return _directory[0] is not None


class _Collected:
    """A registry-shaped view over several collectors, for `generate_latest`."""

    def __init__(self, sources: Iterable[Any]) -> None:
        self._sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


def exposition(*extra: Any) -> tuple[bytes, str]:
    """The scrape body and its content type: this process's (or, in multiprocess mode,
    every worker's) metrics plus `extra` collectors'."""
    metrics()  # so a scrape before the first request shows the families, at zero
    directory = _directory[0]
    if directory is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
        base: Any = registry
    else:
        base = REGISTRY
    return generate_latest(_Collected([base, *extra])), CONTENT_TYPE_LATEST
