"""A worker's settlements, gathered from its handler threads and committed in batches.

A handler thread hands each finished message over (to be acked, or nacked with the handler's
error) and takes the next one at once; one completer thread commits what gathered every
``every`` seconds, or sooner once ``batch`` messages wait: the acks in one transaction
(:meth:`Queue.ack_many`), each nack with its own error. A message stays in flight, its lease
extended by the worker's heartbeat, until its settlement committed, so a crash between a
handler's return and the flush costs a redelivery once the lease runs out, never a loss. The
leases fence every settlement as they fence one: a settlement whose lease was lost is refused
by the database and logged, never applied. A flush that fails for another reason (the
database unreachable) is tried again while the leases run; the messages stay in flight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from squeal.errors import LeaseLost, SquealError
from squeal.log import Leased
from squeal.message import Message
from squeal.queue import Queue

log = logging.getLogger("squeal.worker")

#: Settlements waiting at most: a handler thread that would add one more waits for a flush.
MOST = 1000
#: Seconds between tries of a flush that failed: doubling from the first to the last.
RETRY = (0.05, 2.0)
#: Seconds a flush is tried again after the database refused it (unreachable, or a missing
#: privilege). Then its messages leave the worker's hands unsettled: their leases are no longer
#: extended and run out, and the messages are redelivered.
GIVE_UP = 60.0


@dataclass(eq=False)  # compared and hashed by identity: one per lease
class InFlight:
    """A message a worker claimed and has not settled yet (waiting, running, or handled)."""

    message: Message
    #: ``time.monotonic()`` at which the heartbeat extends the lease next.
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Settled by the completer (or in the handler's transaction), or released at shutdown.
    done: bool = False
    #: The handler's exception, for a nack (None: an ack).
    error: Exception | None = None
    #: Its settlement is being committed (an asyncio heartbeat, which takes no lock, skips it).
    settling: bool = False


#: Told of each flush, ``settled(entries, acked, failed)``: the entries it took out of flight,
#: how many of them the database acked, and how many it nacked (fewer than the entries when
#: some leases were lost).
Settled = Callable[[list[InFlight], int, int], None]
#: Runs a flush (``runner(flush, taken)``) and returns its result: at once on the completer's
#: thread by default; an AsyncWorker's runs it in the bridge on its event loop.
Runner = Callable[[Callable[[list[InFlight]], bool], list[InFlight]], bool]


def _at_once(flush: Callable[[list[InFlight]], bool], taken: list[InFlight]) -> bool:
    return flush(taken)


class Completer:
    """Commits the settlements of a worker's handled messages, in batches, on one thread.

    Args:
        queue: the worker's queue.
        settled: called after each flush (see :data:`Settled`), on the completer's thread.
        every: seconds a settlement waits at most for others to share its flush.
        batch: settlements that flush at once, without waiting ``every``.
        runner: how a flush runs (see :data:`Runner`).
        bounded: whether :meth:`add` waits while :data:`MOST` settlements wait (False on an
            event loop, which must never block).
    """

    def __init__(
        self,
        queue: Queue,
        settled: Settled,
        *,
        every: float,
        batch: int,
        runner: Runner = _at_once,
        bounded: bool = True,
    ) -> None:
        self._queue = queue
        self._runner = runner
        self._bounded = bounded
        self._settled = settled
        self._every = every
        self._batch = batch
        self._pending: list[InFlight] = []
        self._first = 0.0  # when the oldest pending settlement arrived
        self._changed = threading.Condition()
        self._closing = False

    def add(self, entry: InFlight) -> None:
        """Settle ``entry`` (an ack, or a nack when ``entry.error`` is set) at the next flush;
        waits while :data:`MOST` settlements wait already."""
        with self._changed:
            while self._bounded and len(self._pending) >= MOST and not self._closing:
                self._changed.wait(0.1)
            if not self._pending:
                self._first = time.monotonic()
            self._pending.append(entry)
            if len(self._pending) == 1 or len(self._pending) >= self._batch:
                self._changed.notify_all()

    def hurry(self) -> None:
        """From now on, flush each settlement at once (a stopping worker's)."""
        with self._changed:
            self._every = 0.0
            self._changed.notify_all()

    def close(self) -> None:
        """Flush what waits, then let :meth:`run` return."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()

    def run(self) -> None:
        """Flush until :meth:`close`d and nothing waits (the completer thread's body)."""
        retry = RETRY[0]
        failing_since: float | None = None
        while True:
            taken = self._next()
            if taken is None:
                return
            try:
                flushed = self._runner(self._flush, taken)
            except Exception:  # a defect: never let the messages hang in flight
                log.exception("squeal worker: settling %d message(s) failed", len(taken))
                self._abandon(taken)
                continue
            if flushed:
                retry, failing_since = RETRY[0], None
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            if self._closing or now - failing_since > GIVE_UP:
                self._abandon(taken)
                continue
            with self._changed:  # put back first, in their order: tried again after a pause
                self._pending[:0] = [e for e in taken if not e.done]
                self._changed.wait(retry)
            retry = min(retry * 2, RETRY[1])

    def _abandon(self, taken: list[InFlight]) -> None:
        """Give up settling ``taken``: out of flight unsettled, their leases left to run out."""
        left = [e for e in taken if not e.done]
        for entry in left:
            entry.done = True
        if left:
            log.error(
                "squeal worker: %d settlement(s) not committed; their messages are redelivered "
                "once their leases run out",
                len(left),
            )
        self._settled(taken, 0, 0)

    def _next(self) -> list[InFlight] | None:
        """The next flush's settlements, once ``every`` passed or a batch is full; None when
        closed with nothing left."""
        with self._changed:
            while not self._pending:
                if self._closing:
                    return None
                self._changed.wait()
            while len(self._pending) < self._batch and not self._closing:
                left = self._first + self._every - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            taken, self._pending = self._pending, []
            self._changed.notify_all()  # room for handler threads that waited
            return taken

    def _flush(self, taken: list[InFlight]) -> bool:
        """Commit ``taken``'s settlements; False when the database could not be reached (the
        caller tries again)."""
        with contextlib.ExitStack() as held:
            for entry in taken:  # the heartbeat extends no lease while its ack commits
                held.enter_context(entry.lock)
            for entry in taken:  # settled by the handler itself: nothing left to do
                if not entry.done and (entry.message.settled or entry.message.pending):
                    entry.done = True
            live = [e for e in taken if not e.done]
            self._settled([e for e in taken if e.done], 0, 0)  # out of flight, settled or not
            for entry in live:
                entry.settling = True
            for entry in taken:
                if entry.done and entry.error is not None:
                    log_failure(
                        entry.message, entry.error, "it was released at shutdown", logging.WARNING
                    )
            try:
                self._ack([e for e in live if e.error is None])
                for entry in live:
                    if entry.error is not None:
                        self._nack(entry)
            except SquealError as error:  # LeaseLost is handled per settlement
                log.warning("squeal worker: settlements not committed yet (tried again): %s", error)
                for entry in live:
                    entry.settling = False
                return False
        return True

    def _ack(self, entries: list[InFlight]) -> None:
        if not entries:
            return
        lost = 0
        try:
            self._queue.ack_many([e.message for e in entries])
        except LeaseLost as error:
            lost = error.lost
            log.warning("squeal worker: %s", error)
        for entry in entries:
            entry.done = True
        self._settled(entries, len(entries) - lost, 0)

    def _nack(self, entry: InFlight) -> None:
        assert entry.error is not None
        try:
            entry.message.nack(error=entry.error)
        except LeaseLost as error:
            entry.done = True
            log_failure(entry.message, entry.error, "its nack failed", logging.WARNING)
            log.warning("squeal worker: message %d: %s", entry.message.id, error)
            self._settled([entry], 0, 0)
            return
        entry.done = True
        self._settled([entry], 0, 1)
        nacked(entry.message, entry.error, self._queue.max_attempts)


def nacked(msg: Leased, error: Exception, max_attempts: int | None) -> None:
    """Log a handler's exception after its message was nacked: dead, or to be retried.
    ``max_attempts`` is the queue's; the message's own (a put's) comes first."""
    if msg.max_attempts is not None:
        max_attempts = msg.max_attempts
    if max_attempts is not None and msg.attempts >= max_attempts:
        log_failure(msg, error, f"it is dead after {max_attempts} attempts", logging.ERROR)
    else:
        log_failure(msg, error, "it will be retried", logging.WARNING)


def log_failure(msg: Leased, error: Exception, outcome: str, level: int) -> None:
    """Log a handler's exception with its traceback (its text is the user's, not a payload)."""
    log.log(
        level,
        "squeal worker: message %d of topic %r failed on attempt %d and %s: %s: %s",
        msg.id,
        msg.topic,
        msg.attempts,
        outcome,
        type(error).__name__,
        " ".join(str(error).split())[:200],
        exc_info=error,
    )


__all__ = [
    "GIVE_UP",
    "MOST",
    "RETRY",
    "Completer",
    "InFlight",
    "Runner",
    "Settled",
    "log_failure",
    "nacked",
]
