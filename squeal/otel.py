"""OpenTelemetry metrics and the put -> process trace link (``pip install 'squeal[otel]'``:
opentelemetry-api; docs/metrics.md#opentelemetry).

:func:`instrument` makes this process's consumers report through the OpenTelemetry API (the
same events as squeal.metrics: claims and their duration, settlements by outcome, lost leases,
handler durations) and, unless ``propagate=False``, carries trace context across the queue:

* a put made while a span is current stores that span's context in the message's headers
  (W3C ``traceparent``/``tracestate``, unless the put gave its own);
* a worker runs each handler in a span ``process <topic>`` (kind CONSUMER) whose parent is the
  context the message carries, so the producer's trace continues in the consumer.

:func:`observe_queue` adds the queue's gauges (messages per topic and state, oldest ready age),
read at most once per cache period (squeal.snapshot). Without an SDK configured the API does
nothing, at the API's no-op cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
except ImportError as missing:  # pragma: no cover - the extra is installed in the tests
    raise ImportError(
        "squeal.otel needs opentelemetry-api: pip install 'squeal[otel]'"
    ) from missing

from squeal import observe
from squeal.queue import Queue
from squeal.snapshot import PERIOD, Snapshots
from squeal.version import __version__

#: The instrumentation scope's name.
SCOPE = "squeal"


class OtelObserver(observe.Observer):
    """Consumer events as OpenTelemetry instruments, and trace context through headers."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        *,
        propagate: bool = True,
    ) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        self.propagate = propagate
        self.claims = meter.create_histogram(
            "squeal.claim.duration", "s", "How long a claim's statements took"
        )
        self.claimed_messages = meter.create_counter(
            "squeal.claimed.messages", "{message}", "Messages leased by claims"
        )
        self.settled_messages = meter.create_counter(
            "squeal.settled.messages",
            "{message}",
            "Messages acked, nacked, dead-lettered or released",
        )
        self.lost = meter.create_counter(
            "squeal.lease.lost", "{operation}", "Operations that found a lease gone"
        )
        self.handlers = meter.create_histogram(
            "squeal.handler.duration", "s", "How long workers' handlers ran"
        )

    def claimed(self, topic: str, count: int, seconds: float) -> None:
        self.claims.record(seconds, {"topic": topic})
        if count:
            self.claimed_messages.add(count, {"topic": topic})

    def settled(self, topic: str, outcome: str, count: int) -> None:
        self.settled_messages.add(count, {"topic": topic, "outcome": outcome})

    def lease_lost(self, operation: str, topic: str | None) -> None:
        self.lost.add(1, {"operation": operation})

    def handled(self, topic: str, seconds: float, failed: bool) -> None:
        self.handlers.record(seconds, {"topic": topic, "outcome": "failed" if failed else "ok"})

    def stamped(self, topic: str, headers: dict[str, str]) -> dict[str, str]:
        if not self.propagate or "traceparent" in headers:
            return headers
        if not trace.get_current_span().get_span_context().is_valid:
            return headers  # no trace to continue
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return {**headers, **carrier}

    def handling(self, message: observe.Handled) -> AbstractContextManager[None] | None:
        if not self.propagate:
            return None
        return self._span(message)

    @contextmanager
    def _span(self, message: observe.Handled) -> Iterator[None]:
        parent = propagate.extract(message.headers)
        attributes: dict[str, str | int] = {
            "messaging.system": "squeal",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
            "messaging.message.id": str(message.id),
            "messaging.message.delivery_count": message.attempts,
        }
        token = otel_context.attach(parent)
        try:
            with self.tracer.start_as_current_span(
                f"process {message.topic}",
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=True,
                set_status_on_exception=True,
            ) as span:
                try:
                    yield
                except BaseException as error:
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                    raise
        finally:
            otel_context.detach(token)


def instrument(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    propagate: bool = True,
) -> OtelObserver:
    """Report this process's consumer events through OpenTelemetry (the global providers
    unless given) and, with ``propagate``, carry trace context from puts to handlers. Undo
    with :func:`uninstrument`."""
    observer = OtelObserver(meter_provider, tracer_provider, propagate=propagate)
    observe.add_observer(observer)
    return observer


def uninstrument(observer: OtelObserver) -> None:
    """Stop what :func:`instrument` started."""
    observe.remove_observer(observer)


def observe_queue(
    queue: Queue,
    meter_provider: MeterProvider | None = None,
    *,
    cache: float = PERIOD,
    snapshots: Snapshots | None = None,
) -> Snapshots:
    """Observable gauges of ``queue``'s state (``squeal.messages`` by topic and state,
    ``squeal.oldest_ready.age``, ``squeal.messages.estimated``), read at most once per
    ``cache`` seconds however often the SDK collects;
    the :class:`~squeal.snapshot.Snapshots` they read."""
    shared = snapshots or Snapshots(queue, cache)
    meter = metrics.get_meter(SCOPE, __version__, meter_provider)

    def messages(options: CallbackOptions) -> Iterable[Observation]:
        for topic, stats in shared.get().stats.items():
            for state in ("ready", "delayed", "leased", "dead"):
                yield Observation(getattr(stats, state), {"topic": topic, "state": state})

    def oldest(options: CallbackOptions) -> Iterable[Observation]:
        for topic, stats in shared.get().stats.items():
            yield Observation(stats.oldest_ready_age or 0.0, {"topic": topic})

    def estimated(options: CallbackOptions) -> Iterable[Observation]:
        for topic, stats in shared.get().stats.items():
            yield Observation(1 if stats.estimated else 0, {"topic": topic})

    meter.create_observable_gauge(
        "squeal.messages", [messages], "{message}", "Messages per topic and state"
    )
    meter.create_observable_gauge(
        "squeal.oldest_ready.age", [oldest], "s", "Age of the oldest ready message"
    )
    meter.create_observable_gauge(
        "squeal.messages.estimated",
        [estimated],
        "1",
        "1 if the topic's counts are lower bounds (a state over the snapshot's count limit)",
    )
    return shared


__all__ = ["SCOPE", "OtelObserver", "instrument", "observe_queue", "uninstrument"]
