"""AsyncWorker: consume topics with a coroutine handler on tasks, with lease heartbeats and a
graceful stop.

    worker = AsyncWorker(queue, handle, ["emails"], concurrency=8)
    await worker.run()  # until worker.stop(), SIGTERM/SIGINT, or the task is cancelled

The rules are :class:`squeal.Worker`'s, and so are its checks, retry schedule and logs
(squeal.worker): a handler that returns acks the message; one that raises nacks it; each
running handler's lease is extended every ``heartbeat`` seconds by a task of its own; on stop
(or when ``run`` is cancelled) the worker claims nothing more, lets running handlers finish
within ``grace_period``, then cancels the rest and releases their messages, so they are
redelivered at once. What is here is only what tasks do differently from threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from squeal import observe
from squeal.aio.bridge import run
from squeal.aio.message import AsyncMessage, sync_messages
from squeal.aio.queue import AsyncQueue
from squeal.completer import Completer, InFlight
from squeal.errors import InvalidType, LeaseLost, SquealError
from squeal.registry import BEAT, Presence
from squeal.schedules import RUN_EVERY, schedules_failed, turn_to_run
from squeal.worker import (
    CLAIM_RETRY,
    FATAL,
    LEAVE_WAIT,
    SETTLE_BATCH,
    SETTLE_EVERY,
    WorkerSettings,
    WorkerStats,
    checked_handler,
)

log = logging.getLogger("squeal.worker")

AsyncHandler = Callable[..., Awaitable[Any]]


class AsyncWorker:
    """Consumes ``topics`` of ``queue`` with the coroutine ``handler``, ``concurrency`` at once.

    Args: as :class:`squeal.Worker`'s; ``handler`` is ``async def handler(message)``, or
    ``async def handler(message, connection)`` (an AsyncConnection) with
    ``ack_in_transaction``.
    """

    def __init__(
        self,
        queue: AsyncQueue,
        handler: AsyncHandler,
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
        if not isinstance(queue, AsyncQueue):
            raise InvalidType(f"queue must be a squeal.aio AsyncQueue, not {type(queue).__name__}")
        self.queue = queue
        self.ack_in_transaction = bool(ack_in_transaction)
        self.run_schedules = bool(run_schedules)
        if not _is_async(handler):
            raise InvalidType(
                f"handler must be an async function (async def), not {handler!r}; "
                "squeal.Worker runs plain functions"
            )
        self.handler = checked_handler(handler, self.ack_in_transaction)
        self.settings = WorkerSettings.checked(
            topics=topics,
            concurrency=concurrency,
            wait=wait,
            grace_period=grace_period,
            heartbeat=heartbeat,
            visibility_timeout=queue.sync.visibility_timeout,
            registry_beat=registry_beat,
            prefetch=prefetch,
            settle_every=settle_every,
        )
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()  # set at any change to the three below
        self._waiting: deque[InFlight] = deque()  # claimed, not started
        self._unhandled = 0  # claimed, not handled yet
        self._in_flight: set[InFlight] = set()  # claimed, not settled (one per lease)
        self._beats: dict[InFlight, asyncio.Task[None]] = {}  # one per in-flight message

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; ``run`` returns after the grace period."""
        self._stop.set()
        self._changed.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or a signal arrived)."""
        return self._stop.is_set()

    async def run(self, *, install_signal_handlers: bool = True) -> WorkerStats:
        """Consume until :meth:`stop`, SIGTERM or SIGINT, or cancellation; return what was done
        (a cancelled ``run`` drains, then raises CancelledError).

        Raises:
            SchemaMissing / SchemaOutOfDate / UnsupportedDatabase: as Worker.run.
        """
        loop = asyncio.get_running_loop()
        signals: list[signal.Signals] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    signals.append(sig)

        def on_the_loop(flush: Callable[[list[InFlight]], bool], taken: list[InFlight]) -> bool:
            return asyncio.run_coroutine_threadsafe(run(flush, taken), loop).result()

        # The sync worker's completer, on a thread of its own; its flushes run on this loop.
        completer = Completer(
            self.queue.sync,
            self._finished,
            every=self.settings.settle_every,
            batch=SETTLE_BATCH,
            runner=on_the_loop,
            bounded=False,
        )
        completing = threading.Thread(target=completer.run, name="squeal-completer", daemon=True)
        completing.start()
        handlers = [
            asyncio.create_task(self._handling(completer), name=f"squeal-handler-{n}")
            for n in range(self.settings.concurrency)
        ]
        fatal: SquealError | None = None
        schedules = asyncio.create_task(self._schedules()) if self.run_schedules else None
        finished = asyncio.Event()
        beats = self._registry_beats(finished)
        try:
            fatal = await self._consume()
        finally:
            self.stop()
            completer.hurry()
            for sig in signals:
                loop.remove_signal_handler(sig)
            try:
                if schedules is not None:
                    await schedules
                await asyncio.shield(self._give_back_waiting())
                await asyncio.shield(self._drain(handlers))
            finally:  # even when cancelled again meanwhile
                completer.close()
                finished.set()
                try:
                    await asyncio.shield(asyncio.to_thread(completing.join, LEAVE_WAIT))
                finally:
                    if beats is not None:
                        await asyncio.shield(beats)
        if fatal is not None:
            raise fatal
        return self.stats

    def _registry_beats(self, finished: asyncio.Event) -> asyncio.Task[None] | None:
        """A task beating in the worker registry until ``finished``, then deleting the row
        (None: the worker does not register)."""
        every = self.settings.registry_beat
        if every is None:
            return None
        presence = Presence(
            self.queue.sync._registry,
            kind="asyncio",
            topics=self.settings.topics,
            concurrency=self.settings.concurrency,
            beat=every,
        )

        async def beats() -> None:
            while not finished.is_set():
                await run(presence.beat, self.stats.counts(len(self._in_flight)))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(finished.wait(), every)
            await run(presence.leave)

        return asyncio.create_task(beats(), name="squeal-registry")

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("squeal worker: %s received, stopping", sig.name)
        self.stop()

    async def _schedules(self) -> None:
        """Put the due schedules' messages, at most once a second per process."""
        failed: str | None = None
        while not self._stop.is_set():
            if turn_to_run(self.queue.sync):
                try:
                    await self.queue.run_schedules()
                except SquealError as error:
                    failed = schedules_failed(error, failed)
                else:
                    failed = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RUN_EVERY)

    async def _change(self, seconds: float) -> None:
        """Wait until something changes (a claim, a handler done, a settlement), at most
        ``seconds``."""
        self._changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    async def _consume(self) -> SquealError | None:
        topics = self.settings.topics
        turn = 0
        retry = CLAIM_RETRY[0]
        while not self._stop.is_set():
            free = self.settings.claimable(self._unhandled, len(self._waiting))
            if not free:
                await self._change(0.2)
                continue
            topic = topics[turn % len(topics)]
            turn += 1
            asked = time.monotonic()
            try:
                messages = await self.queue.get_many(topic, free, wait=self.settings.claim_wait())
            except FATAL as error:
                log.error("squeal worker: stopping: %s", error)
                return error
            except SquealError as error:
                log.warning(
                    "squeal worker: claim on %r failed (next try in %.0fs): %s", topic, retry, error
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), retry)
                retry = min(retry * 2, CLAIM_RETRY[1])
                continue
            retry = CLAIM_RETRY[0]
            for message in sync_messages(messages):
                entry = InFlight(message, asked + self.settings.heartbeat)
                self._in_flight.add(entry)
                self._beats[entry] = asyncio.create_task(self._heartbeats(entry))
                self._waiting.append(entry)
                self._unhandled += 1
            self._changed.set()
        return None

    async def _give_back_waiting(self) -> None:
        """At a stop: release the messages no handler started, so they are redelivered now."""
        left = list(self._waiting)
        self._waiting.clear()
        self._unhandled -= len(left)
        for entry in left:
            entry.done = True
            await self._give_back(entry)

    async def _drain(self, handlers: list[asyncio.Task[None]]) -> None:
        """Let running handlers finish within the grace period; cancel them and release the
        messages still running or not settled then."""
        deadline = time.monotonic() + self.settings.grace_period
        while self._in_flight and time.monotonic() < deadline:
            await self._change(min(0.05, max(deadline - time.monotonic(), 0.0)))
        for task in handlers:
            task.cancel()
        await asyncio.wait(handlers)
        # Not one whose ack is committing now (the completer finishes it, or its lease runs out).
        left = [entry for entry in self._in_flight if not (entry.done or entry.settling)]
        for entry in left:
            entry.done = True
            await self._give_back(entry)
        if left:
            log.warning(
                "squeal worker: released %d message(s) still running after %.0fs",
                len(left),
                self.settings.grace_period,
            )

    async def _give_back(self, entry: InFlight) -> None:
        try:
            await run(entry.message.release)
            self.stats.released += 1
        except SquealError as error:
            log.warning("squeal worker: could not release message %d: %s", entry.message.id, error)
        self._finished([entry])

    # -- handler tasks --------------------------------------------------------------------------

    async def _handling(self, completer: Completer) -> None:
        """A handler task: run the next waiting message's handler, until the stop."""
        while True:
            while not self._waiting:
                if self._stop.is_set():
                    return
                await self._change(0.2)
            entry = self._waiting.popleft()
            try:
                if await self._handle(entry):
                    completer.add(entry)
            finally:
                self._unhandled -= 1
                self._changed.set()

    async def _handle(self, entry: InFlight) -> bool:
        """Run the handler; True when the completer is to settle the message."""
        message = AsyncMessage(entry.message)
        started = time.monotonic()
        try:
            if self.ack_in_transaction:
                async with self.queue.engine.begin() as connection:
                    with observe.handling(message):
                        await self.handler(message, connection)
                    observe.handled(message.topic, time.monotonic() - started, failed=False)
                    if entry.done:  # released at shutdown: roll the handler's writes back
                        raise RuntimeError("released at shutdown before the handler finished")
                    await message.ack(connection=connection)
                    entry.done = True
                self._finished([entry], acked=1)
                return False
            with observe.handling(message):
                await self.handler(message)
            observe.handled(message.topic, time.monotonic() - started, failed=False)
        except asyncio.CancelledError:
            raise  # stopped past the grace period: _drain releases it
        except Exception as error:
            observe.handled(message.topic, time.monotonic() - started, failed=True)
            entry.error = error
        return True

    def _finished(self, entries: list[InFlight], acked: int = 0, failed: int = 0) -> None:
        """``entries`` are out of flight: settled (``acked`` and ``failed`` of them: the
        completer tells so), or released at a stop."""
        self.stats.acked += acked
        self.stats.failed += failed
        for entry in entries:
            self._in_flight.discard(entry)
            beat = self._beats.pop(entry, None)
            if beat is not None:
                beat.cancel()
        self._changed.set()

    async def _heartbeats(self, entry: InFlight) -> None:
        """Extend the lease ``heartbeat`` seconds after it (or its last extension) was asked
        for; sooner again after an extension that failed. No extension while the message's
        settlement commits (the completer's)."""
        message = entry.message
        while not entry.done:
            await asyncio.sleep(max(entry.renew_at - time.monotonic(), 0.0))
            if entry.done or entry.settling:
                entry.renew_at = time.monotonic() + 0.05
                continue
            asked = time.monotonic()
            try:
                await run(message.touch)
            except LeaseLost as error:
                if not (entry.done or entry.settling):
                    log.warning("squeal worker: lease of message %d lost: %s", message.id, error)
                return
            except SquealError as error:
                log.warning(
                    "squeal worker: lease of message %d not extended: %s", message.id, error
                )
                entry.renew_at = asked + min(self.settings.heartbeat / 4, 1.0)
            else:
                entry.renew_at = asked + self.settings.heartbeat


def _is_async(handler: object) -> bool:
    """An async function, or an object whose ``__call__`` is one."""
    call = type(handler).__dict__.get("__call__") if not inspect.isfunction(handler) else None
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


__all__ = ["AsyncHandler", "AsyncWorker"]
