"""A queue's state for observers, read at most once per period however many ask.

``/metrics`` scrapers and dashboard pages all read through one :class:`Snapshots` per queue:
the first reader after the period ends runs the reads (``stats()`` and ``workers()``); readers
that arrive while it runs wait for it and share its result; every other reader gets the copy
in hand. So N scrapers cost the database what one does.

However large the queue, the read stays short: counts go through ``stats(limit=...)`` with a
:class:`CountLimit` that adapts the limit to how long the reads take. Small queues are counted
exactly; topics holding more than the limit in one state show lower bounds, marked
``estimated``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from squeal.message import TopicStats
from squeal.queue import Queue
from squeal.registry import WorkerInfo

#: Seconds a snapshot is served before it is read again (``squeal metrics --cache``).
PERIOD = 5.0


@dataclass
class CountLimit:
    """The ``limit`` of a snapshot's ``stats(limit=...)``, adapted to keep its reads short.

    A read slower than ``target`` halves the limit, and the limit stays below the value that
    was too slow for ``patience`` reads; a read that had to estimate and took under a quarter
    of ``target`` doubles it. So a queue whose every topic and state holds fewer messages than
    the limit is counted exactly, and a huge one costs about ``target`` per read.
    """

    value: int = 50
    target: float = 0.05
    least: int = 10
    most: int = 1_000_000
    patience: int = 60
    _ceiling: int = field(default=1_000_000, repr=False)
    _calm: int = field(default=0, repr=False)

    def after(self, took: float, estimated: bool) -> None:
        """Adapt to one read: it took ``took`` seconds and found a state over the limit."""
        if took > self.target:
            self._ceiling, self._calm = self.value, 0
            self.value = max(self.least, self.value // 2)
            return
        self._calm += 1
        if self._calm >= self.patience:
            self._ceiling, self._calm = self.most, 0
        if estimated and took < self.target / 4 and self.value * 2 < self._ceiling:
            self.value = min(self.most, self.value * 2)


@dataclass(frozen=True)
class Snapshot:
    """What a queue looked like at one moment."""

    stats: dict[str, TopicStats]
    workers: list[WorkerInfo]
    #: ``time.time()`` when the reads finished.
    taken_at: float
    #: Seconds the reads took.
    took: float
    #: The count limit of the read (``Queue.stats(limit=...)``).
    limit: int = 0


class Snapshots:
    """Serves ``queue``'s snapshot, reading it again at most once per ``period`` seconds."""

    def __init__(
        self, queue: Queue, period: float = PERIOD, limit: CountLimit | None = None
    ) -> None:
        self.queue = queue
        self.period = period
        self.limit = limit or CountLimit()
        self._held: Snapshot | None = None
        self._read_at = -float("inf")  # time.monotonic() of the held snapshot's read
        self._reading = threading.Lock()
        #: How many times the database was read (for tests and the dashboard's footer).
        self.reads = 0

    def get(self) -> Snapshot:
        """The current snapshot; read now if the held one is older than the period.

        Raises:
            SquealError: the read failed (the next call tries again).
        """
        held = self._held
        if held is not None and time.monotonic() - self._read_at < self.period:
            return held
        with self._reading:  # one read at a time; who waited for it takes its result
            held = self._held
            if held is not None and time.monotonic() - self._read_at < self.period:
                return held
            started, limit = time.monotonic(), self.limit.value
            stats = self.queue.stats(limit=limit)
            workers = self.queue.workers()
            finished = time.monotonic()
            self.reads += 1
            self.limit.after(finished - started, any(s.estimated for s in stats.values()))
            self._held = Snapshot(stats, workers, time.time(), finished - started, limit)
            self._read_at = finished
            return self._held


__all__ = ["PERIOD", "CountLimit", "Snapshot", "Snapshots"]
