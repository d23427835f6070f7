"""Puts gathered for a moment and stored together: a producer's sends at ``put_many``'s pace.

:class:`Linger` takes puts and returns at once; a thread of its own stores what gathered
``linger`` seconds after the first of it arrived (at once when ``batch`` wait, or when someone
calls :meth:`Linger.flush`), with one :meth:`Queue.put_many` per topic and priority, each in
the order its puts came. kombu's transport sends with one when its ``publish_linger`` option
is set (docs/celery.md).

What it costs: a put returns before it is stored, as a send to a broker without publisher
confirms does. A process that dies loses every put still waiting: those of the last
``linger`` seconds, and more while the database is slow or unreachable (up to ``most``).
:meth:`Linger.close`, :func:`close_all` and the interpreter's exit store what waits first;
:func:`flush_all` stores what every Linger of the process holds (the kombu transport calls
it before an ack, and after each Celery task). A put the database refuses as invalid, or whose
outcome a dropped connection hid (``PutOutcomeUnknown``), is logged, not tried again; while
the database cannot be reached stores are tried again, and once they have failed for
``give_up`` seconds without a success, what waits is logged as lost, batch by batch, until one
succeeds again.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass

from squeal import validation as check
from squeal.errors import PutOutcomeUnknown, SquealError, ValidationError
from squeal.queue import Queue

log = logging.getLogger("squeal.linger")

#: Seconds between tries of a store that failed: doubling from the first to the last.
RETRY = (0.05, 2.0)
#: Seconds stores may keep failing before what waits is logged as lost.
GIVE_UP = 60.0
#: Seconds a close (and the interpreter's exit) waits for what waits to be stored.
AT_EXIT = 10.0


@dataclass(frozen=True)
class _Put:
    payload: bytes
    topic: str
    priority: int


#: Every Linger of this process that has not been closed (see flush_all, close_all).
_LIVE: weakref.WeakSet[Linger] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _live() -> list[Linger]:
    with _LIVE_LOCK:
        return list(_LIVE)


class Linger:
    """Stores puts in batches on a thread of its own (see the module's documentation).

    Args:
        queue: where the puts go.
        linger: seconds the first waiting put waits for others to share its store.
        batch: puts stored at once, without waiting ``linger``.
        most: puts waiting at most; a put that would add one more waits for a store.
        give_up: seconds stores may keep failing before what waits is logged as lost.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        linger: float,
        batch: int = 500,
        most: int = 10_000,
        give_up: float = GIVE_UP,
    ) -> None:
        self._queue = queue
        self.linger = check.seconds(linger, "linger")
        self._batch = check.count(batch, "batch")
        self._most = max(check.count(most, "most"), self._batch)
        self._give_up = check.seconds(give_up, "give_up")
        self._reset()
        self._closed = False
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _reset(self) -> None:
        """An empty Linger (a forked child's copy holds its parent's puts: the parent stores
        them)."""
        self._changed = threading.Condition()
        self._pending: list[_Put] = []
        self._first = -math.inf  # when the oldest waiting put arrived (-inf: long ago)
        self._sent = 0  # puts taken so far, in order
        self._stored = 0  # of those, how many were stored or given up
        self._hurry = 0  # flushes waiting: store without lingering
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None  # stores fail since then
        self._abandon = False  # a close timed out: what is left is not tried again

    def put(self, payload: bytes, topic: str = "default", *, priority: int = 0) -> None:
        """Store ``payload`` in ``topic`` soon (invalid input raises here, at once); after
        :meth:`close`, at once."""
        item = _Put(
            check.payload(payload, self._queue.max_payload_size),
            check.text(topic, "topic"),
            check.priority(priority),
        )
        with self._changed:
            while len(self._pending) >= self._most and not self._closed:
                self._changed.wait(0.1)
            if not self._closed:
                if self._thread is None:  # first: a thread that fails to start takes nothing
                    thread = threading.Thread(target=self._run, name="squeal-linger", daemon=True)
                    thread.start()
                    self._thread = thread
                if not self._pending:
                    self._first = time.monotonic()
                self._pending.append(item)
                self._sent += 1
                if len(self._pending) == 1 or len(self._pending) >= self._batch:
                    self._changed.notify_all()
                return
        self._queue.put(item.payload, item.topic, priority=item.priority)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every put made before this call is stored or given up (and logged);
        False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            target = self._sent
            if self._stored >= target:
                return True
            self._hurry += 1
            self._changed.notify_all()
            try:
                while self._stored < target:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._changed.wait(left)
                return True
            finally:
                self._hurry -= 1

    def close(self, timeout: float = AT_EXIT) -> None:
        """Store what waits and stop the thread; puts from now on are stored at once (so one
        made while the close still stores may land before those). What is not stored after
        ``timeout`` seconds is given up and logged as lost (a store under way then may still
        complete)."""
        with _LIVE_LOCK:
            _LIVE.discard(self)
        with self._changed:
            self._closed = True
            thread = self._thread
            self._changed.notify_all()
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        with self._changed:
            left = self._sent - self._stored
            self._abandon = left > 0
        if left:
            log.error(
                "squeal: %d put(s) not stored %gs after the Linger closed: given up, lost "
                "(unless a store under way completes)",
                left,
                timeout,
            )

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    if self._closed:
                        return
                    self._failing_since = None  # nothing waits: a later failure starts afresh
                    self._changed.wait()
                while len(self._pending) < self._batch and not (self._closed or self._hurry):
                    left = self._first + self.linger - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                taken = self._pending[: self._batch]
                del self._pending[: self._batch]
                self._first = -math.inf  # any left waited already: stored next, at once
                self._changed.notify_all()  # room for puts that waited
            try:
                self._store(taken)
            finally:  # counted even if the thread is torn down: flushes never hang
                with self._changed:
                    self._stored += len(taken)
                    self._changed.notify_all()

    def _store(self, taken: list[_Put]) -> None:
        """Store ``taken``: one ``put_many`` per topic and priority, each in its order."""
        runs: dict[tuple[str, int], list[bytes]] = {}
        for item in taken:
            runs.setdefault((item.topic, item.priority), []).append(item.payload)
        for (topic, priority), payloads in runs.items():
            try:
                self._store_run(topic, priority, payloads)
            except Exception:  # a defect: never let the thread die with puts waiting
                log.exception("squeal: storing %d put(s) to %r failed: lost", len(payloads), topic)

    def _store_run(self, topic: str, priority: int, payloads: list[bytes]) -> None:
        retry = RETRY[0]
        while True:
            if self._abandon:
                return  # counted and logged by close()
            try:
                self._queue.put_many(payloads, topic, priority=priority)
                self._failing_since = None
                return
            except (PutOutcomeUnknown, ValidationError) as error:  # a retry could store twice,
                log.error(  # or would be refused again
                    "squeal: %d put(s) to %r may not have been stored: %s",
                    len(payloads),
                    topic,
                    error,
                )
                return
            except SquealError as error:
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                if now - self._failing_since >= self._give_up:
                    log.error(
                        "squeal: %d put(s) to %r not stored (stores failing for %gs): lost: %s",
                        len(payloads),
                        topic,
                        now - self._failing_since,
                        error,
                    )
                    return
                log.warning(
                    "squeal: storing %d put(s) to %r failed (tried again in %gs): %s",
                    len(payloads),
                    topic,
                    retry,
                    error,
                )
            time.sleep(retry)
            retry = min(retry * 2, RETRY[1])


def flush_all(timeout: float | None = None) -> bool:
    """Store what every open Linger of this process holds (waiting ``timeout`` seconds at
    most in all); False if that time passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    done = True
    for linger in _live():
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done = linger.flush(left) and done
    return done


def close_all(timeout: float = AT_EXIT) -> None:
    """Close every open Linger of this process (each stores what waits first)."""
    for linger in _live():
        linger.close(timeout)


def _forked() -> None:
    """In a forked child: forget the parent's puts and threads (the parent stores them)."""
    try:
        for linger in list(_LIVE):
            linger._reset()
    finally:
        _LIVE_LOCK.release()  # taken before the fork (so no other thread held it then)


os.register_at_fork(
    before=_LIVE_LOCK.acquire, after_in_parent=_LIVE_LOCK.release, after_in_child=_forked
)
atexit.register(close_all)

__all__ = ["Linger", "close_all", "flush_all"]
