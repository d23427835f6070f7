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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from squeal import observe
from squeal import validation as check
from squeal.completer import Completer, InFlight, log_failure, nacked
from squeal.errors import (
    InvalidType,
    LeaseLost,
    SchemaError,
    SquealError,
    UnsupportedDatabase,
    ValidationError,
)
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
#: Messages claimed ahead per handler by default (``prefetch``).
PREFETCH_PER_HANDLER = 4
#: Default seconds a handled message's ack waits to share a commit with others.
SETTLE_EVERY = 0.005
#: Settlements committed together at most.
SETTLE_BATCH = 200


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
    #: Messages claimed ahead of the handlers, beyond those running.
    prefetch: int
    #: Seconds a handled message's settlement waits at most to share a commit.
    settle_every: float

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
        prefetch: int | None = None,
        settle_every: float = SETTLE_EVERY,
    ) -> WorkerSettings:
        """The settings, or ValidationError / InvalidType naming the bad option."""
        names = [topics] if isinstance(topics, str) else list(topics)
        checked_topics = [check.text(t, "topic") for t in names]
        if not checked_topics:
            raise ValidationError("a worker needs at least one topic")
        concurrency = check.count(concurrency, "concurrency", maximum=1000)
        return cls(
            topics=checked_topics,
            concurrency=concurrency,
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
            prefetch=(
                PREFETCH_PER_HANDLER * concurrency
                if prefetch is None
                else check.count(prefetch, "prefetch", minimum=0, maximum=10_000)
            ),
            settle_every=check.seconds(settle_every, "settle_every"),
        )

    def claimable(self, unhandled: int, waiting: int) -> int:
        """How many messages to claim now, with ``unhandled`` claimed and not handled yet, of
        which ``waiting`` no handler started (0: none yet). Claims wait until half of the
        handlers + prefetch is free, so that they come in batches; a worker whose handlers
        would go idle claims whatever is free."""
        free = self.concurrency + self.prefetch - unhandled
        if free < 1 or (waiting and free < max(1, (self.concurrency + self.prefetch) // 2)):
            return 0
        return free

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
        concurrency: handler threads.
        wait: seconds a claim waits for messages when idle.
        prefetch: messages claimed ahead of the handlers, beyond the running ones (default:
            4 per handler; 0: claim only for idle handlers). Their leases are extended while
            they wait, and a stop releases them at once.
        settle_every: seconds a handled message's ack (or nack) waits at most to share one
            commit with others (up to 200 at once); until it commits the message stays
            leased to this worker, so a crash before then redelivers it, never loses it.
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
        prefetch: int | None = None,
        settle_every: float = SETTLE_EVERY,
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
            prefetch=prefetch,
            settle_every=settle_every,
        )
        self.topics = settings.topics
        self.concurrency = settings.concurrency
        self.wait = settings.wait
        self.grace_period = settings.grace_period
        self.heartbeat = settings.heartbeat
        self.prefetch = settings.prefetch
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: Claimed and not started, oldest first; ``_changed`` tells of any change to it or
        #: to ``_unhandled`` (claimed and not handled yet: waiting or running).
        self._waiting: deque[InFlight] = deque()
        self._unhandled = 0
        self._changed = threading.Condition(self._lock)
        self._in_flight: set[InFlight] = set()  # claimed and not settled (one per lease)
        self._arrived = threading.Event()  # wakes the heartbeat for a new in-flight message
        #: When the sleeping heartbeat thread wakes next (under ``_lock``; -inf while it is
        #: awake: it then sees every claim's leases): a claim wakes it only for leases due
        #: sooner, not once per claim.
        self._next_beat = -math.inf
        self._completer = Completer(
            queue, self._finished, every=settings.settle_every, batch=SETTLE_BATCH
        )
        self._fatal: SquealError | None = None

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; ``run`` returns after the grace period."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

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
        completer = threading.Thread(
            target=self._completer.run, name="squeal-completer", daemon=True
        )
        completer.start()
        handlers = [
            threading.Thread(target=self._handling, name=f"squeal-handler-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in handlers:
            thread.start()
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
            self._completer.hurry()
            self._drain()
        finally:
            self.stop()
            self._completer.close()
            completer.join(LEAVE_WAIT)
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
        self._stop.set()  # not stop(): a signal handler must not wait for the lock

    # -- the claim loop -------------------------------------------------------------------------

    def _consume(self) -> None:
        turn = 0
        retry = CLAIM_RETRY[0]
        while not self._stop.is_set():
            with self._changed:
                free = self._settings.claimable(self._unhandled, len(self._waiting))
                if not free:
                    self._changed.wait(0.2)
                    continue
            topic = self.topics[turn % len(self.topics)]
            turn += 1
            # Before the claim: the leases it grants run out no sooner than vt after this.
            asked = time.monotonic()
            try:
                messages = self.queue.get_many(topic, free, wait=self._settings.claim_wait())
            except FATAL as error:
                log.error("squeal worker: stopping: %s", error)
                self._fatal = error
                self.stop()
                break
            except SquealError as error:
                log.warning(
                    "squeal worker: claim on %r failed (next try in %.0fs): %s", topic, retry, error
                )
                self._stop.wait(retry)
                retry = min(retry * 2, CLAIM_RETRY[1])
                continue
            retry = CLAIM_RETRY[0]
            if not messages:
                continue
            due = asked + self.heartbeat
            entries = [InFlight(msg, due) for msg in messages]
            with self._changed:
                for entry in entries:
                    self._in_flight.add(entry)
                self._waiting.extend(entries)
                self._unhandled += len(entries)
                self._changed.notify_all()
                wake = due < self._next_beat
            if wake:
                self._arrived.set()
        self._give_back_waiting()

    def _give_back_waiting(self) -> None:
        """At a stop: release the messages no handler started, so they are redelivered now."""
        with self._changed:
            left = list(self._waiting)
            self._waiting.clear()
            self._unhandled -= len(left)
        for entry in left:
            with entry.lock:
                if entry.done:
                    continue
                entry.done = True
            self._give_back(entry.message)
            self._finished([entry])

    def _drain(self) -> None:
        """Let in-flight handlers finish within the grace period; release the rest."""
        deadline = time.monotonic() + self.grace_period
        with self._changed:
            while self._in_flight and time.monotonic() < deadline:
                self._changed.wait(min(0.05, max(deadline - time.monotonic(), 0)))
            left = list(self._in_flight)
        for entry in left:
            with entry.lock:
                if entry.done:
                    continue
                entry.done = True
            self._give_back(entry.message)
        self._finished(left)
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

    # -- handler threads ------------------------------------------------------------------------

    def _handling(self) -> None:
        """A handler thread: run the next waiting message's handler, until the stop."""
        while True:
            with self._changed:
                while not self._waiting:
                    if self._stop.is_set():
                        return
                    self._changed.wait(0.2)
                entry = self._waiting.popleft()
            try:
                self._handle(entry)
            finally:
                with self._changed:
                    self._unhandled -= 1
                    # Only the claim loop waits for this, and only until it may claim: not
                    # woken for each message, so claims come in batches without a switch.
                    if self._settings.claimable(self._unhandled, len(self._waiting)):
                        self._changed.notify_all()

    def _handle(self, entry: InFlight) -> None:
        msg = entry.message
        started = time.monotonic()
        try:
            if self.ack_in_transaction:
                self._handle_in_transaction(entry)
                return
            with observe.handling(msg):
                self.handler(msg)
            observe.handled(msg.topic, time.monotonic() - started, failed=False)
        except BaseException as error:  # SystemExit too: a handler thread must go on
            observe.handled(msg.topic, time.monotonic() - started, failed=True)
            entry.error = error if isinstance(error, Exception) else RuntimeError(repr(error))
        self._completer.add(entry)

    def _handle_in_transaction(self, entry: InFlight) -> None:
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
        self._finished([entry], acked=1)

    def _finished(self, entries: list[InFlight], acked: int = 0, failed: int = 0) -> None:
        """``entries`` are out of flight: settled (``acked`` and ``failed`` of them: the
        completer tells so), or released at a stop."""
        with self._changed:
            self.stats.acked += acked
            self.stats.failed += failed
            for entry in entries:
                self._in_flight.discard(entry)
            self._changed.notify_all()

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
                entries = list(self._in_flight)
            if not entries and self._stop.is_set():
                return
            now = time.monotonic()
            for entry in entries:
                if entry.renew_at <= now:
                    self._renew(entry)
            with self._lock:
                due = min((e.renew_at for e in self._in_flight if not e.done), default=math.inf)
                self._arrived.clear()
                pause = min(due - time.monotonic(), self.heartbeat)
                if self._stop.is_set():
                    pause = min(pause, 0.05)
                # Claims that end from now on wake it only if their leases are due sooner.
                self._next_beat = time.monotonic() + pause
            if pause > 0:
                self._arrived.wait(pause)
            with self._lock:
                self._next_beat = -math.inf  # awake: every claim's leases are seen next round

    def _renew(self, entry: InFlight) -> None:
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
