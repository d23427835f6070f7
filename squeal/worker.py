"""A worker: consume topics with a handler on threads, with lease heartbeats and graceful stop.

    worker = Worker(queue, handle, ["emails"], concurrency=4)
    worker.run()  # until SIGTERM/SIGINT or worker.stop()

A handler that returns acks the message; one that raises nacks it (redelivered after the
queue's backoff, dead after ``max_attempts``) and is logged on ``squeal.worker`` with its
traceback: WARNING while it will be retried, ERROR when the message went dead. squeal's own
text never includes the payload. A heartbeat extends each running handler's lease a third of
the visibility timeout after the lease (or its last extension) was asked for, so a slow
extension still has two thirds of the lease to land. On stop, the worker claims nothing more,
lets in-flight handlers finish within ``grace_period``, then releases the messages still
running, so they are redelivered at once: nothing is lost. Missing or outdated tables stop the
worker: ``run`` raises the SchemaError that names the command to run.

With ``ack_in_transaction=True`` the handler is called as ``handler(message, connection)``
inside a transaction on the queue's engine, and the ack commits with the handler's writes.
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from squeal import observe
from squeal import validation as check
from squeal.errors import (
    InvalidType,
    LeaseLost,
    SchemaError,
    SquealError,
    UnsupportedDatabase,
    ValidationError,
)
from squeal.log import Leased
from squeal.message import Message
from squeal.queue import Queue
from squeal.registry import BEAT, Counts, Presence
from squeal.schedules import RUN_EVERY, schedules_failed, turn_to_run

log = logging.getLogger("squeal.worker")

Handler = Callable[..., Any]

#: Errors no retry can mend: the worker stops and ``run`` raises them.
FATAL = (SchemaError, UnsupportedDatabase)
#: Seconds between claim retries after a failed claim: doubling from the first to the last.
CLAIM_RETRY = (1.0, 30.0)
#: Seconds a stopping worker waits for a registry beat under way before deleting its row.
LEAVE_WAIT = 5.0


@dataclass
class _InFlight:
    message: Message
    #: ``time.monotonic()`` at which the heartbeat extends the lease next.
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # settled by its handler thread, or released at shutdown


@dataclass
class WorkerStats:
    """What a worker did since it started."""

    acked: int = 0
    failed: int = 0
    released: int = 0

    def counts(self, in_flight: int) -> Counts:
        """What the worker registry records at a beat."""
        return Counts(in_flight, self.acked, self.failed, self.released)


@dataclass(frozen=True)
class WorkerSettings:
    """A worker's options, checked (shared by Worker and squeal.aio's AsyncWorker)."""

    topics: list[str]
    concurrency: int
    wait: float
    grace_period: float
    heartbeat: float
    #: Seconds between the worker's beats in the registry (None: not registered).
    registry_beat: float | None

    @classmethod
    def checked(
        cls,
        *,
        topics: str | Sequence[str],
        concurrency: int,
        wait: float,
        grace_period: float,
        heartbeat: float | None,
        visibility_timeout: float,
        registry_beat: float | None = BEAT,
    ) -> WorkerSettings:
        """The settings, or ValidationError / InvalidType naming the bad option."""
        names = [topics] if isinstance(topics, str) else list(topics)
        checked_topics = [check.text(t, "topic") for t in names]
        if not checked_topics:
            raise ValidationError("a worker needs at least one topic")
        return cls(
            topics=checked_topics,
            concurrency=check.count(concurrency, "concurrency", maximum=1000),
            wait=check.seconds(wait, "wait"),
            grace_period=check.seconds(grace_period, "grace_period"),
            heartbeat=(
                visibility_timeout / 3
                if heartbeat is None
                else check.seconds(heartbeat, "heartbeat", positive=True)
            ),
            registry_beat=(
                None
                if registry_beat is None
                else check.seconds(registry_beat, "registry_beat", positive=True)
            ),
        )

    def claim_wait(self) -> float:
        """How long one claim waits: with several topics, a long wait on one would starve
        the others."""
        return self.wait if len(self.topics) == 1 else min(self.wait, 0.1)


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
        run_schedules: put the queue's due schedules (:meth:`Queue.schedule`), at most once a
            second per process for the same tables.
        registry_beat: seconds between the worker's beats in the worker registry
            (:meth:`Queue.workers`); None: the worker does not register.

    Raises:
        ValueError (squeal.ValidationError): a bad option, or a handler that cannot be called
            with the arguments ``ack_in_transaction`` implies.
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
        run_schedules: bool = True,
        registry_beat: float | None = BEAT,
    ) -> None:
        self.queue = queue
        self.ack_in_transaction = bool(ack_in_transaction)
        self.run_schedules = bool(run_schedules)
        self.handler = checked_handler(handler, self.ack_in_transaction)
        settings = self._settings = WorkerSettings.checked(
            topics=topics,
            concurrency=concurrency,
            wait=wait,
            grace_period=grace_period,
            heartbeat=heartbeat,
            visibility_timeout=queue.visibility_timeout,
            registry_beat=registry_beat,
        )
        self.topics = settings.topics
        self.concurrency = settings.concurrency
        self.wait = settings.wait
        self.grace_period = settings.grace_period
        self.heartbeat = settings.heartbeat
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._free = threading.Semaphore(self.concurrency)
        self._in_flight: dict[int, _InFlight] = {}
        self._arrived = threading.Event()  # wakes the heartbeat for a new in-flight message
        self._fatal: SquealError | None = None

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

        Raises:
            SchemaMissing / SchemaOutOfDate: the queue's tables are missing or outdated (the
                error names the command to run); in-flight handlers were drained first.
            UnsupportedDatabase: the database cannot run squeal.
        """
        restore: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                restore[sig] = signal.signal(sig, self._on_signal)
        beat = threading.Thread(target=self._heartbeats, name="squeal-heartbeat", daemon=True)
        beat.start()
        if self.run_schedules:
            threading.Thread(target=self._schedules, name="squeal-schedules", daemon=True).start()
        presence = self._presence()
        finished = threading.Event()
        beats = threading.Thread(
            target=self._registry_beats, args=(presence, finished), name="squeal-registry"
        )
        beats.daemon = True
        if presence is not None:
            beats.start()
        try:
            self._consume()
            self._drain()
        finally:
            self._stop.set()
            self._arrived.set()
            finished.set()
            for sig, previous in restore.items():
                signal.signal(sig, previous)
            if presence is not None:
                beats.join(LEAVE_WAIT)
                presence.leave()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _presence(self) -> Presence | None:
        every = self._settings.registry_beat
        if every is None:
            return None
        return Presence(
            self.queue._registry,
            kind="thread",
            topics=self.topics,
            concurrency=self.concurrency,
            beat=every,
        )

    def _registry_beats(self, presence: Presence, finished: threading.Event) -> None:
        """Beat in the worker registry until ``run`` is done (draining included)."""
        while True:
            with self._lock:
                in_flight = len(self._in_flight)
            presence.beat(self.stats.counts(in_flight))
            if finished.wait(presence.beat_every):
                return

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("squeal worker: %s received, stopping", signal.Signals(signum).name)
        self._stop.set()

    # -- the claim loop -------------------------------------------------------------------------

    def _consume(self) -> None:
        turn = 0
        retry = CLAIM_RETRY[0]
        while not self._stop.is_set():
            if not self._free.acquire(timeout=0.2):
                continue
            free = 1
            while free < self.concurrency and self._free.acquire(blocking=False):
                free += 1
            topic = self.topics[turn % len(self.topics)]
            turn += 1
            # With several topics, a long wait on one would starve the others.
            wait = self._settings.claim_wait()
            # Before the claim: the leases it grants run out no sooner than vt after this.
            asked = time.monotonic()
            try:
                messages = (
                    [] if self._stop.is_set() else self.queue.get_many(topic, free, wait=wait)
                )
            except FATAL as error:
                log.error("squeal worker: stopping: %s", error)
                self._fatal = error
                self._stop.set()
                messages = []
            except SquealError as error:
                log.warning(
                    "squeal worker: claim on %r failed (next try in %.0fs): %s", topic, retry, error
                )
                messages = []
                self._stop.wait(retry)
                retry = min(retry * 2, CLAIM_RETRY[1])
            else:
                retry = CLAIM_RETRY[0]
            for _ in range(free - len(messages)):
                self._free.release()
            for msg in messages:
                if self._stop.is_set():
                    self._give_back(msg)
                    self._free.release()
                    continue
                entry = _InFlight(msg, asked + self.heartbeat)
                with self._lock:
                    self._in_flight[msg.id] = entry
                self._arrived.set()
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
        started = time.monotonic()
        try:
            if self.ack_in_transaction:
                self._handle_in_transaction(entry)
            else:
                with observe.handling(msg):
                    self.handler(msg)
                observe.handled(msg.topic, time.monotonic() - started, failed=False)
                self._settle(entry, ok=True)
        except Exception as error:
            observe.handled(msg.topic, time.monotonic() - started, failed=True)
            self._settle(entry, ok=False, error=error)
        finally:
            with self._lock:
                self._in_flight.pop(msg.id, None)
            self._free.release()

    def _handle_in_transaction(self, entry: _InFlight) -> None:
        with self.queue.engine.begin() as conn:
            started = time.monotonic()
            with observe.handling(entry.message):
                self.handler(entry.message, conn)
            observe.handled(entry.message.topic, time.monotonic() - started, failed=False)
            with entry.lock:
                if entry.done:  # released at shutdown: roll the handler's writes back
                    raise RuntimeError("released at shutdown before the handler finished")
                entry.message.ack(connection=conn)
                entry.done = True
        self.stats.acked += 1

    def _settle(self, entry: _InFlight, *, ok: bool, error: Exception | None = None) -> None:
        with entry.lock:
            if entry.done:
                if error is not None:
                    log_failure(
                        entry.message, error, "it was released at shutdown", logging.WARNING
                    )
                return
            entry.done = True
            try:
                if ok:
                    entry.message.ack()
                    self.stats.acked += 1
                else:
                    entry.message.nack(error=error)
                    self.stats.failed += 1
            except SquealError as settling:
                if error is not None:
                    log_failure(entry.message, error, "its nack failed", logging.WARNING)
                log.warning("squeal worker: message %d: %s", entry.message.id, settling)
                return
        if error is not None:
            nacked(entry.message, error, self.queue.max_attempts)

    def _schedules(self) -> None:
        """Put the due schedules' messages, at most once a second per process."""
        failed: str | None = None
        while not self._stop.is_set():
            if turn_to_run(self.queue):
                try:
                    self.queue.run_schedules()
                except SquealError as error:
                    failed = schedules_failed(error, failed)
                else:
                    failed = None
            self._stop.wait(RUN_EVERY)

    # -- heartbeats -----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        """Extend each running handler's lease when it is due; sleep until the next is due."""
        while True:
            with self._lock:
                entries = list(self._in_flight.values())
            if not entries and self._stop.is_set():
                return
            now = time.monotonic()
            for entry in entries:
                if entry.renew_at <= now:
                    self._renew(entry)
            with self._lock:
                due = min((e.renew_at for e in self._in_flight.values()), default=math.inf)
            self._arrived.clear()
            pause = min(due - time.monotonic(), self.heartbeat)
            if self._stop.is_set():
                pause = min(pause, 0.05)
            if pause > 0:
                self._arrived.wait(pause)

    def _renew(self, entry: _InFlight) -> None:
        with entry.lock:
            if entry.done:
                return
            asked = time.monotonic()
            try:
                entry.message.touch()
            except LeaseLost as error:
                entry.renew_at = math.inf  # nothing left to extend
                log.warning("squeal worker: lease of message %d lost: %s", entry.message.id, error)
            except SquealError as error:
                # Soon again: the lease is still running down.
                entry.renew_at = asked + min(self.heartbeat / 4, 1.0)
                log.warning(
                    "squeal worker: lease of message %d not extended: %s", entry.message.id, error
                )
            else:
                entry.renew_at = asked + self.heartbeat


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


def checked_handler(handler: Handler, in_transaction: bool) -> Handler:
    """``handler`` if it accepts the arguments the worker will pass; else ValidationError."""
    if not callable(handler):
        raise InvalidType(f"handler must be callable, not {type(handler).__name__}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some builtins have none: nothing to check
        return handler
    arguments = (None, None) if in_transaction else (None,)
    try:
        signature.bind(*arguments)
    except TypeError:
        name = getattr(handler, "__qualname__", repr(handler))
        if in_transaction:
            wanted = "handler(message, connection), as ack_in_transaction=True calls it"
        else:
            wanted = (
                "handler(message); a handler(message, connection) needs "
                "ack_in_transaction=True (--ack-in-transaction)"
            )
        raise ValidationError(f"{name}{signature} cannot be called as {wanted}") from None
    return handler


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


__all__ = [
    "CLAIM_RETRY",
    "FATAL",
    "LEAVE_WAIT",
    "Handler",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "checked_handler",
    "load_handler",
    "log_failure",
    "nacked",
]
