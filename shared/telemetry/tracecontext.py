"""W3C Trace Context: the `traceparent` that follows one signup through every service.

Spans are made with the OpenTelemetry API: a process whose operator installs the SDK
and an exporter sends real spans (signup request → profile-insert processing →
partner-created processing, one trace). Without an SDK the API records nothing and
would hand back the caller's ids unchanged, so `span()` then makes the span's ids
itself: the trace id still travels in the outbox rows and Kafka headers, and tags the
log lines of all three services.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterable, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from shared.telemetry.logs import log_context

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_PROPAGATOR = TraceContextTextMapPropagator()
# A proxy: it turns into the SDK's tracer once one is installed, whenever that happens.
_tracer = trace.get_tracer("signup-pipeline")

__all__ = [
    "SpanKind",
    "current_traceparent",
    "parse_traceparent",
    "record_spans",
    "span",
    "trace_id_of",
]


def parse_traceparent(value: str | None) -> str | None:
    """`value` if it is a valid version-00 traceparent with non-zero ids, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if not match or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(0)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id part of a traceparent."""
    valid = parse_traceparent(traceparent)
    return valid.split("-")[1] if valid else None


def _format(ids: SpanContext) -> str:
    return f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The traceparent of the span this code runs in, if any (what an outbox row keeps)."""
    ids = trace.get_current_span().get_span_context()
    return _format(ids) if ids.is_valid else None


@contextlib.contextmanager
def span(
    name: str,
    kind: SpanKind,
    parent: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A span, child of the `parent` traceparent (a new trace when there is none or it is
    invalid), current for the block; log lines inside carry its trace id."""
    valid = parse_traceparent(parent)
    if _sdk_installed():
        context = _PROPAGATOR.extract({"traceparent": valid}) if valid else Context()
        with _tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=attributes
        ) as current:
            if current.is_recording():
                with log_context(trace_id=f"{current.get_span_context().trace_id:032x}"):
                    yield current
                return
        # An SDK that records nothing (OTEL_SDK_DISABLED, a no-op provider) handed back
        # the caller's ids or none: make this span's own below, as without an SDK.
    # The no-op path, taken per event by the workers: skip the API's machinery
    # (measured: 16 µs a span through it, against about 180 µs for a whole event).
    _, trace_id, _, flags = valid.split("-") if valid else ("", "", "", "01")
    own = NonRecordingSpan(
        SpanContext(
            trace_id=int(trace_id, 16) if trace_id else _random_id(128),
            span_id=_random_id(64),
            is_remote=False,
            trace_flags=TraceFlags(int(flags, 16)),
        )
    )
    with (
        trace.use_span(own, end_on_exit=False),
        log_context(trace_id=trace_id or f"{own.get_span_context().trace_id:032x}"),
    ):
        yield own


def record_spans(
    spans: Iterable[tuple[str, str | None, Mapping[str, AttributeValue]]],
    kind: SpanKind,
    start_ns: int,
    end_ns: int,
) -> None:
    """Spans that already happened, each (name, parent traceparent, attributes), all from
    `start_ns` to `end_ns`: one per event applied by a batch handler, each in its own
    event's trace. Only with an SDK that records (without one, nothing would be kept: the
    loop is skipped, and a batch of events costs nothing here)."""
    if not _sdk_installed():
        return
    for name, parent, attributes in spans:
        valid = parse_traceparent(parent)
        context = _PROPAGATOR.extract({"traceparent": valid}) if valid else Context()
        _tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start_ns
        ).end(end_time=end_ns)


def _sdk_installed() -> bool:
    """Whether spans are recorded: an SDK's tracer provider is set (or a test put its
    own tracer in place)."""
    return not (
        isinstance(_tracer, trace.ProxyTracer)
        and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    )


def _random_id(bits: int) -> int:
    # As the SDK's RandomIdGenerator does: ids must be unique, not secret.
    while True:  # an all-zero id is invalid
        value = random.getrandbits(bits)
        if value:
            return value
