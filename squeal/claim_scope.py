"""Where a claim looks: the ready messages after a floor, and the due messages since a time.

Every message a queue delivers is deleted, and every claim moves a row from the ready part of
the claim index to the waiting part. The database leaves the old index entries behind until
its clean-up (PostgreSQL's VACUUM, InnoDB's purge) removes them, and a clean-up that is behind,
or blocked by a snapshot another session holds, leaves them for minutes or hours. They pile up
exactly where a claim starts walking: before the first ready message (claimed rows) and before
now in the due index (acked rows, at the end of their lease). A claim that walked them every
time slowed down as they piled up (measured on PostgreSQL at its defaults: 0.47 of the first
window's rate after a minute; with a snapshot held, 0.15 after two minutes).

So a queue object remembers, per topic:

- the **floor**: the claim key (priority, id) of the last message its last claim took. Its
  next claim starts the ready walk after it, past the entries its own claims left behind.
- the **sweeps**: a sweep also looks at the due messages (delay, backoff or lease over, and
  messages released or redriven: those become due at once rather than ready, since their old
  claim keys lie below the floors of other queue objects) and at ready messages of a higher
  priority than the floor's (put by someone else since). A claim sweeps when the queue object
  has not swept the topic for :data:`SWEEP_SECONDS`, when its last claim came back short
  (fewer messages than asked for: a topic without a backlog sees due messages as soon as they
  are due), for the rest of a claim that did not sweep and came back short, and next after
  this queue object released, nacked or redrove a message of the topic or put one above its
  floor.
- **since when** it swept: the next sweep walks the due index only over the time since the
  last one began (measured by this process's monotonic clock, bound as a duration back from
  the database's now) plus :data:`SINCE_MARGIN_SECONDS`, which covers squeal's own statements
  that committed late (they wait at most LOCK_TIMEOUT_SECONDS for a lock).

A claim that comes back short forgets the floor: the topic's ready messages past it have run
out, and the next claim (a sweep) walks them all, so nothing put with an id below the floor
(tables created afresh, an id sequence reset) is missed.

Every :data:`FULL_SWEEP_SECONDS` (or, when the last such sweep was slow, every
:data:`FULL_SWEEP_COST_RATIO` times its duration) a sweep walks both indexes from the start,
whatever they hold, for what no bound above covers: a delayed message put in a transaction
that stayed open longer than its delay plus the margin, a message another consumer's claim
skipped and then rolled back, a message put at the floor's priority in a transaction that
committed after later ids, and due messages another queue object promoted but did not take
(its own next claims take them at once).

That walk visits every entry the clean-up has not removed yet. With a snapshot held elsewhere
on PostgreSQL, that is every message delivered since the snapshot began: measured at 10 s for
one sweep five minutes into a soak, a claim that long once a minute. Spacing the walks by their
cost keeps them below 1/FULL_SWEEP_COST_RATIO of the claiming time, however far the clean-up
falls behind; the rare cases then wait longer, in proportion.

On a topic with a backlog, messages that fall due or become ready out of order through someone
else therefore join the claim order within :data:`SWEEP_SECONDS` (the rare cases above within
FULL_SWEEP_SECONDS, or longer while the clean-up is behind); on a topic without one, and for
what the queue object did itself, at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from squeal.dialects.base import EVERYWHERE, LOCK_TIMEOUT_SECONDS, ClaimedRow, ClaimScope, Key

#: A claimed row's claim key (neg_priority, id), for max(): the claim's last row.
_CLAIM_KEY = itemgetter(2, 0)

#: The longest a queue object claims from a topic without sweeping it.
SWEEP_SECONDS = 1.0
#: How often a sweep walks the whole due index (see the module's docstring).
FULL_SWEEP_SECONDS = 60.0
#: A sweep of both whole indexes waits at least this many times as long as the last one took.
FULL_SWEEP_COST_RATIO = 50.0
#: How much further back than the last sweep's start the next sweep walks the due index.
SINCE_MARGIN_SECONDS = 2.0 * LOCK_TIMEOUT_SECONDS
#: Topics remembered per queue object; beyond that the memory starts afresh (a sweep each).
_MAX_TOPICS = 10_000


@dataclass
class _Topic:
    after: Key | None = None
    must_sweep: bool = False
    swept_at: float | None = None  # monotonic time the last sweep began
    full_at: float | None = None  # monotonic time the last sweep of both whole indexes began
    full_took: float = 0.0  # how long that sweep took, in seconds


class ClaimScopes:
    """What one queue object remembers about its claims, per topic (see the module)."""

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        self._lock = threading.Lock()

    def scope(self, topic: str, now: float) -> ClaimScope:
        """Where a claim on ``topic`` starting at ``now`` (monotonic) looks."""
        with self._lock:
            t = self._topics.get(topic)
            if t is None or t.swept_at is None or t.full_at is None:
                return EVERYWHERE
            if now - t.full_at >= max(FULL_SWEEP_SECONDS, t.full_took * FULL_SWEEP_COST_RATIO):
                return EVERYWHERE
            sweep = t.must_sweep or now - t.swept_at >= SWEEP_SECONDS
            window = now - t.swept_at + SINCE_MARGIN_SECONDS
            return ClaimScope(sweep=sweep, after=t.after, due_within_ms=math.ceil(window * 1000))

    def claimed(
        self,
        topic: str,
        scope: ClaimScope,
        *,
        started: float,
        finished: float,
        rows: Sequence[ClaimedRow],
        asked: int,
    ) -> None:
        """A claim in ``scope`` that ran from ``started`` to ``finished`` (monotonic) took
        ``rows`` of ``asked``."""
        with self._lock:
            t = self._topics.get(topic)
            if t is None:
                if len(self._topics) >= _MAX_TOPICS:
                    self._topics.clear()
                t = self._topics[topic] = _Topic()
            if scope.sweep:
                t.must_sweep = False
                t.swept_at = started
                if scope.due_within_ms is None:
                    t.full_at, t.full_took = started, finished - started
            if len(rows) < asked:
                t.must_sweep, t.after = True, None
            else:
                last = max(rows, key=_CLAIM_KEY)
                t.after = (last[2], last[0])

    def reopen(self, topic: str) -> None:
        """This queue object made a message of ``topic`` due out of order (release, nack,
        redrive): its next claim sweeps."""
        with self._lock:
            t = self._topics.get(topic)
            if t is not None:
                t.must_sweep = True

    def put(self, topic: str, neg_priority: int) -> None:
        """This queue object put messages of ``neg_priority``: a claim key below the floor
        makes its next claim sweep."""
        with self._lock:
            t = self._topics.get(topic)
            if t is not None and t.after is not None and neg_priority < t.after[0]:
                t.must_sweep = True


__all__ = [
    "FULL_SWEEP_COST_RATIO",
    "FULL_SWEEP_SECONDS",
    "SINCE_MARGIN_SECONDS",
    "SWEEP_SECONDS",
    "ClaimScopes",
]
