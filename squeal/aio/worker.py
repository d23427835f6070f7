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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from squeal import observe
from squeal.aio.bridge import run
from squeal.aio.message import AsyncMessage
from squeal.aio.queue import AsyncQueue
from squeal.errors import InvalidType, LeaseLost, SquealError
from squeal.registry import BEAT, Presence
from squeal.schedules import RUN_EVERY, schedules_failed, turn_to_run
from squeal.worker import (
    CLAIM_RETRY,
    FATAL,
    WorkerSettings,
    WorkerStats,
    checked_handler,
    log_failure,
    nacked,
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
        )
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        self._running: dict[asyncio.Task[None], AsyncMessage] = {}

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; ``run`` returns after the grace period."""
        self._stop.set()

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
        fatal: SquealError | None = None
        schedules = asyncio.create_task(self._schedules()) if self.run_schedules else None
        finished = asyncio.Event()
        beats = self._registry_beats(finished)
        try:
            fatal = await self._consume()
        finally:
            self._stop.set()
            if schedules is not None:
                await schedules
            for sig in signals:
                loop.remove_signal_handler(sig)
            await asyncio.shield(self._drain())
            finished.set()
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
                await run(presence.beat, self.stats.counts(len(self._running)))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(finished.wait(), every)
            await run(presence.leave)

        return asyncio.create_task(beats(), name="squeal-registry")

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("squeal worker: %s received, stopping", sig.name)
        self._stop.set()

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

    async def _consume(self) -> SquealError | None:
        topics = self.settings.topics
        turn = 0
        retry = CLAIM_RETRY[0]
        while not self._stop.is_set():
            free = self.settings.concurrency - len(self._running)
            if free <= 0:
                await asyncio.wait(self._running, timeout=0.2, return_when="FIRST_COMPLETED")
                continue
            topic = topics[turn % len(topics)]
            turn += 1
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
            for message in messages:
                if self._stop.is_set():
                    await self._give_back(message)
                    continue
                task = asyncio.create_task(self._handle(message), name=f"squeal-{message.id}")
                self._running[task] = message
                task.add_done_callback(self._running.pop)
        return None

    async def _drain(self) -> None:
        """Let running handlers finish within the grace period; cancel and release the rest."""
        if not self._running:
            return
        _, late = await asyncio.wait(self._running, timeout=self.settings.grace_period)
        if not late:
            return
        left = [self._running[task] for task in late]
        for task in late:
            task.cancel()
        await asyncio.wait(late)
        for message in left:
            if not message.settled:
                await self._give_back(message)
        log.warning(
            "squeal worker: released %d message(s) still running after %.0fs",
            len(left),
            self.settings.grace_period,
        )

    async def _give_back(self, message: AsyncMessage) -> None:
        try:
            await message.release()
            self.stats.released += 1
        except SquealError as error:
            log.warning("squeal worker: could not release message %d: %s", message.id, error)

    # -- one message ----------------------------------------------------------------------------

    async def _handle(self, message: AsyncMessage) -> None:
        beat = asyncio.create_task(self._heartbeats(message))
        started = time.monotonic()
        try:
            if self.ack_in_transaction:
                async with self.queue.engine.begin() as connection:
                    with observe.handling(message):
                        await self.handler(message, connection)
                    observe.handled(message.topic, time.monotonic() - started, failed=False)
                    await message.ack(connection=connection)
                self.stats.acked += 1
            else:
                with observe.handling(message):
                    await self.handler(message)
                observe.handled(message.topic, time.monotonic() - started, failed=False)
                await message.ack()
                self.stats.acked += 1
        except asyncio.CancelledError:
            raise  # stopped past the grace period: _drain releases it
        except SquealError as error:
            log.warning("squeal worker: message %d: %s", message.id, error)
        except Exception as error:
            observe.handled(message.topic, time.monotonic() - started, failed=True)
            await self._nack(message, error)
        finally:
            beat.cancel()

    async def _nack(self, message: AsyncMessage, error: Exception) -> None:
        try:
            await message.nack(error=error)
        except SquealError as settling:
            log_failure(message, error, "its nack failed", logging.WARNING)
            log.warning("squeal worker: message %d: %s", message.id, settling)
            return
        self.stats.failed += 1
        nacked(message, error, self.queue.sync.max_attempts)

    async def _heartbeats(self, message: AsyncMessage) -> None:
        """Extend the lease ``heartbeat`` seconds after it (or its last extension) was asked
        for; sooner again after an extension that failed."""
        due = time.monotonic() + self.settings.heartbeat
        while True:
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            asked = time.monotonic()
            try:
                await message.touch()
            except LeaseLost as error:
                log.warning("squeal worker: lease of message %d lost: %s", message.id, error)
                return
            except SquealError as error:
                log.warning(
                    "squeal worker: lease of message %d not extended: %s", message.id, error
                )
                due = asked + min(self.settings.heartbeat / 4, 1.0)
            else:
                due = asked + self.settings.heartbeat


def _is_async(handler: object) -> bool:
    """An async function, or an object whose ``__call__`` is one."""
    call = type(handler).__dict__.get("__call__") if not inspect.isfunction(handler) else None
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


__all__ = ["AsyncHandler", "AsyncWorker"]
