"""A queue's state for observers, read at most once per period however many ask.

``/metrics`` scrapers and dashboard pages all read through one :class:`Snapshots` per queue:
the first reader after the period ends runs the reads (``stats()`` and ``workers()``); readers
that arrive while it runs wait for it and share its result; every other reader gets the copy
in hand. So N scrapers cost the database what one does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from squeal.message import TopicStats
from squeal.queue import Queue
from squeal.registry import WorkerInfo

#: Seconds a snapshot is served before it is read again (``squeal metrics --cache``).
PERIOD = 5.0


@dataclass(frozen=True)
class Snapshot:
    """What a queue looked like at one moment."""

    stats: dict[str, TopicStats]
    workers: list[WorkerInfo]
    #: ``time.time()`` when the reads finished.
    taken_at: float
    #: Seconds the reads took.
    took: float


class Snapshots:
    """Serves ``queue``'s snapshot, reading it again at most once per ``period`` seconds."""

    def __init__(self, queue: Queue, period: float = PERIOD) -> None:
        self.queue = queue
        self.period = period
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
            started = time.monotonic()
            stats = self.queue.stats()
            workers = self.queue.workers()
            finished = time.monotonic()
            self.reads += 1
            self._held = Snapshot(stats, workers, time.time(), finished - started)
            self._read_at = finished
            return self._held


__all__ = ["PERIOD", "Snapshot", "Snapshots"]
