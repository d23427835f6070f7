"""``squeal bench`` on an asyncio URL: ``squeal.aio`` against the raw asyncio floor and pgqueuer.

The sides run the same rows in one event loop, interleaved round by round in a shuffled order:
``squeal`` is an :class:`~squeal.aio.AsyncQueue` on an AsyncEngine of the URL; ``floor`` is the
same work written by hand on the raw asyncio driver (``squeal.cli.floor_aio``: asyncpg for every
PostgreSQL URL, the URL's driver on MySQL/MariaDB, aiosqlite on SQLite); on PostgreSQL,
``pgqueuer`` (when installed) does the same work through its ``Queries`` (enqueue, dequeue,
log_jobs) on its own tables. See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from squeal.cli.floor import server_args
from squeal.cli.floor_aio import AsyncFloor, async_floor_for, woken

#: The rows, in the order they run and print.
ROWS = ("put", "put_many", "get_ack", "get_ack_many", "latency", "consumers")
BATCH = 100
CONSUMERS = 8
VT_MS = 300_000
PAYLOAD = bytes(range(64))


@dataclass(frozen=True)
class Sizes:
    """Messages per side and round."""

    rounds: int
    put: int
    batches: int
    get_ack: int
    latency: int
    consumers: int


FULL = Sizes(rounds=5, put=1000, batches=200, get_ack=1000, latency=30, consumers=3000)
QUICK = Sizes(rounds=1, put=20, batches=2, get_ack=20, latency=3, consumers=40)


class _Side:
    """One implementation on one connection (or the queue's pool)."""

    name = ""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, topic: str) -> None:
        raise NotImplementedError

    async def put_many(self, topic: str, n: int) -> None:
        raise NotImplementedError

    async def get_ack(self, topic: str, n: int = 1) -> int:
        """Claim up to ``n`` messages and ack them (one statement for many); how many."""
        raise NotImplementedError

    async def wait_get_ack(self, topic: str, timeout: float) -> bool:
        raise NotImplementedError

    async def other(self) -> _Side:
        """Another side of the same kind on a connection of its own (a second consumer)."""
        return self


