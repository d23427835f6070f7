"""What only squeal.aio has, on every asyncio driver: nothing blocks the loop, cancellation,
``async with``, concurrent tasks, native wake-ups, and the errors that point between the APIs.

The conformance suite states the queue's behaviours once and runs them on AsyncQueue too
(tests/aio_facade.py); these tests are written with coroutines and run on loops of their own,
in asyncio debug mode.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import squeal
import squeal.aio
from squeal import InvalidType, Queue, migrate
from squeal.aio import AsyncBuffer, AsyncMessage, AsyncQueue

#: The slow-callback threshold of the loop's debug mode, after warm-up.
SLOW_CALLBACK_SECONDS = 0.1


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a test's coroutine on a loop of its own, in debug mode."""
    asyncio.run(coroutine, debug=True)


@asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[AsyncQueue]:
    """An AsyncQueue on fresh tables of its own prefix; dropped and disposed afterwards."""
    engine = create_async_engine(url)
    q = AsyncQueue(engine, prefix=f"a{secrets.token_hex(5)}", **options)
    await q.create()
    try:
        yield q
    finally:
        await q.destroy()
        await q.close()
        await engine.dispose()


class _LoopGuard:
    """Fails a call of ``time.sleep`` or ``select.select`` on a thread that runs an event loop:
    either would block every task on it (an asyncio driver's own calls go through the loop)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.blocked: list[str] = []
        for module, name in ((time, "sleep"), (select, "select")):
            monkeypatch.setattr(module, name, self._guarded(getattr(module, name), name))

    def _guarded(self, real: Callable[..., Any], name: str) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return real(*args, **kwargs)
            self.blocked.append(f"{name} on {threading.current_thread().name}")
            raise AssertionError(f"{name}() on the event loop's thread")

        return guarded


@pytest.fixture
def loop_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[_LoopGuard]:
    guard = _LoopGuard(monkeypatch)
    yield guard
    assert guard.blocked == []


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode reports of a step that held the loop too long."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Executing"):
            self.reports.append(record.getMessage())


async def _workload(q: AsyncQueue) -> None:
    """Every kind of operation, including a wait that ends by a put and one that times out."""
    await q.put_many([b"a", b"b", b"c"], "w", dedup_keys=["ka", None, None])
    assert await q.put(b"again", "w", dedup_key="ka") is None
    batch = await q.get_many("w", 10)
    await q.touch_many(batch)
    await q.ack_many(batch[:2])
    await batch[2].nack(delay=0)
    again = await q.get("w")
    assert again is not None
    await again.release()
    waiter = asyncio.create_task(q.get("later", wait=10.0))
    await asyncio.sleep(0.2)
    await q.put(b"late", "later")
    late = await waiter
    assert late is not None
    await late.ack()
    assert await q.get("nothing", wait=0.3) is None
    await q.put(b"locked", "lock")
    lock = await q.acquire_topic()
    assert lock is not None
    await lock.release()
    await q.stats()
    await q.peek("w")
    await q.purge("w")


def test_nothing_blocks_the_loop(async_url: str, loop_guard: _LoopGuard) -> None:
    """No time.sleep or select() on the loop's thread, and after warm-up no step of squeal
    holds the loop for longer than the debug mode's threshold. The threshold is wall-clock
    time, which a busy machine's scheduler alone can exceed once: the workload runs up to
    three times and fails only if every run held the loop (a blocking call does, each time)."""
    runs: list[list[str]] = []

    async def body() -> None:
        asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK_SECONDS
        async with opened(async_url) as q:
            await _workload(q)  # warm-up: imports, first compilations, first connections
            for _ in range(3):
                slow = _SlowCallbacks()
                logging.getLogger("asyncio").addHandler(slow)
                try:
                    await _workload(q)
                finally:
                    logging.getLogger("asyncio").removeHandler(slow)
                runs.append(slow.reports)
                if not slow.reports:
                    return

    run(body())
    assert [] in runs, runs


def test_a_get_cancelled_while_waiting_loses_nothing(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url, visibility_timeout=1.0) as q:
            waiting = asyncio.create_task(q.get("t", wait=30.0))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await q.put(b"after", "t")
            got = await q.get("t", wait=5.0)
            assert got is not None
            assert got.payload == b"after"
            await got.ack()

    run(body())


def test_a_claim_cancelled_mid_statement_loses_no_message(async_url: str) -> None:
    """Cancelled at each step of its first round trips: the message is then either still
    ready or leased to the cancelled claim, which comes back when the lease ends."""

    async def body() -> None:
        async with opened(async_url, visibility_timeout=0.5) as q:
            for steps in range(6):
                msg_id = await q.put(f"m{steps}".encode(), "t")
                claim = asyncio.create_task(q.get("t"))
                for _ in range(steps):
                    await asyncio.sleep(0)
                claim.cancel()
                try:
                    got = await claim
                except asyncio.CancelledError:
                    got = None
                if got is None:
                    got = await q.get("t", wait=5.0)
                assert got is not None, f"message {msg_id} lost after a cancel at step {steps}"
                assert got.id == msg_id
                await got.ack()
            assert await q.size("t") == 0

    run(body())


def test_async_with_acks_nothing_and_nacks_what_was_left_unsettled(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url, failure_base_delay=0.0) as q:
            await q.put(b"x", "t")
            m = await q.get("t")
            assert m is not None
            with pytest.raises(RuntimeError, match="handler failed"):
                async with m:
                    raise RuntimeError("handler failed")
            assert m.settled
            again = await q.get("t", wait=5.0)
            assert again is not None
            assert again.attempts == 2
            async with again:
                await again.ack()
            assert await q.size("t") == 0

    run(body())


def test_concurrent_tasks_never_get_the_same_message(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url) as q:
            await q.put_many([str(i).encode() for i in range(80)], "t")

            async def consume() -> list[int]:
                taken = []
                while batch := await q.get_many("t", 3):
                    taken += [m.id for m in batch]
                    await q.ack_many(batch)
                return taken

            results = await asyncio.gather(*(consume() for _ in range(8)))
            every = [i for taken in results for i in taken]
            assert len(every) == 80
            assert len(set(every)) == 80

    run(body())


def test_an_outbox_put_commits_and_rolls_back_with_the_async_transaction(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url) as q:
            async with q.engine.connect() as conn:
                await q.put(b"rolled back", "t", connection=conn)
                await conn.rollback()
            async with q.engine.begin() as conn:
                await q.put(b"kept", "t", connection=conn)
            async with AsyncSession(q.engine) as session, session.begin():
                await q.put(b"kept too", "t", connection=await session.connection())
            got = await q.get_many("t", 10)
            assert [m.payload for m in got] == [b"kept", b"kept too"]
            async with q.engine.begin() as conn:
                await q.ack_many(got, connection=conn)
            assert await q.size("t") == 0

    run(body())


def test_the_apis_point_at_each_other(async_url: str, db_url: str) -> None:
    async def body() -> None:
        engine = create_async_engine(async_url)
        try:
            with pytest.raises(InvalidType, match=r"squeal\.aio\.AsyncQueue"):
                Queue(engine)  # type: ignore[arg-type]
            with pytest.raises(InvalidType, match=r"squeal\.aio\.upgrade"):
                migrate.upgrade(engine)  # type: ignore[arg-type]
            with pytest.raises(InvalidType, match=r"squeal\.aio\.AsyncQueue"):
                Queue(engine.sync_engine).put(b"x")
            with pytest.raises(InvalidType, match=r"squeal\.aio\.current"):
                migrate.current(engine.sync_engine)
            sync_engine = sa.create_engine(db_url)
            with pytest.raises(InvalidType, match=r"squeal\.Queue"):
                AsyncQueue(sync_engine)  # type: ignore[arg-type]
            sync_engine.dispose()
            q = AsyncQueue(engine, prefix=f"a{secrets.token_hex(5)}")
            with pytest.raises(InvalidType, match=r"await session\.connection\(\)"):
                await q.put(b"x", connection=AsyncSession(engine))  # type: ignore[arg-type]
            with pytest.raises(InvalidType, match=r"squeal\.aio\.AsyncBuffer"):
                squeal.Buffer(q)  # type: ignore[arg-type]
            with pytest.raises(InvalidType, match=r"squeal\.Buffer"):
                AsyncBuffer(Queue(sa.create_engine(db_url)))  # type: ignore[arg-type]
            with pytest.raises(squeal.SchemaMissing):
                await q.put(b"x")
        finally:
            await engine.dispose()


def test_a_buffer_serves_one_task_while_others_settle(async_url: str) -> None:
    """An AsyncBuffer's waiting get hands out the next message of a topic at its quota as soon
    as another task acks the one outstanding; ``async for`` drains; ``async with`` gives the
    topic locks back."""

    async def body() -> None:
        async with opened(async_url) as q:
            await q.put_many([b"1", b"2", b"3"], "a")
            async with AsyncBuffer(q, default_topic_quota=1) as buffer:
                first = await buffer.get()
                assert first is not None
                assert await buffer.get() is None  # the topic is at its quota

                async def settle_later() -> None:
                    await asyncio.sleep(0.2)
                    await first.ack()

                settler = asyncio.create_task(settle_later())
                second = await buffer.get(wait=10)
                await settler
                assert second is not None
                assert second.payload == b"2"
                buffer.half_ack(second)  # its slot is free; it stays leased
                rest = [m async for m in buffer]
                assert [m.payload for m in rest] == [b"3"]
                await q.ack_many([second, *rest])
                assert buffer.held_topics() == ["a"]
            assert buffer.held_topics() == []
            assert await q.acquire_topic() is None  # released, and nothing left to lock
            assert await q.stats() == {}

    run(body())

    run(body())


def test_migrations_from_asyncio(async_url: str) -> None:
    async def body() -> None:
        engine: AsyncEngine = create_async_engine(async_url)
        prefix = f"a{secrets.token_hex(5)}"
        try:
            assert await squeal.aio.current(engine, prefix=prefix) is None
            assert await squeal.aio.upgrade(engine, prefix=prefix) is None
            assert await squeal.aio.current(engine, prefix=prefix) == migrate.head()
            assert await squeal.aio.schema_diff(engine, prefix=prefix) == []
            q = AsyncQueue(engine, prefix=prefix)
            assert await q.put(b"x") is not None
            await q.close()
            await squeal.aio.downgrade(engine, prefix=prefix, drop_version_table=True)
            assert (await squeal.aio.status(engine, prefix=prefix)).table is None
        finally:
            await engine.dispose()

    run(body())


def test_a_blocking_get_is_woken_by_a_put_from_another_queue_object(async_url: str) -> None:
    """On asyncpg and psycopg a wake-up notification ends the wait; elsewhere polling does,
    within a tenth of a second."""

    async def body() -> None:
        async with opened(async_url) as q:
            producer = AsyncQueue(q.engine, prefix=q.prefix)
            waiting = asyncio.create_task(q.get("t", wait=30.0))
            await asyncio.sleep(0.3)
            await producer.put(b"wake", "t")
            got: AsyncMessage | None = await asyncio.wait_for(waiting, 10.0)
            assert got is not None
            await got.ack()
            await producer.close()

    run(body())
