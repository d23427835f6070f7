"""Puts gathered for a moment and stored together: a producer's sends at ``put_many``'s pace.

:class:`Linger` takes puts and returns at once; a thread of its own stores what gathered
``linger`` seconds after the first of it arrived (at once when ``batch`` wait, or when someone
calls :meth:`Linger.flush`), with one :meth:`Queue.put_many` per topic and priority, in the
order the puts came. kombu's transport sends with one when its ``publish_linger`` option is
set (docs/celery.md).

What it costs: a put returns before it is stored, as a send to a broker without publisher
confirms does. A process that dies loses what waited (at most ``linger`` seconds of puts);
:meth:`Linger.close` and the interpreter's exit store it first. A put the database refuses
as invalid, or whose outcome a dropped connection hid (``PutOutcomeUnknown``), is logged, not
tried again; a database that cannot be reached is tried again (puts wait while ``most``
are waiting) until ``GIVE_UP`` seconds pass, then what waited is logged as lost.
"""

from __future__ import annotations

import atexit
import logging
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
#: Seconds a store that keeps failing is tried again before its puts are logged as lost.
GIVE_UP = 60.0
#: Seconds the interpreter's exit waits for what waits to be stored.
AT_EXIT = 10.0


@dataclass(frozen=True)
class _Put:
    payload: bytes
    topic: str
    priority: int


class Linger:
    """Stores puts in batches on a thread of its own (see the module's documentation).

    Args:
        queue: where the puts go.
        linger: seconds the first waiting put waits for others to share its store.
        batch: puts stored at once, without waiting ``linger``.
        most: puts waiting at most; a put that would add one more waits for a store.
    """

    def __init__(self, queue: Queue, *, linger: float, batch: int = 500, most: int = 10_000):
        self._queue = queue
        self.linger = check.seconds(linger, "linger")
        self._batch = check.count(batch, "batch")
        self._most = max(check.count(most, "most"), self._batch)
        self._reset()
        self._closed = False
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(me))
        atexit.register(self._at_exit)

    def _reset(self) -> None:
        """An empty Linger (a forked child's copy holds its parent's puts: the parent stores
        them)."""
        self._changed = threading.Condition()
        self._pending: list[_Put] = []
        self._first = 0.0  # when the oldest waiting put arrived
        self._sent = 0  # puts taken so far, in order
        self._stored = 0  # of those, how many were stored or given up
        self._hurry = 0  # flushes waiting: store without lingering
        self._thread: threading.Thread | None = None

    def put(self, payload: bytes, topic: str = "default", *, priority: int = 0) -> None:
        """Store ``payload`` in ``topic`` soon (invalid input raises here, at once); after
        :meth:`close`, at once."""
        item = _Put(
            check.payload(payload, self._queue.max_payload_size),
            check.text(topic, "topic"),
            check.priority(priority),
        )
        with self._changed:
            if self._closed:
                closed = True
            else:
                closed = False
                while len(self._pending) >= self._most:
                    self._changed.wait(0.1)
                if not self._pending:
                    self._first = time.monotonic()
                self._pending.append(item)
                self._sent += 1
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="squeal-linger", daemon=True
                    )
                    self._thread.start()
                if len(self._pending) == 1 or len(self._pending) >= self._batch:
                    self._changed.notify_all()
        if closed:
            self._queue.put(item.payload, item.topic, priority=item.priority)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every put made before this call is stored (or given up, and logged);
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
        """Store what waits (``timeout`` seconds at most: what is left then is logged as
        lost) and stop the thread; puts from now on are stored at once."""
        atexit.unregister(self._at_exit)
        with self._changed:
            self._closed = True
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            with self._changed:
                left = self._sent - self._stored
            if left:
                log.error("squeal: %d put(s) not stored when the Linger closed: lost", left)

    def _at_exit(self) -> None:
        self.close(AT_EXIT)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    if self._closed:
                        return
                    self._changed.wait()
                while len(self._pending) < self._batch and not (self._closed or self._hurry):
                    left = self._first + self.linger - time.monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                taken = self._pending[: self._batch]
                del self._pending[: self._batch]
                self._first = 0.0  # any left waited already: stored next, without lingering
                self._changed.notify_all()  # room for puts that waited
            try:
                self._store(taken)
            except Exception:  # a defect: never let the thread die with puts waiting
                log.exception("squeal: storing %d put(s) failed: lost", len(taken))
            with self._changed:
                self._stored += len(taken)
                self._changed.notify_all()

    def _store(self, taken: list[_Put]) -> None:
        """Store ``taken``: one ``put_many`` per topic and priority, each in its order."""
        runs: dict[tuple[str, int], list[bytes]] = {}
        for item in taken:
            runs.setdefault((item.topic, item.priority), []).append(item.payload)
        for (topic, priority), payloads in runs.items():
            self._store_run(topic, priority, payloads)

    def _store_run(self, topic: str, priority: int, payloads: list[bytes]) -> None:
        retry, started = RETRY[0], time.monotonic()
        while True:
            try:
                self._queue.put_many(payloads, topic, priority=priority)
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
                if time.monotonic() - started > GIVE_UP:
                    log.error(
                        "squeal: %d put(s) to %r not stored after %gs: lost (%s)",
                        len(payloads),
                        topic,
                        GIVE_UP,
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


def _forked(linger: weakref.ref[Linger]) -> None:
    """In a forked child: forget the parent's puts and thread (the parent stores them)."""
    kept = linger()
    if kept is not None:
        kept._reset()


__all__ = ["Linger"]
