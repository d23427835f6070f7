"""AsyncWorker on every asyncio driver: handlers as tasks, acks and nacks, heartbeats, a stop
or a cancellation that drains, and a handler's writes in the ack's transaction."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from squeal import InvalidType, ValidationError
from squeal.aio import AsyncMessage, AsyncQueue, AsyncWorker
from tests.aio.test_native import opened, run


async def _until(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_handlers_run_concurrently_ack_on_return_and_nack_on_raise(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url, failure_base_delay=0.0, max_attempts=2) as q:
            await q.put_many([str(i).encode() for i in range(20)], "t")
            await q.put(b"bad", "t")
            seen: list[bytes] = []
            running = 0
            most = 0

            async def handle(message: AsyncMessage) -> None:
                nonlocal running, most
                running += 1
                most = max(most, running)
                await asyncio.sleep(0.05)
                running -= 1
                if message.payload == b"bad":
                    raise ValueError("bad payload")
                seen.append(message.payload)

            worker = AsyncWorker(q, handle, "t", concurrency=4, wait=0.1)
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await _until(lambda: len(seen) == 20 and worker.stats.failed == 2)
            await _until(lambda: not worker._in_flight)
            worker.stop()
            stats = await run_task
            assert sorted(seen) == sorted(str(i).encode() for i in range(20))
            assert (stats.acked, stats.failed, stats.released) == (20, 2, 0)
            assert 1 < most <= 4
            assert [d.payload for d in await q.dead("t")] == [b"bad"]

    run(body())


def test_heartbeats_keep_a_slow_handlers_lease(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url, visibility_timeout=2.0) as q:  # renewed every 0.67 s
            rival = AsyncQueue(q.engine, prefix=q.prefix)
            await q.put(b"slow", "t")
            done = asyncio.Event()
            stolen: list[AsyncMessage] = []

            async def handle(message: AsyncMessage) -> None:
                for _ in range(18):  # 4.5 s: the lease ran out twice over without heartbeats
                    await asyncio.sleep(0.25)
                    if (other := await rival.get("t")) is not None:
                        stolen.append(other)
                done.set()

            worker = AsyncWorker(q, handle, "t")
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await asyncio.wait_for(done.wait(), 30.0)
            worker.stop()
            stats = await run_task
            assert stolen == []
            assert stats.acked == 1
            assert await q.size("t") == 0
            await rival.close()

    run(body())


def test_a_cancelled_run_drains_then_releases_what_outlives_the_grace_period(
    async_url: str,
) -> None:
    async def body() -> None:
        async with opened(async_url) as q:
            await q.put(b"quick", "quick")
            await q.put(b"stuck", "stuck")
            started = {"quick": asyncio.Event(), "stuck": asyncio.Event()}
            finished: list[bytes] = []

            async def handle(message: AsyncMessage) -> None:
                started[message.topic].set()
                await asyncio.sleep(0.3 if message.topic == "quick" else 3600)
                finished.append(message.payload)

            worker = AsyncWorker(
                q, handle, ["quick", "stuck"], concurrency=2, wait=0.05, grace_period=5.0
            )
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await asyncio.wait_for(started["quick"].wait(), 30.0)
            await asyncio.wait_for(started["stuck"].wait(), 30.0)
            run_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run_task
            assert finished == [b"quick"]  # finished within the grace period: acked
            assert worker.stats.acked == 1
            assert worker.stats.released == 1
            again = await q.get("stuck")  # released: redelivered at once
            assert again is not None
            assert again.payload == b"stuck"
            await again.ack()
            assert await q.size("quick") == 0

    run(body())


def test_prefetch_is_bounded_acks_share_commits_and_a_stop_settles_both(async_url: str) -> None:
    """As the sync worker's: one handler and ``prefetch=2`` lease three messages, the rest are
    left to others, and a stop releases the two waiting at once; handled messages stay leased
    until their acks commit (``settle_every=60``: at the stop)."""

    async def body() -> None:
        async with opened(async_url) as q:
            rival = AsyncQueue(q.engine, prefix=q.prefix)
            await q.put_many([str(i).encode() for i in range(8)], "t")
            first = asyncio.Event()
            hold = asyncio.Event()

            async def held(message: AsyncMessage) -> None:
                first.set()
                await hold.wait()

            worker = AsyncWorker(q, held, "t", prefetch=2, wait=0.05)
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await asyncio.wait_for(first.wait(), 30.0)
            others = await rival.get_many("t", 10)
            assert len(others) == 5
            await rival.ack_many(others)
            worker.stop()
            back: list[AsyncMessage] = []  # released by the stop while one still runs
            while len(back) < 2:
                more = await rival.get_many("t", 10, wait=10)
                assert more, back
                back += more
            assert [m.attempts for m in back] == [1, 1]
            await rival.ack_many(back)
            hold.set()
            stats = await run_task
            assert (stats.acked, stats.released) == (1, 2)

            await q.put_many([b"a", b"b", b"c"], "t")
            handled: list[bytes] = []

            async def handle(message: AsyncMessage) -> None:
                handled.append(message.payload)

            worker = AsyncWorker(q, handle, "t", settle_every=60, wait=0.05)
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await _until(lambda: len(handled) == 3)
            await asyncio.sleep(0.2)
            assert worker.stats.acked == 0
            assert (await q.stats())["t"].leased == 3
            worker.stop()
            assert (await run_task).acked == 3
            assert await q.size("t") == 0
            await rival.close()

    run(body())


def test_ack_in_transaction_commits_the_handlers_write_with_the_ack(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url, failure_base_delay=0.0) as q:
            # Text, not bytes: aiomysql cannot bind bytes on the application's own statements
            # with PyMySQL 1.2.3+ (docs/drivers.md).
            effects = sa.Table(
                f"{q.prefix}_effect", sa.MetaData(), sa.Column("payload", sa.String(20))
            )
            async with q.engine.begin() as conn:
                await conn.run_sync(effects.metadata.create_all)
            await q.put(b"once", "t")
            await q.put(b"fails", "t")
            tries: list[bytes] = []

            async def handle(message: AsyncMessage, connection: AsyncConnection) -> None:
                text = message.payload.decode()
                await connection.execute(effects.insert().values(payload=text))
                tries.append(message.payload)
                if message.payload == b"fails" and tries.count(b"fails") == 1:
                    raise RuntimeError("first try fails after its write")

            worker = AsyncWorker(q, handle, "t", ack_in_transaction=True, wait=0.05)
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await _until(lambda: worker.stats.acked == 2)
            worker.stop()
            await run_task
            async with q.engine.connect() as conn:
                rows = (await conn.execute(sa.select(effects.c.payload))).scalars().all()
                await conn.run_sync(effects.metadata.drop_all)
                await conn.commit()
            assert sorted(rows) == ["fails", "once"]  # the failed try's write rolled back
            assert worker.stats.failed == 1

    run(body())


def test_handlers_and_options_are_checked(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url) as q:

            def plain(message: AsyncMessage) -> None:
                pass

            async def one(message: AsyncMessage) -> None:
                pass

            with pytest.raises(InvalidType, match="async function"):
                AsyncWorker(q, plain)  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="ack_in_transaction"):
                AsyncWorker(q, one, ack_in_transaction=True)
            with pytest.raises(ValidationError, match="concurrency"):
                AsyncWorker(q, one, concurrency=0)
            with pytest.raises(InvalidType, match="AsyncQueue"):
                AsyncWorker(q.sync, one)  # type: ignore[arg-type]

    run(body())


def test_an_async_worker_puts_due_schedules_unless_told_not_to(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url) as q:
            await q.schedule("often", topic="ticks", payload=b"tick", every=0.1)
            quiet = AsyncWorker(q, _ignore, "other", wait=0.1, run_schedules=False)
            quiet_run = asyncio.create_task(quiet.run(install_signal_handlers=False))
            await asyncio.sleep(1.2)
            assert (await q.schedules())[0].last_run_at is None
            quiet.stop()
            await quiet_run

            ticks: list[bytes] = []

            async def handle(message: AsyncMessage) -> None:
                ticks.append(message.payload)

            worker = AsyncWorker(q, handle, "ticks", wait=0.1)
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))
            await _until(lambda: len(ticks) >= 2)
            worker.stop()
            await run_task
            assert ticks[:2] == [b"tick", b"tick"]

    run(body())


async def _ignore(message: AsyncMessage) -> None:
    pass


def test_an_async_worker_is_listed_as_it_runs_and_leaves_when_stopped(async_url: str) -> None:
    async def body() -> None:
        async with opened(async_url) as q:
            release = asyncio.Event()

            async def handle(message: AsyncMessage) -> None:
                if message.payload == b"slow":
                    await release.wait()

            await q.put_many([b"a", b"b", b"slow"], "t")
            worker = AsyncWorker(q, handle, "t", concurrency=2, wait=0.1, registry_beat=0.5)
            run_task = asyncio.create_task(worker.run(install_signal_handlers=False))

            async def listed() -> list[Any]:
                return [(w.kind, w.topics, w.in_flight, w.acked) for w in await q.workers()]

            deadline = time.monotonic() + 30
            while await listed() != [("asyncio", ("t",), 1, 2)]:
                assert time.monotonic() < deadline, await listed()
                await asyncio.sleep(0.05)
            (info,) = await q.workers()
            assert (info.pid, info.concurrency) == (os.getpid(), 2)
            release.set()
            worker.stop()
            await run_task
            assert await q.workers() == []

    run(body())
