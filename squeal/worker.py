"""A worker: consume topics with a handler on threads, with lease heartbeats and graceful stop.

    worker = Worker(queue, handle, ["emails"], concurrency=4)
    worker.run()  # until SIGTERM/SIGINT or worker.stop()

A handler that returns acks the message; one that raises nacks it (redelivered after the
queue's backoff, dead after ``max_attempts``) and logs one line without the payload. While a
handler runs longer than a third of the visibility timeout, a heartbeat extends its lease. On
stop, the worker claims nothing more, lets in-flight handlers finish within ``grace_period``,
then releases the messages still running, so they are redelivered at once: nothing is lost.

With ``ack_in_transaction=True`` the handler is called as ``handler(message, connection)``
inside a transaction on the queue's engine, and the ack commits with the handler's writes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from squeal import validation as check
from squeal.errors import InvalidType, SquealError, ValidationError
from squeal.message import Message
from squeal.queue import Queue

log = logging.getLogger("squeal.worker")

Handler = Callable[..., Any]


@dataclass
class _InFlight:
    message: Message
    started: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # settled by its handler thread, or released at shutdown


@dataclass
class WorkerStats:
    """What a worker did since it started."""

    acked: int = 0
    failed: int = 0
    released: int = 0


class Worker:
    """Consumes ``topics`` of ``queue`` with ``handler`` on ``concurrency`` threads.

    Args:
        queue: the queue to consume.
        handler: ``handler(message)``, or ``handler(message, connection)`` with
            ``ack_in_transaction``.
        topics: one topic name or several (served in turn).
        concurrency: handler threads; claims are batched to the free threads.
        wait: seconds a claim waits for messages when idle.
        grace_period: seconds in-flight handlers get to finish after a stop.
        heartbeat: seconds between lease extensions (default: a third of the lease).
        ack_in_transaction: run handler and ack in one transaction on the queue's engine.
    """

    def __init__(
        self,
        queue: Queue,
        handler: Handler,
        topics: str | Sequence[str] = "default",
        *,
        concurrency: int = 1,
        wait: float = 1.0,
        grace_period: float = 30.0,
        heartbeat: float | None = None,
        ack_in_transaction: bool = False,
    ) -> None:
        self.queue = queue
        self.handler = handler
        names = [topics] if isinstance(topics, str) else list(topics)
        self.topics = [check.text(t, "topic") for t in names]
        if not self.topics:
            raise ValidationError("a worker needs at least one topic")
        self.concurrency = check.count(concurrency, "concurrency", maximum=1000)
        self.wait = check.seconds(wait, "wait")
        self.grace_period = check.seconds(grace_period, "grace_period")
        self.heartbeat = (
            queue.visibility_timeout / 3
            if heartbeat is None
            else check.seconds(heartbeat, "heartbeat", positive=True)
        )
        self.ack_in_transaction = bool(ack_in_transaction)
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._free = threading.Semaphore(self.concurrency)
        self._in_flight: dict[int, _InFlight] = {}

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; ``run`` returns after the grace period."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or a signal arrived)."""
        return self._stop.is_set()

    def run(self, *, install_signal_handlers: bool = True) -> WorkerStats:
        """Consume until :meth:`stop`, SIGTERM or SIGINT; return what was done.

        Signal handlers are installed only when called from the main thread.
        """
        restore: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore[sig] = signal.signal(sig, self._on_signal)
        beat = threading.Thread(target=self._heartbeats, name="squeal-heartbeat", daemon=True)
        beat.start()
        try:
            self._consume()
            self._drain()
        finally:
            self._stop.set()
            for sig, previous in restore.items():
                signal.signal(sig, previous)
        return self.stats

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("squeal worker: %s received, stopping", signal.Signals(signum).name)
        self._stop.set()

    # -- the claim loop -------------------------------------------------------------------------

    def _consume(self) -> None:
        turn = 0
        while not self._stop.is_set():
            if not self._free.acquire(timeout=0.2):
                continue
            free = 1
            while free < self.concurrency and self._free.acquire(blocking=False):
                free += 1
            topic = self.topics[turn % len(self.topics)]
            turn += 1
            # With several topics, a long wait on one would starve the others.
            wait = self.wait if len(self.topics) == 1 else min(self.wait, 0.1)
            try:
                messages = (
                    [] if self._stop.is_set() else self.queue.get_many(topic, free, wait=wait)
                )
            except SquealError as error:
                log.warning("squeal worker: claim on %r failed: %s", topic, error)
                messages = []
                self._stop.wait(1.0)
            for _ in range(free - len(messages)):
                self._free.release()
            for msg in messages:
                if self._stop.is_set():
                    self._give_back(msg)
                    self._free.release()
                    continue
                entry = _InFlight(msg, time.monotonic())
                with self._lock:
                    self._in_flight[msg.id] = entry
                threading.Thread(
                    target=self._handle, args=(entry,), name=f"squeal-{msg.id}", daemon=True
                ).start()

    def _drain(self) -> None:
        """Let in-flight handlers finish within the grace period; release the rest."""
        deadline = time.monotonic() + self.grace_period
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return
            time.sleep(0.05)
        with self._lock:
            left = list(self._in_flight.values())
        for entry in left:
            with entry.lock:
                if entry.done:
                    continue
                entry.done = True
            self._give_back(entry.message)
        if left:
            log.warning(
                "squeal worker: released %d message(s) still running after %.0fs",
                len(left),
                self.grace_period,
            )

    def _give_back(self, msg: Message) -> None:
        try:
            msg.release()
            self.stats.released += 1
        except SquealError as error:
            log.warning("squeal worker: could not release message %d: %s", msg.id, error)

    # -- one message ----------------------------------------------------------------------------

    def _handle(self, entry: _InFlight) -> None:
        msg = entry.message
        try:
            if self.ack_in_transaction:
                self._handle_in_transaction(entry)
            else:
                self.handler(msg)
                self._settle(entry, ok=True)
        except Exception as error:
            log.warning(
                "squeal worker: message %d of topic %r failed on attempt %d: %s: %s",
                msg.id,
                msg.topic,
                msg.attempts,
                type(error).__name__,
                " ".join(str(error).split())[:200],
            )
            self._settle(entry, ok=False)
        finally:
            with self._lock:
                self._in_flight.pop(msg.id, None)
            self._free.release()

    def _handle_in_transaction(self, entry: _InFlight) -> None:
        with self.queue.engine.begin() as conn:
            self.handler(entry.message, conn)
            with entry.lock:
                if entry.done:  # released at shutdown: roll the handler's writes back
                    raise RuntimeError("released at shutdown before the handler finished")
                entry.message.ack(connection=conn)
                entry.done = True
        self.stats.acked += 1

    def _settle(self, entry: _InFlight, *, ok: bool) -> None:
        with entry.lock:
            if entry.done:
                return
            entry.done = True
            try:
                if ok:
                    entry.message.ack()
                    self.stats.acked += 1
                else:
                    entry.message.nack()
                    self.stats.failed += 1
            except SquealError as error:
                log.warning("squeal worker: message %d: %s", entry.message.id, error)

    # -- heartbeats -----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        while not self._stop.wait(min(self.heartbeat / 2, 1.0)) or self._in_flight:
            now = time.monotonic()
            with self._lock:
                due = [e for e in self._in_flight.values() if now - e.started >= self.heartbeat]
            for entry in due:
                with entry.lock:
                    if entry.done:
                        continue
                    try:
                        entry.message.touch()
                        entry.started = now
                    except SquealError as error:
                        log.warning(
                            "squeal worker: lease of message %d not extended: %s",
                            entry.message.id,
                            error,
                        )
            if self._stop.is_set():
                time.sleep(0.05)


def load_handler(spec: str) -> Handler:
    """``module:function`` (or ``module:object.attr``) imported and returned."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValidationError(f"handler must look like module:function, not {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise InvalidType(f"{spec} is not callable")
    return target  # type: ignore[no-any-return]


__all__ = ["Handler", "Worker", "WorkerStats", "load_handler"]
