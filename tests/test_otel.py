"""OpenTelemetry (squeal.otel) on every database, with the SDK's in-memory readers: a put
inside a span continues in the worker's span, consumer events become instruments, and the
queue's gauges equal ``q.stats()``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from squeal import Message, Queue, Worker
from squeal.otel import instrument, observe_queue, uninstrument

OWN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point the reader holds, by metric name."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(found: dict[str, list[Any]], name: str, **attributes: str) -> float:
    return sum(
        p.value if hasattr(p, "value") else p.count
        for p in found.get(name, [])
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


def test_a_put_inside_a_span_continues_in_the_worker_s_span(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=1)
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    observer = instrument(MeterProvider(metric_readers=[reader]), tracers)
    try:
        with tracers.get_tracer("app").start_as_current_span("request") as request:
            traced = q.put(b"traced", "jobs")
            own = q.put(b"own", "jobs", headers={"traceparent": OWN})
        plain = q.put(b"plain", "jobs")  # no span current: nothing added
        headers = {m.id: m.headers for m in q.peek("jobs", 3)}
        assert headers[traced]["traceparent"].split("-")[1] == format(
            request.get_span_context().trace_id, "032x"
        )
        assert headers[own] == {"traceparent": OWN}
        assert headers[plain] == {}

        def handle(msg: Message) -> None:
            if msg.payload == b"plain":
                raise ValueError("no")

        worker = Worker(q, handle, "jobs", concurrency=3, wait=0.1, registry_beat=None)
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        thread.start()
        deadline = time.monotonic() + 30
        while worker.stats.acked + worker.stats.failed < 3:
            assert time.monotonic() < deadline, worker.stats
            time.sleep(0.05)
        worker.stop()
        thread.join(timeout=30)
        found = points(reader)
    finally:
        uninstrument(observer)
    processed = {
        s.attributes["messaging.message.id"]: s
        for s in spans.get_finished_spans()
        if s.name == "process jobs"
    }
    assert set(processed) == {str(traced), str(own), str(plain)}
    child = processed[str(traced)]
    assert child.kind is SpanKind.CONSUMER
    assert child.parent is not None
    assert child.parent.span_id == request.get_span_context().span_id
    assert child.context.trace_id == request.get_span_context().trace_id
    assert format(processed[str(own)].context.trace_id, "032x") == OWN.split("-")[1]
    failed = processed[str(plain)]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.parent is None  # a new trace
    assert total(found, "squeal.claimed.messages", topic="jobs") == 3
    assert total(found, "squeal.settled.messages", topic="jobs", outcome="acked") == 2
    assert total(found, "squeal.settled.messages", topic="jobs", outcome="dead") == 1
    assert total(found, "squeal.handler.duration", topic="jobs", outcome="ok") == 2
    assert total(found, "squeal.handler.duration", topic="jobs", outcome="failed") == 1
    assert total(found, "squeal.claim.duration", topic="jobs") >= 1


def test_the_queue_gauges_equal_stats(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put_many([b"a", b"b"], "mail")
    q.put(b"later", "mail", delay=3600)
    assert q.get("mail") is not None
    reader = InMemoryMetricReader()
    snapshots = observe_queue(q, MeterProvider(metric_readers=[reader]), cache=60)
    found = points(reader)
    points(reader)  # a second collection within the period reads nothing
    assert snapshots.reads == 1
    gauges = {
        (p.attributes["topic"], p.attributes["state"]): p.value for p in found["squeal.messages"]
    }
    (stats,) = q.stats().values()
    assert gauges == {
        ("mail", "ready"): stats.ready,
        ("mail", "delayed"): stats.delayed,
        ("mail", "leased"): stats.leased,
        ("mail", "dead"): stats.dead,
    }
    assert [p.attributes["topic"] for p in found["squeal.oldest_ready.age"]] == ["mail"]