class _Squeal(_Side):
    name = "squeal"

    def __init__(self, url: sa.URL, prefix: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        from squeal.aio import AsyncQueue

        self.engine = create_async_engine(url, pool_size=CONSUMERS + 2)
        self.queue = AsyncQueue(self.engine, prefix=prefix, visibility_timeout=VT_MS / 1000)

    async def close(self) -> None:
        await self.queue.close()
        await self.engine.dispose()

    async def put(self, topic: str) -> None:
        await self.queue.put(PAYLOAD, topic)

    async def put_many(self, topic: str, n: int) -> None:
        await self.queue.put_many([PAYLOAD] * n, topic)

    async def get_ack(self, topic: str, n: int = 1) -> int:
        if n == 1:
            msg = await self.queue.get(topic)
            if msg is None:
                return 0
            await msg.ack()
            return 1
        messages = await self.queue.get_many(topic, n)
        if messages:
            await self.queue.ack_many(messages)
        return len(messages)

    async def wait_get_ack(self, topic: str, timeout: float) -> bool:
        msg = await self.queue.get(topic, wait=timeout)
        if msg is None:
            return False
        await msg.ack()
        return True


class _Floor(_Side):
    name = "floor"

    def __init__(self, url: sa.URL, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.floor: AsyncFloor = async_floor_for(url, prefix)
        self._others: list[_Floor] = []

    async def open(self) -> None:
        await self.floor.open()

    async def close(self) -> None:
        for other in self._others:
            await other.close()
        await self.floor.close()

    async def other(self) -> _Side:
        side = _Floor(self.url, self.prefix)
        await side.open()
        self._others.append(side)
        return side

    async def put(self, topic: str) -> None:
        await self.floor.put(PAYLOAD, topic)

    async def put_many(self, topic: str, n: int) -> None:
        await self.floor.put_many([PAYLOAD] * n, topic)

    async def get_ack(self, topic: str, n: int = 1) -> int:
        token, rows = await self.floor.claim(topic, n, VT_MS)
        if n == 1 and rows:
            await self.floor.ack(rows[0][0], token)
        elif rows:
            await self.floor.ack_many([r[0] for r in rows], token)
        return len(rows)

    async def wait_get_ack(self, topic: str, timeout: float) -> bool:
        token, rows = await self.floor.wait_claim(topic, VT_MS, timeout)
        if rows:
            await self.floor.ack(rows[0][0], token)
        return bool(rows)


class _Pgqueuer(_Side):
    """pgqueuer's ``Queries`` on one asyncpg connection, its tables named ``PREFIX_*``."""

    name = "pgqueuer"

    def __init__(self, url: sa.URL, prefix: str, *, owner: bool = True) -> None:
        self.url, self.prefix, self.owner = url, prefix, owner
        self._others: list[_Pgqueuer] = []
        self._wake = asyncio.Event()
        self._listener: Any = None

    async def open(self) -> None:
        # Untyped here (no stubs needed): loaded by name, as the floors load their drivers.
        self.asyncpg = asyncpg = importlib.import_module("asyncpg")
        driver = importlib.import_module("pgqueuer.adapters.drivers.asyncpg")
        qb = importlib.import_module("pgqueuer.adapters.persistence.qb")
        queries = importlib.import_module("pgqueuer.adapters.persistence.queries")
        settings = importlib.import_module("pgqueuer.domain.settings")
        self.entrypoint = importlib.import_module("pgqueuer.ports.repository")

        server = {**server_args(self.url, 5432), "database": self.url.database}
        self.server = server
        self.settings = settings.DBSettings(prefix=f"{self.prefix}_")
        self.conn = await asyncpg.connect(**server)
        self.queries = queries.Queries(
            driver.AsyncpgDriver(self.conn),
            qbe=qb.QueryBuilderEnvironment(self.settings),
            qbq=qb.QueryQueueBuilder(self.settings),
            qbs=qb.QuerySchedulerBuilder(self.settings),
        )
        self.manager = uuid.uuid4()
        if self.owner:
            await self.queries.install(create_schema=False)

    async def close(self) -> None:
        for other in self._others:
            await other.close()
        if self._listener is not None:
            await self._listener.close()
        if self.owner:
            await self.queries.uninstall()
        await self.conn.close()

    async def other(self) -> _Side:
        side = _Pgqueuer(self.url, self.prefix, owner=False)
        await side.open()
        self._others.append(side)
        return side

    async def put(self, topic: str) -> None:
        await self.queries.enqueue(topic, PAYLOAD, 0)

    async def put_many(self, topic: str, n: int) -> None:
        await self.queries.enqueue([topic] * n, [PAYLOAD] * n, [0] * n)

    async def get_ack(self, topic: str, n: int = 1) -> int:
        jobs = await self.queries.dequeue(
            n,
            {topic: self.entrypoint.EntrypointExecutionParameter(concurrency_limit=0)},
            self.manager,
            None,
            timedelta(milliseconds=VT_MS),
        )
        if jobs:
            await self.queries.log_jobs([(job, "successful", None) for job in jobs])
        return len(jobs)

    async def wait_get_ack(self, topic: str, timeout: float) -> bool:
        if self._listener is None:
            self._listener = await self.asyncpg.connect(**self.server)
            await self._listener.add_listener(self.settings.channel, lambda *_: self._wake.set())
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            if await self.get_ack(topic):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await woken(self._wake, min(remaining, 0.5))


def pgqueuer_missing() -> str | None:
    """Why pgqueuer is not compared (None: it is)."""
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return "pgqueuer is not installed (pip install pgqueuer)"
    return None


async def _rate(count: int, work: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await work()
    return count / (time.perf_counter() - began)


class _Bench:
    def __init__(self, url: sa.URL, sizes: Sizes, rounds: int, prefix: str) -> None:
        self.url, self.sizes, self.rounds, self.prefix = url, sizes, rounds, prefix
        self.samples: dict[str, dict[str, list[float]]] = {}

    def note(self, row: str, side: str, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(side, []).append(value)

    async def run(self) -> dict[str, Any]:
        sides: list[_Side] = [_Squeal(self.url, self.prefix), _Floor(self.url, self.prefix)]
        if self.url.get_backend_name() == "postgresql":
            missing = pgqueuer_missing()
            if missing is None:
                sides.append(_Pgqueuer(self.url, self.prefix))
            else:
                print(f"  not compared with pgqueuer: {missing}", flush=True)
        opened: list[_Side] = []
        await _tables(self.url, self.prefix, create=True)
        try:
            for side in sides:
                await side.open()
                opened.append(side)
            helpers: dict[str, list[_Side]] = {}
            for side in sides:  # (no await in a nested comprehension: Python 3.10)
                helpers[side.name] = [await side.other() for _ in range(CONSUMERS)]
            for index in range(self.rounds):
                order = random.sample(sides, len(sides))
                print(f"  round {index + 1}: " + ", ".join(s.name for s in order), flush=True)
                for side in order:
                    await self._round(side, helpers[side.name])
        finally:
            for side in reversed(opened):
                await side.close()
            await _tables(self.url, self.prefix, create=False)
        engine = sides[0].engine  # type: ignore[attr-defined]
        version = ".".join(str(v) for v in engine.dialect.server_version_info or ())
        return {
            "database": f"{self.url.get_backend_name()}+{self.url.get_driver_name()} (asyncio)",
            "prefix": self.prefix,
            "rounds": self.rounds,
            "settings": {
                "version": f"{self.url.get_backend_name()} {version}",
                "rounds": str(self.rounds),
                "floor": sides[1].floor.raw.driver,  # type: ignore[attr-defined]
                "pgqueuer": "yes" if len(sides) == 3 else "no",
            },
            "rows": self._results(),
        }

    async def _round(self, side: _Side, helpers: list[_Side]) -> None:
        s, name = self.sizes, side.name
        topic = f"{name}_{random.getrandbits(32):08x}"

        async def puts() -> None:
            for _ in range(s.put):
                await side.put(topic)

        async def batches() -> None:
            for _ in range(s.batches):
                await side.put_many(topic, BATCH)

        async def drain(n: int, batch: int) -> None:
            got = 0
            while got < n:
                took = await side.get_ack(topic, batch)
                if not took:
                    raise RuntimeError(f"{name}: the queue ran dry after {got} of {n}")
                got += took

        self.note("put", name, await _rate(s.put, puts))
        await drain(s.put, BATCH)
        self.note("put_many", name, await _rate(s.batches * BATCH, batches))
        await drain(s.batches * BATCH, BATCH)
        await side.put_many(topic, s.get_ack)  # (sizes are at most a few thousand)
        self.note("get_ack", name, await _rate(s.get_ack, lambda: drain(s.get_ack, 1)))
        for _ in range(s.batches):
            await side.put_many(topic, BATCH)
        self.note(
            "get_ack_many",
            name,
            await _rate(s.batches * BATCH, lambda: drain(s.batches * BATCH, BATCH)),
        )
        consumer = helpers[0]
        for _ in range(s.latency):
            waiting = asyncio.ensure_future(consumer.wait_get_ack(topic, 10.0))
            await asyncio.sleep(0.02)  # the consumer is waiting
            began = time.perf_counter()
            await side.put(topic)
            if not await waiting:
                raise RuntimeError(f"{name}: the waiting consumer received nothing")
            self.note("latency", name, (time.perf_counter() - began) * 1000)
        for _ in range(0, s.consumers, BATCH):
            await side.put_many(topic, BATCH)
        total = (s.consumers + BATCH - 1) // BATCH * BATCH

        async def consume(helper: _Side) -> int:
            got = 0
            while took := await helper.get_ack(topic, 1):
                got += took
            return got

        async def everyone() -> None:
            got = sum(await asyncio.gather(*(consume(h) for h in helpers)))
            if got != total:
                raise RuntimeError(f"{name}: {got} of {total} consumed")

        self.note("consumers", name, await _rate(total, everyone))

    def _results(self) -> dict[str, dict[str, Any]]:
        labels = {
            "put": ("put, one at a time", "msg/s"),
            "put_many": (f"put_many {BATCH}", "msg/s"),
            "get_ack": ("get + ack, one at a time", "msg/s"),
            "get_ack_many": (f"get_many {BATCH} + ack_many", "msg/s"),
            "latency": ("put -> receive, consumer waiting (ms)", "ms"),
            "consumers": (f"get + ack, {CONSUMERS} consumer tasks", "msg/s"),
        }
        results: dict[str, dict[str, Any]] = {}
        for row in ROWS:
            data = self.samples.get(row, {})
            label, unit = labels[row]
            entry: dict[str, Any] = {"label": label, "unit": unit}
            for side, values in data.items():
                entry[side] = statistics.median(values)
                entry[f"{side}_rounds"] = [round(v, 1) for v in values]
            if row == "latency":
                entry["ratio"] = entry["floor"] / entry["squeal"]
                if "pgqueuer" in entry:
                    entry["vs_pgqueuer"] = entry["pgqueuer"] / entry["squeal"]
            else:
                entry["ratio"] = entry["squeal"] / entry["floor"]
                if "pgqueuer" in entry:
                    entry["vs_pgqueuer"] = entry["squeal"] / entry["pgqueuer"]
            results[row] = entry
        return results


async def _tables(url: sa.URL, prefix: str, *, create: bool) -> None:
    """Create squeal's tables for ``prefix`` (at its head revision), or drop every one of them."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from squeal import aio

    engine = create_async_engine(url)
    try:
        if create:
            await aio.upgrade(engine, prefix=prefix)
        else:
            await aio.downgrade(engine, prefix=prefix, revision="base", drop_version_table=True)
    finally:
        await engine.dispose()


def measure(url: sa.URL, quick: bool, rounds: int | None, prefix: str) -> dict[str, Any]:
    """Measure ``url`` (an asyncio URL) on a loop of its own; one database's results."""
    sizes = QUICK if quick else FULL
    return asyncio.run(_Bench(url, sizes, rounds or sizes.rounds, prefix).run())


__all__ = ["ROWS", "measure", "pgqueuer_missing"]
