"""Prometheus metrics (``pip install 'squeal[metrics]'``; docs/metrics.md).

Two kinds, registered separately:

* :func:`register_queue` (and ``squeal metrics``): what the queue holds, read from the
  database at most once per cache period however many scrapers ask (squeal.snapshot) --
  ``squeal_messages{topic,state}``, ``squeal_oldest_ready_age_seconds{topic}``,
  ``squeal_topic_paused{topic}``, ``squeal_workers{kind}`` and
  ``squeal_workers_in_flight{kind}`` from the worker registry, and the read's own cost.
* :func:`register_consumers`: what this process's consumers did, counted in memory as it
  happens (squeal.observe), nothing written to the database -- claims and their latency,
  messages acked, nacked, dead-lettered and released, lost leases, handler seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as missing:  # pragma: no cover - the extra is installed in the tests
    raise ImportError(
        "squeal.metrics needs prometheus_client: pip install 'squeal[metrics]'"
    ) from missing

from squeal import observe
from squeal.queue import Queue
from squeal.snapshot import PERIOD, Snapshot, Snapshots

#: The states of ``squeal_messages``: TopicStats' counts.
STATES = ("ready", "delayed", "leased", "dead")

#: Histogram buckets (seconds) of a claim's statements and of a handler's run.
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class QueueCollector(Collector):
    """The queue's gauges, from a :class:`~squeal.snapshot.Snapshots` (shared with a
    dashboard in the same process, if given)."""

    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def describe(self) -> Iterable[Any]:
        return []  # no read at registration: the families are built per scrape

    def collect(self) -> Iterator[Any]:
        yield from families(self.snapshots.get())


def families(snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
    """The gauge families of one snapshot."""
    messages = GaugeMetricFamily(
        "squeal_messages", "Messages per topic and state.", labels=["topic", "state"]
    )
    oldest = GaugeMetricFamily(
        "squeal_oldest_ready_age_seconds",
        "Seconds since the oldest ready message of the topic was enqueued (0: none ready).",
        labels=["topic"],
    )
    paused = GaugeMetricFamily(
        "squeal_topic_paused", "1 if the topic is paused, else 0.", labels=["topic"]
    )
    estimated = GaugeMetricFamily(
        "squeal_messages_estimated",
        "1 if the topic's counts are lower bounds (a state held more messages than the "
        "snapshot's count limit), else 0.",
        labels=["topic"],
    )
    for topic, stats in snapshot.stats.items():
        for state in STATES:
            messages.add_metric([topic, state], getattr(stats, state))
        oldest.add_metric([topic], stats.oldest_ready_age or 0.0)
        paused.add_metric([topic], 1.0 if stats.paused else 0.0)
        estimated.add_metric([topic], 1.0 if stats.estimated else 0.0)
    workers = GaugeMetricFamily(
        "squeal_workers", "Running workers (the worker registry).", labels=["kind"]
    )
    in_flight = GaugeMetricFamily(
        "squeal_workers_in_flight",
        "Messages held by running workers' handlers at their last heartbeat.",
        labels=["kind"],
    )
    for kind in ("thread", "asyncio"):
        mine = [w for w in snapshot.workers if w.kind == kind]
        workers.add_metric([kind], len(mine))
        in_flight.add_metric([kind], sum(w.in_flight for w in mine))
    read = GaugeMetricFamily(
        "squeal_snapshot_read_seconds", "Seconds the last read of the queue's state took."
    )
    read.add_metric([], snapshot.took)
    taken = GaugeMetricFamily(
        "squeal_snapshot_timestamp_seconds", "When the queue's state was last read (Unix time)."
    )
    taken.add_metric([], snapshot.taken_at)
    limit = GaugeMetricFamily(
        "squeal_snapshot_count_limit",
        "Messages per topic and state the last read counted exactly (above: lower bounds).",
    )
    limit.add_metric([], snapshot.limit)
    yield from (messages, oldest, paused, estimated, workers, in_flight, read, taken, limit)


def register_queue(
    queue: Queue,
    *,
    cache: float = PERIOD,
    registry: CollectorRegistry = REGISTRY,
    snapshots: Snapshots | None = None,
) -> QueueCollector:
    """Expose ``queue``'s gauges on ``registry``, read at most once per ``cache`` seconds
    (or through ``snapshots``, to share them with a dashboard)."""
    collector = QueueCollector(snapshots or Snapshots(queue, cache))
    registry.register(collector)
    return collector


class ConsumerMetrics(observe.Observer):
    """Counters and histograms of this process's consumers (an observer, squeal.observe)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.claims = Histogram(
            "squeal_claim_seconds",
            "Seconds a claim's statements took (waiting for messages excluded).",
            ["topic"],
            buckets=CLAIM_BUCKETS,
            registry=registry,
        )
        self.claimed_total = Counter(
            "squeal_claimed_messages", "Messages leased by claims.", ["topic"], registry=registry
        )
        self.settled_total = Counter(
            "squeal_settled_messages",
            "Messages settled: acked, nacked (to be retried), dead (nacked on the last "
            "attempt) or released.",
            ["topic", "outcome"],
            registry=registry,
        )
        self.lost = Counter(
            "squeal_lease_lost",
            "Acks, nacks, releases and touches that found a lease gone.",
            ["operation"],
            registry=registry,
        )
        self.handlers = Histogram(
            "squeal_handler_seconds",
            "Seconds workers' handlers ran.",
            ["topic", "outcome"],
            buckets=HANDLER_BUCKETS,
            registry=registry,
        )

    def claimed(self, topic: str, count: int, seconds: float) -> None:
        self.claims.labels(topic).observe(seconds)
        if count:
            self.claimed_total.labels(topic).inc(count)

    def settled(self, topic: str, outcome: str, count: int) -> None:
        self.settled_total.labels(topic, outcome).inc(count)

    def lease_lost(self, operation: str, topic: str | None) -> None:
        self.lost.labels(operation).inc()

    def handled(self, topic: str, seconds: float, failed: bool) -> None:
        self.handlers.labels(topic, "failed" if failed else "ok").observe(seconds)


_consumers: dict[int, ConsumerMetrics] = {}
_consumers_guard = threading.Lock()


def register_consumers(registry: CollectorRegistry = REGISTRY) -> ConsumerMetrics:
    """Count this process's consumer events on ``registry`` (once per registry: a second
    call returns the first's)."""
    with _consumers_guard:
        found = _consumers.get(id(registry))
        if found is None:
            found = _consumers[id(registry)] = ConsumerMetrics(registry)
            observe.add_observer(found)
        return found


def unregister_consumers(registry: CollectorRegistry = REGISTRY) -> None:
    """Stop counting on ``registry`` and remove its consumer metrics."""
    with _consumers_guard:
        found = _consumers.pop(id(registry), None)
    if found is None:
        return
    observe.remove_observer(found)
    for metric in (found.claims, found.claimed_total, found.settled_total, found.lost):
        registry.unregister(metric)
    registry.unregister(found.handlers)


__all__ = [
    "CLAIM_BUCKETS",
    "HANDLER_BUCKETS",
    "STATES",
    "ConsumerMetrics",
    "QueueCollector",
    "families",
    "register_consumers",
    "register_queue",
    "unregister_consumers",
]
