"""The dashboard's view of the queue over time: one read of its state per period, shared by
every page, event stream and ``/metrics`` scrape of the process, and the short history the
sparklines draw (kept in memory; nothing is written to the database for it)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from squeal.snapshot import CountLimit, Snapshot
from squeal.web.backend import Backend

#: Snapshots kept for the sparklines (one per period: 60 x 5 s = 5 minutes).
HISTORY = 60


@dataclass
class Point:
    """What one snapshot adds to the history."""

    at: float
    #: Ready messages per topic.
    ready: dict[str, int]
    #: Messages settled per second by the registered workers since the previous snapshot
    #: (acked + failed; None for the first).
    rate: float | None


@dataclass
class Live:
    """The latest snapshot and the history, refreshed at most once per ``period``."""

    backend: Backend
    period: float
    snapshot: Snapshot | None = None
    history: deque[Point] = field(default_factory=lambda: deque(maxlen=HISTORY))
    reads: int = 0
    limit: CountLimit = field(default_factory=CountLimit)
    _read_at: float = -float("inf")
    _lock: asyncio.Lock | None = None

    async def get(self) -> Snapshot:
        """The current snapshot; read now if the held one is older than the period."""
        if self._fresh() and self.snapshot is not None:
            return self.snapshot
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one read at a time; who waited for it takes its result
            if self._fresh() and self.snapshot is not None:
                return self.snapshot
            started, limit = time.monotonic(), self.limit.value
            stats = await self.backend.stats(limit)
            workers = await self.backend.workers()
            finished = time.monotonic()
            self.reads += 1
            self.limit.after(finished - started, any(s.estimated for s in stats.values()))
            snapshot = Snapshot(stats, workers, time.time(), finished - started, limit)
            self._remember(snapshot)
            self.snapshot, self._read_at = snapshot, finished
            return snapshot

    def expire(self) -> None:
        """Read again on the next ``get`` (after an action changed the queue)."""
        self._read_at = -float("inf")

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at < self.period

    def _remember(self, snapshot: Snapshot) -> None:
        rate = None
        if self.snapshot is not None:
            before = {w.id: w.acked + w.failed for w in self.snapshot.workers}
            done = sum(
                w.acked + w.failed - before[w.id] for w in snapshot.workers if w.id in before
            )
            elapsed = snapshot.taken_at - self.snapshot.taken_at
            rate = done / elapsed if elapsed > 0 else None
        ready = {topic: stats.ready for topic, stats in snapshot.stats.items()}
        self.history.append(Point(snapshot.taken_at, ready, rate))

    def series(self, topic: str) -> list[int]:
        """The topic's ready count at each remembered snapshot (0 where it had no row)."""
        return [point.ready.get(topic, 0) for point in self.history]

    def rates(self) -> list[float]:
        """Messages settled per second by the workers, per remembered snapshot."""
        return [point.rate for point in self.history if point.rate is not None]


__all__ = ["HISTORY", "Live", "Point"]
