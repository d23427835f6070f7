"""Keeping bindings with a lifetime alive while a process runs (docs/exchanges.md).

A binding made with ``Queue.bind(..., expires=L)`` ends ``L`` seconds later unless bound
again. :class:`BindingKeeper` binds each binding it keeps again every third of its lifetime,
in a thread of its own, until it forgets the binding or is closed; a process that dies stops
renewing, and its bindings end within ``L``. kombu's transport keeps its ``x-expires`` queues'
bindings with one (Celery's remote-control mailboxes).

Renewals and unbinds are serialized, so a renewal already under way never brings back a
binding that :meth:`BindingKeeper.unbind` removed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from squeal.errors import SquealError
from squeal.queue import Queue

log = logging.getLogger("squeal.exchange")

#: Seconds before binding again after a renewal failed.
RETRY = 1.0
#: Shortest pause between renewals of one binding, whatever its lifetime.
SHORTEST = 0.05

#: A binding: (exchange, key, topic).
Key = tuple[str, str, str]


class BindingKeeper:
    """Renews bindings with a lifetime until forgotten or closed; ``queue_of`` returns the
    queue to bind on (None while there is none: renewals wait)."""

    def __init__(self, queue_of: Callable[[], Queue | None]) -> None:
        self._queue_of = queue_of
        self._lock = threading.Lock()  # the table below
        self._binding = threading.Lock()  # a renewal round, or an unbind
        #: (ttl, lifetime) of each binding kept.
        self._kept: dict[Key, tuple[float | None, float]] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def keep(self, binding: Key, ttl: float | None, lifetime: float) -> None:
        """Renew ``binding`` every third of ``lifetime`` from now on (the caller bound it, or
        is about to: should that fail, the first renewal binds it)."""
        with self._lock:
            if self._closed:
                return
            self._kept[binding] = (ttl, lifetime)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="squeal-binding-keeper", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def kept(self) -> list[Key]:
        with self._lock:
            return sorted(self._kept)

    def unbind(self, queue: Queue, binding: Key) -> None:
        """Stop renewing ``binding`` and remove it from the table (after any renewal under
        way: it cannot bring the binding back)."""
        exchange, key, topic = binding
        with self._binding:
            with self._lock:
                self._kept.pop(binding, None)
            queue.unbind(exchange, topic, key=key)

    def forget(self, binding: Key) -> None:
        """Stop renewing ``binding`` (it ends when its lifetime runs out)."""
        with self._binding, self._lock:
            self._kept.pop(binding, None)

    def close(self) -> None:
        """Stop renewing (the bindings end when their lifetimes run out)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        due: dict[Key, float] = {}
        lifetimes: dict[Key, float] = {}
        while True:
            with self._lock:
                if self._closed:
                    return
                kept = dict(self._kept)
            try:
                self._round(kept, due, lifetimes)
            except Exception:  # never let the thread die: every binding would lapse
                log.exception("squeal: a round of binding renewals failed (tried again)")
                due = {b: time.monotonic() + RETRY for b in kept}
            pause = min(due.values()) - time.monotonic() if due else None
            self._wake.wait(None if pause is None else max(0.0, pause))
            self._wake.clear()

    def _round(
        self,
        kept: dict[Key, tuple[float | None, float]],
        due: dict[Key, float],
        lifetimes: dict[Key, float],
    ) -> None:
        """Renew what is due; ``due`` and ``lifetimes`` carry over between rounds."""
        now = time.monotonic()
        for binding in [b for b in due if b not in kept]:
            del due[binding]
            lifetimes.pop(binding, None)
        for binding, (_, lifetime) in kept.items():
            if lifetimes.get(binding) != lifetime:  # new, or kept again with another lifetime
                lifetimes[binding] = lifetime
                due[binding] = now + _every(lifetime)
        ready = [b for b, at in due.items() if at <= now]
        if not ready:
            return
        for binding, ok in self._renew(ready).items():
            every = _every(kept[binding][1])
            due[binding] = time.monotonic() + (every if ok else min(RETRY, every))

    def _renew(self, ready: list[Key]) -> dict[Key, bool]:
        """Bind ``ready`` again (those still kept); whether each worked."""
        done: dict[Key, bool] = {}
        queue = self._queue_of()
        with self._binding:
            for binding in ready:
                with self._lock:
                    kept = None if self._closed else self._kept.get(binding)
                if kept is None:
                    continue
                if queue is None:
                    done[binding] = False
                    continue
                exchange, key, topic = binding
                try:
                    queue.bind(exchange, topic, key=key, ttl=kept[0], expires=kept[1])
                except SquealError as error:
                    log.warning(
                        "squeal: renewing the binding of %r to %r failed (tried again in %gs): %s",
                        topic,
                        exchange,
                        RETRY,
                        error,
                    )
                    done[binding] = False
                else:
                    done[binding] = True
        return done


def _every(lifetime: float) -> float:
    """How often a binding of ``lifetime`` seconds is renewed."""
    return max(SHORTEST, lifetime / 3)


__all__ = ["BindingKeeper"]
